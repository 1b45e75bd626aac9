"""Coded uploads: round trips of every coding, the smallest-payload choice, corrupt payloads
refused with a reason, and FedPM's downlink helpers."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fedreid.errors import UpdateError
from fedreid.utils import fedpm, signcode
from fedreid.utils.bitpack import packed_size


def _pair(n: int, rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < 0.5
    return ref ^ (rng.random(n) < rate), ref


@pytest.mark.parametrize("coding", ["raw", "zlib", "lzma", "bz2", "rice"])
@pytest.mark.parametrize(("n", "rate"), [(0, 0.0), (1, 1.0), (9, 0.3), (1000, 0.0), (4096, 0.02)])
def test_every_coding_round_trips(coding: str, n: int, rate: float) -> None:
    bits, ref = _pair(n, rate)
    payload = signcode.encode_as(coding, bits, ref)
    assert payload.dtype == np.uint8 and payload.ndim == 1
    assert signcode.coding_name(payload) == coding
    if payload.size <= signcode.max_payload(n):
        np.testing.assert_array_equal(signcode.decode(payload, n, ref), bits)


def test_rice_gaps_by_hand() -> None:
    # gaps 0, 5, 2 with k = 1: 0 -> "0"+"0"; 5 -> "11"+"0"+"1"; 2 -> "1"+"0"+"0"
    packed = signcode.rice_encode(np.array([0, 5, 2]), 1)
    bits = np.unpackbits(packed, bitorder="little")[:10].tolist()
    assert bits == [0, 0, 1, 1, 0, 1, 1, 0, 0, 0]
    assert signcode.rice_decode(packed.tobytes(), 3, 1, 20).tolist() == [0, 5, 2]
    assert signcode.rice_parameter(np.array([100, 120, 90])) >= 5  # long gaps, large k


def test_encode_keeps_the_smallest_and_falls_back_to_raw() -> None:
    n = 20_000
    sparse, ref = _pair(n, 0.01)
    payload = signcode.encode(sparse, ref)
    assert signcode.coding_name(payload) == "rice"
    # close to the entropy floor, far below 1 bit per weight
    assert 8 * payload.size / n < 1.1 * signcode.entropy_bits(0.01) + 0.01
    dense, ref = _pair(n, 0.5)  # nothing to gain: raw, ceil(n/8) + 5 bytes
    payload = signcode.encode(dense, ref)
    assert signcode.coding_name(payload) == "raw"
    assert payload.size == packed_size(n) + signcode.HEADER == signcode.max_payload(n)
    assert signcode.coding_name(signcode.encode(sparse, None)) == "raw"  # no reference: raw
    np.testing.assert_array_equal(signcode.decode(payload, n, None), dense)


@pytest.mark.parametrize("coding", ["raw", "zlib", "lzma", "rice"])
def test_corrupt_payloads_are_refused_with_a_reason(coding: str) -> None:
    n = 5000
    bits, ref = _pair(n, 0.03, seed=1)
    good = signcode.encode_as(coding, bits, ref)
    # any flipped bit in the body: a decode error or a CRC mismatch, never wrong bits
    for pos in (signcode.HEADER, good.size // 2, good.size - 1):
        bad = good.copy()
        bad[pos] ^= 0b0001_0000
        with pytest.raises(UpdateError):
            signcode.decode(bad, n, ref)
    with pytest.raises(UpdateError):  # truncated
        signcode.decode(good[:-1], n, ref)
    with pytest.raises(UpdateError, match="CRC-32"):  # a wrong checksum field
        bad = good.copy()
        bad[1] ^= 1
        signcode.decode(bad, n, ref)
    if coding != "raw":
        with pytest.raises(UpdateError, match="CRC-32"):  # coded against other reference bits
            signcode.decode(good, n, ~ref)
        with pytest.raises(UpdateError):  # trailing garbage after a complete body
            signcode.decode(np.concatenate([good, np.zeros(3, np.uint8)]), n, ref)


def test_structural_checks() -> None:
    n = 4096
    bits, ref = _pair(n, 0.02)
    good = signcode.encode_as("rice", bits, ref)
    with pytest.raises(UpdateError, match="valid: 5.."):
        signcode.decode(good[:3], n, ref)
    with pytest.raises(UpdateError, match="valid: 5.."):
        signcode.decode(np.zeros(signcode.max_payload(n) + 1, np.uint8), n, ref)
    with pytest.raises(UpdateError, match="unknown coding"):
        bad = good.copy()
        bad[0] = 9
        signcode.decode(bad, n, ref)
    with pytest.raises(UpdateError, match="1-D uint8"):
        signcode.decode(good.astype(np.int16), n, ref)
    with pytest.raises(UpdateError, match="no reference"):
        signcode.decode(good, n, None)
    # a rice header claiming more set bits than exist
    body = struct.pack("<IB", n + 1, 0)
    header = struct.pack("<BI", signcode.RICE, signcode.crc(bits))
    with pytest.raises(UpdateError, match="impossible"):
        signcode.decode(np.frombuffer(header + body, np.uint8), n, ref)
    # a zlib body that inflates past ceil(n/8) bytes (a decompression bomb) is cut and refused
    bomb = zlib.compress(bytes(10_000), 9)
    payload = np.frombuffer(struct.pack("<BI", signcode.ZLIB, 0) + bomb, np.uint8)
    with pytest.raises(UpdateError, match="expected exactly 512"):
        signcode.decode(payload, n, ref)


def test_fedpm_downlink_helpers() -> None:
    p = np.array([0.0, 0.25, 0.5, 0.74, 1.0])
    q = fedpm.encode_probs(p, 8)
    assert q.dtype == np.uint8 and q.tolist() == [0, 64, 128, 189, 255]
    np.testing.assert_allclose(fedpm.decode_probs(q), q / 255.0)
    f = fedpm.encode_probs(p, 32)
    assert f.dtype == np.float32 and fedpm.reference_bits(f).tolist() == [F, F, T, T, T]
    assert fedpm.reference_bits(q).tolist() == [F, F, T, T, T]
    with pytest.raises(UpdateError):
        fedpm.decode_probs(np.array([0.5, 1.5], dtype=np.float32))
    with pytest.raises(UpdateError):
        fedpm.decode_probs(np.array([1, 2], dtype=np.int32))
    bits = [np.array([T, T, F]), np.array([T, F, F])]
    np.testing.assert_allclose(fedpm.estimate(bits, [3, 1], 0.0), [1.0, 0.75, 0.0])
    # Beta(1, 1) smoothing in units of clients: (2 * mean + 1) / 4
    np.testing.assert_allclose(fedpm.estimate(bits, [3, 1], 1.0), [0.75, 0.625, 0.25])
    assert fedpm.entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)


T, F = True, False
