"""1-bit packing of boolean masks and sign vectors, with strict validation of what arrives.

HideNseek sends 1 bit per surviving weight: the client's sign bits up, the global signs down,
and the server's pruning mask once. Bit order is numpy's ``"little"``: element ``i`` goes to
byte ``i // 8``, bit ``i % 8`` counted from the least significant bit. The last byte's unused
high bits (padding) must be zero; :func:`unpack_bits` rejects anything else, so a truncated,
padded or corrupted upload fails loudly instead of silently shifting every sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from fedreid.errors import UpdateError

BIT_ORDER = "little"
Layout = list[tuple[str, tuple[int, ...]]]
"""``[(name, shape), ...]``: the order and shapes :func:`pack_tensors` flattened."""


def _as_bool_array(bits: torch.Tensor | np.ndarray) -> np.ndarray:
    """A flat numpy bool view/copy of ``bits``; anything but a bool dtype is refused."""
    if isinstance(bits, torch.Tensor):
        if bits.dtype != torch.bool:
            raise TypeError(f"pack_bits needs a bool tensor, got {bits.dtype}")
        return bits.detach().cpu().reshape(-1).numpy()
    arr = np.asarray(bits)
    if arr.dtype != np.bool_:
        raise TypeError(f"pack_bits needs a bool array, got {arr.dtype}")
    return arr.reshape(-1)


def packed_size(n: int) -> int:
    """Bytes needed for ``n`` bits: ``ceil(n / 8)``."""
    return (n + 7) // 8


def pack_bits(bits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack a bool tensor/array (any shape, flattened row-major) into ``ceil(n/8)`` uint8 bytes.

    Examples:
        >>> pack_bits(np.array([True, False, False, False, False, False, False, False, True]))
        array([1, 1], dtype=uint8)
    """
    return np.packbits(_as_bool_array(bits), bitorder=BIT_ORDER)


def unpack_bits(packed: np.ndarray | bytes, n: int) -> np.ndarray:
    """Unpack ``n`` bits packed by :func:`pack_bits`; the inverse, as a flat bool array.

    Raises:
        UpdateError: ``packed`` is not 1-D uint8 of exactly ``ceil(n/8)`` bytes, or its padding
            bits are not zero.

    Examples:
        >>> unpack_bits(np.array([1, 1], dtype=np.uint8), 9).astype(int).tolist()
        [1, 0, 0, 0, 0, 0, 0, 0, 1]
    """
    if n < 0:
        raise UpdateError(f"bit count must be >= 0, got {n}")
    arr = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, bytes) else np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise UpdateError(
            f"packed bits must be a 1-D uint8 array, got {arr.dtype} with shape {arr.shape}"
        )
    if arr.size != packed_size(n):
        raise UpdateError(
            f"packed bits: {arr.size} bytes for {n} bits, expected {packed_size(n)} (ceil(n/8))"
        )
    spare = arr.size * 8 - n
    if spare and int(arr[-1]) >> (8 - spare):
        raise UpdateError(f"packed bits: the {spare} padding bits of the last byte are not zero")
    return np.unpackbits(arr, count=n, bitorder=BIT_ORDER).astype(bool)


def make_layout(tensors: Mapping[str, torch.Tensor | np.ndarray], order: Sequence[str]) -> Layout:
    """The ``[(name, shape)]`` layout of ``tensors`` in ``order`` (every key exactly once)."""
    if len(set(order)) != len(order) or set(order) != set(tensors):
        missing = sorted(set(tensors) - set(order))[:3]
        extra = sorted(set(order) - set(tensors))[:3]
        raise ValueError(
            f"order must list every tensor exactly once: missing {missing}, unknown {extra}"
        )
    return [(name, tuple(int(d) for d in tensors[name].shape)) for name in order]


def pack_tensors(
    tensors: Mapping[str, torch.Tensor | np.ndarray], order: Sequence[str] | None = None
) -> tuple[np.ndarray, Layout]:
    """Flatten several bool tensors in a fixed key order into one packed uint8 array.

    Args:
        tensors: ``{name: bool tensor}``, e.g. from :func:`fedreid.models.supermask.get_signs`.
        order: key order; defaults to ``sorted(tensors)``. Both ends must use the same.

    Returns:
        ``(packed, layout)``; ``layout`` = ``[(name, shape), ...]`` for :func:`unpack_tensors`.

    Examples:
        >>> packed, layout = pack_tensors({"b": torch.ones(3, dtype=torch.bool),
        ...                                "a": torch.zeros(2, dtype=torch.bool)})
        >>> packed.tolist(), layout
        ([28], [('a', (2,)), ('b', (3,))])
    """
    layout = make_layout(tensors, sorted(tensors) if order is None else list(order))
    parts = [_as_bool_array(tensors[name]) for name, _ in layout]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return pack_bits(flat), layout


def layout_size(layout: Layout) -> int:
    """Total number of bits a layout describes."""
    return sum(int(np.prod(shape, dtype=np.int64)) for _, shape in layout)


def unpack_tensors(packed: np.ndarray | bytes, layout: Layout) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_tensors`: ``{name: bool tensor of shape}`` in layout order.

    Raises:
        UpdateError: the packed length or padding does not match the layout.
    """
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in layout]
    flat = unpack_bits(packed, sum(sizes))
    out: dict[str, torch.Tensor] = {}
    start = 0
    for (name, shape), size in zip(layout, sizes, strict=True):
        out[name] = torch.from_numpy(flat[start : start + size].copy()).reshape(shape)
        start += size
    return out


def _canonical_bytes(arr: torch.Tensor | np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """dtype name, shape and little-endian C-order bytes, the same on every machine."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return arr.dtype.str.lstrip("<>|="), tuple(arr.shape), arr.tobytes()


def checksum(
    arrays: Mapping[str, torch.Tensor | np.ndarray] | Iterable[torch.Tensor | np.ndarray],
) -> str:
    """SHA-256 hex digest over names (for a mapping, in sorted key order), dtypes, shapes, data.

    Lets a client check that the pruning mask / frozen weights it rebuilt from the seed are
    bit-identical to the server's.

    Examples:
        >>> checksum({"m": np.zeros(3, dtype=bool)}) == checksum({"m": torch.zeros(3).bool()})
        True
    """
    items = (
        [(name, arrays[name]) for name in sorted(arrays)]
        if isinstance(arrays, Mapping)
        else [("", a) for a in arrays]
    )
    digest = hashlib.sha256()
    for name, arr in items:
        dtype, shape, data = _canonical_bytes(arr)
        header = f"{name}|{dtype}|{','.join(map(str, shape))}|{len(data)}\n"
        digest.update(header.encode())
        digest.update(data)
    return digest.hexdigest()
