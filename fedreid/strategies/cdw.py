"""Cosine-distance weighting (CDW): the server's weights from the clients' cosine distances.

The client computes its distance with :func:`fedreid.clients.cdw.logit_distance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CDW_METRIC = "cdw_distance"
"""The reply metric carrying a client's cosine distance (its aggregation weight)."""
MAX_DISTANCE = 2.0
"""A cosine distance ``1 - cos`` lies in [0, 2]."""


def valid_distance(d: object) -> bool:
    """A finite number in [0, 2] (anything else excludes the reply)."""
    if isinstance(d, bool) or not isinstance(d, (int, float)):
        return False
    return math.isfinite(d) and 0.0 <= d <= MAX_DISTANCE


def cdw_weights(distances: Sequence[float], eps: float = 1e-12) -> list[float] | None:
    """``d_k / sum(d)``; None when every distance is ~0 (the caller falls back to counts)."""
    for d in distances:
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"invalid distance {d}")
    total = float(sum(distances))
    if total <= eps * max(1, len(distances)):
        return None
    return [d / total for d in distances]
