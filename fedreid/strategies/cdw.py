"""Cosine-distance weighting (CDW) math: the client's logit distance and the server's weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def logit_distance(old: torch.Tensor, new: torch.Tensor) -> float:
    """``mean(1 - cos(old_i, new_i))`` over the rows (images) of two logit matrices.

    ``old`` = logits of the received global model with the head from before training;
    ``new`` = logits of the trained model with the trained head, on the same images.
    """
    if old.shape != new.shape or old.ndim != 2 or old.shape[0] == 0:
        raise ValueError(
            f"logit matrices must be equal non-empty [N, C], got "
            f"{tuple(old.shape)} and {tuple(new.shape)}"
        )
    return float((1.0 - F.cosine_similarity(old.double(), new.double(), dim=1)).mean())


def cdw_weights(distances: Sequence[float], eps: float = 1e-12) -> list[float] | None:
    """``d_k / sum(d)``; None when every distance is ~0 (the caller falls back to counts)."""
    for d in distances:
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"invalid distance {d}")
    total = float(sum(distances))
    if total <= eps * max(1, len(distances)):
        return None
    return [d / total for d in distances]
