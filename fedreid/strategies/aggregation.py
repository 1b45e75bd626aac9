"""Weighted averaging of state_dicts: the arithmetic of FedPav, with float64 accumulation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to one; rejects empty, negative, non-finite or all-zero weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        raise ValueError("no weights to normalise")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to zero")
    return list(w / total)


def weighted_average(
    states: Sequence[dict[str, np.ndarray]],
    weights: Sequence[float],
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """``sum_k w_k * state_k[key]`` per key with normalised weights.

    Accumulates in float64 and casts back to each array's dtype; integer arrays (for example
    BatchNorm's ``num_batches_tracked``) are rounded.

    Examples:
        >>> a = {"w": np.array([0.0, 2.0], dtype=np.float32)}
        >>> b = {"w": np.array([4.0, 2.0], dtype=np.float32)}
        >>> weighted_average([a, b], [1, 3])["w"].tolist()
        [3.0, 2.0]
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    norm = normalise_weights(weights)
    keys = list(keys) if keys is not None else list(states[0])
    out: dict[str, np.ndarray] = {}
    for key in keys:
        ref = states[0][key]
        acc = np.zeros(ref.shape, dtype=np.float64)
        for state, w in zip(states, norm, strict=True):
            acc += np.multiply(state[key], w, dtype=np.float64)  # one temporary, not two
        if np.issubdtype(ref.dtype, np.integer):
            acc = np.rint(acc)
        out[key] = acc.astype(ref.dtype)
    return out
