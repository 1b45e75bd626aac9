"""Bit packing: round trips, odd and empty lengths, strict rejection of malformed uploads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.errors import UpdateError
from fedreid.utils.bitpack import (
    checksum,
    layout_size,
    pack_bits,
    pack_tensors,
    packed_size,
    unpack_bits,
    unpack_tensors,
)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 1001])
def test_round_trip_any_length(n: int) -> None:
    bits = np.random.default_rng(n).random(n) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n),) == ((n + 7) // 8,)
    assert np.array_equal(unpack_bits(packed, n), bits)
    assert np.array_equal(unpack_bits(packed.tobytes(), n), bits)
    assert np.array_equal(pack_bits(torch.from_numpy(bits)), packed)


def test_bit_order_is_little_endian_within_bytes() -> None:
    bits = np.zeros(10, dtype=bool)
    bits[[0, 3, 9]] = True
    assert pack_bits(bits).tolist() == [0b00001001, 0b00000010]


def test_multidimensional_input_is_flattened_row_major() -> None:
    t = torch.tensor([[True, False, True], [False, False, True]])
    assert unpack_bits(pack_bits(t), 6).tolist() == t.flatten().tolist()


def test_wrong_lengths_rejected() -> None:
    packed = pack_bits(np.ones(17, dtype=bool))  # 3 bytes
    with pytest.raises(UpdateError, match="expected 2"):
        unpack_bits(packed, 16)
    with pytest.raises(UpdateError, match="expected 4"):
        unpack_bits(packed, 25)
    with pytest.raises(UpdateError, match="expected 0"):
        unpack_bits(packed, 0)
    with pytest.raises(UpdateError, match="uint8"):
        unpack_bits(packed.astype(np.int16), 17)
    with pytest.raises(UpdateError, match="uint8"):
        unpack_bits(packed.reshape(3, 1), 17)


def test_nonzero_padding_rejected() -> None:
    packed = pack_bits(np.ones(9, dtype=bool))
    assert unpack_bits(packed, 9).all()
    bad = packed.copy()
    bad[-1] |= 0b10000000
    with pytest.raises(UpdateError, match="padding"):
        unpack_bits(bad, 9)
    # 16 bits of all ones packed as 2 bytes, read as 9 bits: 7 stray padding bits
    with pytest.raises(UpdateError, match="padding"):
        unpack_bits(pack_bits(np.ones(16, dtype=bool)), 9)


def test_non_bool_input_refused() -> None:
    with pytest.raises(TypeError):
        pack_bits(np.array([0, 1, 1]))
    with pytest.raises(TypeError):
        pack_bits(torch.tensor([0.0, 1.0]))


def test_pack_tensors_round_trip_in_fixed_order() -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "layer2.weight": torch.from_numpy(rng.random((3, 5)) > 0.5),
        "layer1.weight": torch.from_numpy(rng.random((2, 2, 3)) > 0.5),
        "empty": torch.zeros(0, 4, dtype=torch.bool),
        "one": torch.tensor([True]),
    }
    packed, layout = pack_tensors(tensors)
    assert [name for name, _ in layout] == sorted(tensors)
    assert layout_size(layout) == 15 + 12 + 0 + 1
    assert packed.size == packed_size(28)
    out = unpack_tensors(packed, layout)
    assert list(out) == sorted(tensors)
    assert all(out[k].shape == tensors[k].shape and torch.equal(out[k], tensors[k]) for k in out)
    order = ["one", "layer2.weight", "empty", "layer1.weight"]
    packed2, layout2 = pack_tensors(tensors, order)
    assert [name for name, _ in layout2] == order
    assert all(torch.equal(v, tensors[k]) for k, v in unpack_tensors(packed2, layout2).items())
    with pytest.raises(UpdateError):
        unpack_tensors(packed2[:-1], layout2)
    with pytest.raises(ValueError, match="missing"):
        pack_tensors(tensors, ["one"])
    with pytest.raises(ValueError, match="exactly once"):
        pack_tensors(tensors, [*order, "one"])


def test_pack_tensors_empty() -> None:
    packed, layout = pack_tensors({})
    assert packed.size == 0 and layout == [] and unpack_tensors(packed, layout) == {}


def test_checksum_detects_changes_and_is_stable() -> None:
    masks = {"a": torch.tensor([True, False, True]), "b": torch.zeros(2, 2, dtype=torch.bool)}
    digest = checksum(masks)
    assert len(digest) == 64 and digest == checksum(dict(reversed(list(masks.items()))))
    assert digest == checksum({k: v.numpy() for k, v in masks.items()})
    assert digest != checksum({**masks, "a": torch.tensor([True, True, True])})
    assert digest != checksum({**masks, "b": torch.zeros(4, dtype=torch.bool)})  # shape counts
    assert digest != checksum({"c": masks["a"], "b": masks["b"]})  # names count
    w = torch.arange(6, dtype=torch.float32)
    assert checksum([w]) == checksum([w.numpy().astype(">f4")])  # byte order normalised
    assert checksum([w]) != checksum([w.double()])  # dtype counts
