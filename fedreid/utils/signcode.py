"""Uploads below one bit per surviving weight: XOR against the received bits, entropy-coded.

A HideNseek client's trained bits differ from the global bits it received in only a few
positions (1-5 % once training settles), so the difference ``bits XOR reference`` is a sparse
bit vector and compresses far below 1 bit per weight. An encoded upload is one uint8 array:

====== ======= ===============================================================================
offset bytes   content
====== ======= ===============================================================================
0      1       coding id (:data:`CODINGS`): ``0`` raw, ``1`` zlib, ``2`` lzma, ``3`` bz2,
               ``4`` rice
1      4       CRC-32 (``zlib.crc32``, little-endian) of the *decoded* bits packed 1 bit per
               entry (:func:`~fedreid.utils.bitpack.pack_bits`)
5      rest    the body
====== ======= ===============================================================================

Bodies:

* ``raw``: the bits themselves, packed (``ceil(n / 8)`` bytes): the fallback, always valid,
  needs no reference;
* ``zlib`` / ``lzma`` / ``bz2``: Python's standard-library compressors (level 9 /
  preset 9 | EXTREME / level 9) over the packed XOR difference;
* ``rice``: the positions of the set XOR bits as gaps (zeros before each one), Golomb-Rice
  coded: a uint32 count ``K`` of set bits, one byte ``k`` (the Rice parameter), then each gap
  ``g`` as ``g >> k`` in unary (ones, then a zero) followed by the low ``k`` bits of ``g``, most
  significant first, packed like every other bit vector. For i.i.d. flips Golomb-Rice is
  within a few percent of the entropy ``H(p)``; ``k`` is the best one for this vector.

:func:`encode` tries the codings it is given and keeps the smallest payload (raw included, so
an upload never exceeds ``ceil(n / 8) + 5`` bytes). :func:`decode` checks everything it reads
(coding id, lengths, no trailing bytes, a decompressor that must end exactly at ``ceil(n/8)``
bytes, gaps that stay inside ``n``, zero padding bits) and finally the CRC-32, so a corrupt
payload or one coded against another reference fails with :class:`~fedreid.errors.UpdateError`
and a reason instead of shifting bits.

Examples:
    >>> import numpy as np
    >>> ref = np.zeros(1000, dtype=bool)
    >>> bits = ref.copy(); bits[[3, 500, 999]] = True
    >>> payload = encode(bits, ref)
    >>> coding_name(payload), len(payload) < 1000 // 8
    ('rice', True)
    >>> bool(np.array_equal(decode(payload, 1000, ref), bits))
    True
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from fedreid.errors import UpdateError
from fedreid.utils.bitpack import pack_bits, packed_size, unpack_bits

RAW, ZLIB, LZMA, BZ2, RICE = 0, 1, 2, 3, 4
CODINGS = {"raw": RAW, "zlib": ZLIB, "lzma": LZMA, "bz2": BZ2, "rice": RICE}
"""Coding name -> the header byte."""
NAMES = {v: k for k, v in CODINGS.items()}
HEADER = 5
"""Bytes before the body: the coding id and the CRC-32."""
DEFAULT_CODINGS = ("rice", "zlib")
"""What :func:`encode` tries besides ``raw``: Golomb-Rice is within 1-3 % of ``H(p)`` on
random flips; zlib can win on clustered ones; lzma and bz2 never won in our measurements (and
lzma costs 50-70 ms per upload), but both still decode."""
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def max_payload(n: int) -> int:
    """The largest valid payload for ``n`` bits: the raw coding, ``ceil(n/8) + 5`` bytes."""
    return packed_size(n) + HEADER


def crc(bits: np.ndarray) -> int:
    """CRC-32 of ``bits`` packed 1 bit per entry."""
    return zlib.crc32(pack_bits(np.asarray(bits, dtype=bool)).tobytes())


# -- Golomb-Rice coding of gaps -------------------------------------------------------------
def _rice_bits(gaps: np.ndarray, k: int) -> int:
    return int((gaps >> k).sum()) + len(gaps) * (k + 1)


def rice_parameter(gaps: np.ndarray) -> int:
    """The ``k`` in 0..31 that codes ``gaps`` in the fewest bits (exact, by trying each)."""
    if len(gaps) == 0:
        return 0
    return min(range(32), key=lambda k: _rice_bits(gaps, k))


def rice_encode(gaps: np.ndarray, k: int) -> np.ndarray:
    """Golomb-Rice code of non-negative ``gaps`` with parameter ``k`` as packed bits."""
    gaps = np.asarray(gaps, dtype=np.int64)
    q = gaps >> k
    lengths = q + 1 + k
    total = int(lengths.sum())
    out = np.zeros(total, dtype=bool)
    starts = np.cumsum(lengths) - lengths
    if q.sum():
        # the unary part: q ones from each start
        run_start = np.repeat(starts, q)
        offset = np.arange(int(q.sum())) - np.repeat(np.cumsum(q) - q, q)
        out[run_start + offset] = True
    if k:
        low = gaps & ((1 << k) - 1)
        shifts = np.arange(k - 1, -1, -1)
        set_bits = ((low[:, None] >> shifts) & 1).astype(bool)
        positions = (starts + q + 1)[:, None] + np.arange(k)
        out[positions[set_bits]] = True
    return pack_bits(out)


def rice_decode(body: bytes, count: int, k: int, n: int) -> np.ndarray:
    """The ``count`` gaps of :func:`rice_encode`; each must keep the positions inside ``n``.

    Raises:
        UpdateError: the code runs past its end, a gap leaves the vector, or the padding
            bits are not zero.
    """
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), bitorder="little").astype(bool)
    zeros = np.flatnonzero(~bits)
    gaps = np.empty(count, dtype=np.int64)
    pos = 0
    position = -1  # the last decoded set position
    for i in range(count):
        j = np.searchsorted(zeros, pos)
        if j >= len(zeros):
            raise UpdateError("rice code: ran past the end of the payload")
        stop = int(zeros[j])
        low_end = stop + 1 + k
        if low_end > len(bits):
            raise UpdateError("rice code: ran past the end of the payload")
        low = 0
        for b in bits[stop + 1 : low_end]:
            low = (low << 1) | int(b)
        gap = ((stop - pos) << k) | low
        position += gap + 1
        if position >= n:
            raise UpdateError(f"rice code: a set position {position} outside {n} bits")
        gaps[i] = gap
        pos = low_end
    if packed_size(pos) != len(body) or bits[pos:].any():
        raise UpdateError("rice code: trailing bytes or non-zero padding after the last code")
    return gaps


def _rice_body(diff: np.ndarray) -> bytes:
    ones = np.flatnonzero(diff)
    gaps = np.diff(ones, prepend=-1) - 1
    k = rice_parameter(gaps)
    return struct.pack("<IB", len(ones), k) + rice_encode(gaps, k).tobytes()


def _rice_unbody(body: bytes, n: int) -> np.ndarray:
    if len(body) < 5:
        raise UpdateError("rice code: payload shorter than its 5-byte header")
    count, k = struct.unpack("<IB", body[:5])
    if count > n or k > 31:
        raise UpdateError(f"rice code: {count} set bits or parameter {k} impossible for {n} bits")
    gaps = rice_decode(body[5:], count, k, n)
    diff = np.zeros(n, dtype=bool)
    diff[np.cumsum(gaps + 1) - 1] = True
    return diff


# -- standard-library compressors ------------------------------------------------------------
def _inflate(coding: int, body: bytes, size: int) -> bytes:
    """Decompress at most ``size + 1`` bytes; the stream must end exactly there."""
    try:
        if coding == ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(body, size + 1)
            done, rest = d.eof, d.unconsumed_tail + d.unused_data
        elif coding == LZMA:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            out = d.decompress(body, max_length=size + 1)
            done, rest = d.eof or (len(out) == size and not d.needs_input), d.unused_data
        else:
            d = bz2.BZ2Decompressor()
            out = d.decompress(body, max_length=size + 1)
            done, rest = d.eof, d.unused_data
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as err:
        raise UpdateError(f"{NAMES[coding]} body does not decompress ({err})") from err
    if len(out) != size or not done or rest:
        raise UpdateError(
            f"{NAMES[coding]} body decompresses to {len(out)}+ bytes (complete: {done}, "
            f"trailing: {len(rest)}), expected exactly {size}"
        )
    return out


def _deflate(coding: int, packed: bytes) -> bytes:
    if coding == ZLIB:
        return zlib.compress(packed, 9)
    if coding == LZMA:
        return lzma.compress(packed, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return bz2.compress(packed, 9)


# -- the upload ------------------------------------------------------------------------------
def encode_as(coding: str, bits: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """One coding's payload for ``bits`` (``reference``: the bits the XOR is taken against)."""
    bits = np.asarray(bits, dtype=bool).reshape(-1)
    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; choose from {sorted(CODINGS)}")
    cid = CODINGS[coding]
    if cid == RAW:
        body = pack_bits(bits).tobytes()
    else:
        if reference is None:
            raise ValueError(f"coding {coding!r} needs the reference bits")
        reference = np.asarray(reference, dtype=bool).reshape(-1)
        if reference.shape != bits.shape:
            raise ValueError(f"reference of {reference.size} bits for {bits.size} bits")
        diff = bits ^ reference
        body = _rice_body(diff) if cid == RICE else _deflate(cid, pack_bits(diff).tobytes())
    header = struct.pack("<BI", cid, crc(bits))
    return np.frombuffer(header + body, dtype=np.uint8).copy()


def encode(
    bits: np.ndarray, reference: np.ndarray | None, codings: Sequence[str] = DEFAULT_CODINGS
) -> np.ndarray:
    """The smallest payload among ``raw`` and ``codings`` (ties: the earlier, raw first)."""
    best = encode_as("raw", bits, None)
    if reference is None:
        return best
    for coding in codings:
        if coding == "raw":
            continue
        payload = encode_as(coding, bits, reference)
        if payload.size < best.size:
            best = payload
    return best


def coding_name(payload: np.ndarray | bytes) -> str:
    """The coding a payload declares (``"?"`` if the id is unknown or it is empty)."""
    data = bytes(payload[:1]) if len(payload) else b""
    return NAMES.get(data[0], "?") if data else "?"


def decode(payload: np.ndarray | bytes, n: int, reference: np.ndarray | None) -> np.ndarray:
    """The ``n`` bits of an :func:`encode` payload, fully checked (see the module docs).

    Raises:
        UpdateError: with the reason: not 1-D uint8, too long or short, unknown coding, a
            body that does not decode to exactly ``n`` bits, or a CRC-32 mismatch.
    """
    arr = np.frombuffer(payload, dtype=np.uint8) if isinstance(payload, bytes) else payload
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise UpdateError(f"upload must be 1-D uint8, got {arr.dtype} with shape {arr.shape}")
    if not HEADER <= arr.size <= max_payload(n):
        raise UpdateError(f"upload of {arr.size} bytes; valid: {HEADER}..{max_payload(n)}")
    data = arr.tobytes()
    cid, expected_crc = struct.unpack("<BI", data[:HEADER])
    body = data[HEADER:]
    if cid not in NAMES:
        raise UpdateError(f"upload declares unknown coding {cid}")
    if cid == RAW:
        bits = unpack_bits(body, n)
    else:
        if reference is None:
            raise UpdateError(f"{NAMES[cid]} upload but no reference bits")
        reference = np.asarray(reference, dtype=bool).reshape(-1)
        if reference.size != n:
            raise UpdateError(f"reference of {reference.size} bits for {n} bits")
        if cid == RICE:
            diff = _rice_unbody(body, n)
        else:
            diff = unpack_bits(np.frombuffer(_inflate(cid, body, packed_size(n)), np.uint8), n)
        bits = diff ^ reference
    if crc(bits) != expected_crc:
        raise UpdateError(
            f"{NAMES[cid]} upload: CRC-32 mismatch (corrupt, or coded against other reference bits)"
        )
    return bits


def entropy_bits(p: float) -> float:
    """Binary entropy ``H(p)`` in bits: the floor for coding i.i.d. flips of rate ``p``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
