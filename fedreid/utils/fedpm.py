"""FedPM's downlink: global keep-probabilities, quantised to uint8 or sent as float32.

Both ends use these functions, so the server and every client derive bit-identical
probabilities and reference bits from the same array.

* uint8 (``strategy.fedpm_downlink_bits=8``, the default): ``q = round(255 p)``, ``p = q / 255``:
  8 bits per surviving weight, resolution 1/255;
* float32 (``fedpm_downlink_bits=32``): ``p`` itself, 32 bits per surviving weight.

The *reference bits* a client codes its upload against (:mod:`fedreid.utils.signcode`) are the
most likely mask of the received probabilities, ``p >= 0.5``.

Examples:
    >>> import numpy as np
    >>> q = encode_probs(np.array([0.0, 0.499, 0.5, 1.0]), 8)
    >>> q.tolist(), reference_bits(q).tolist()
    ([0, 127, 128, 255], [False, False, True, True])
"""

from __future__ import annotations

import numpy as np

from fedreid.errors import ConfigError, UpdateError

DOWNLINK_BITS = (8, 32)


def check_bits(bits: int) -> int:
    """``strategy.fedpm_downlink_bits`` must be 8 or 32."""
    if bits not in DOWNLINK_BITS:
        raise ConfigError(f"strategy.fedpm_downlink_bits={bits} must be one of {DOWNLINK_BITS}")
    return bits


def encode_probs(p: np.ndarray, bits: int) -> np.ndarray:
    """Keep-probabilities in [0, 1] as the downlink array (uint8 or float32)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if check_bits(bits) == 8:
        return np.rint(p * 255.0).astype(np.uint8)
    return p.astype(np.float32)


def decode_probs(arr: np.ndarray) -> np.ndarray:
    """The float64 probabilities a downlink array stands for.

    Raises:
        UpdateError: not 1-D uint8 / float32, or a float outside [0, 1].
    """
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise UpdateError(f"keep-probabilities must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.float32:
        p = arr.astype(np.float64)
        if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
            raise UpdateError("float32 keep-probabilities must lie in [0, 1]")
        return p
    raise UpdateError(f"keep-probabilities must be uint8 or float32, got {arr.dtype}")


def reference_bits(arr: np.ndarray) -> np.ndarray:
    """The most likely mask of a downlink array, ``p >= 0.5``."""
    return decode_probs(arr) >= 0.5


def estimate(bits: list[np.ndarray], weights: list[float], prior: float) -> np.ndarray:
    """The server's keep-probability: the sample-weighted mean of the received Bernoulli bits,
    Beta(prior, prior)-smoothed in units of clients.

    ``p = (K * sum_k w_k b_k / sum_k w_k + prior) / (K + 2 prior)`` with ``K`` replies; with
    ``prior = 0`` it is the plain weighted mean.

    Examples:
        >>> estimate([np.array([True, False]), np.array([True, True])], [3, 1], 0.0).tolist()
        [1.0, 0.25]
        >>> estimate([np.array([True]), np.array([True])], [1, 1], 1.0).tolist()
        [0.75]
    """
    if not bits or len(bits) != len(weights):
        raise ValueError(f"{len(bits)} bit vectors but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero: {list(weights)}")
    if prior < 0:
        raise ConfigError(f"strategy.fedpm_prior must be >= 0, got {prior}")
    mean = np.zeros(bits[0].shape, dtype=np.float64)
    for b, wk in zip(bits, w, strict=True):
        mean += wk * b
    mean /= w.sum()
    k = float(len(bits))
    return (k * mean + prior) / (k + 2.0 * prior)


def entropy(p: np.ndarray) -> float:
    """Mean binary entropy (bits) of ``p``: what an ideal coder pays per sampled mask bit."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))) if p.size else 0.0
