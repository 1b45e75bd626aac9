"""FedPav's weighted mean checked against hand computations; the BatchNorm policy."""

from __future__ import annotations

import numpy as np
import pytest

from fedreid.strategies.aggregation import normalise_weights, weighted_average


def test_weighted_mean_by_training_images_hand_checked() -> None:
    # Three clients with 100, 300 and 600 training images -> weights 0.1, 0.3, 0.6.
    a = {"w": np.array([1.0, 0.0], dtype=np.float32), "b": np.array([10.0], dtype=np.float32)}
    b = {"w": np.array([2.0, 1.0], dtype=np.float32), "b": np.array([20.0], dtype=np.float32)}
    c = {"w": np.array([3.0, 2.0], dtype=np.float32), "b": np.array([30.0], dtype=np.float32)}
    out = weighted_average([a, b, c], [100, 300, 600])
    # w[0] = 0.1*1 + 0.3*2 + 0.6*3 = 2.5 ; w[1] = 0.3*1 + 0.6*2 = 1.5 ; b = 1 + 6 + 18 = 25
    assert out["w"].tolist() == pytest.approx([2.5, 1.5])
    assert out["b"].tolist() == pytest.approx([25.0])
    assert out["w"].dtype == np.float32


def test_integer_buffers_are_rounded() -> None:
    a = {"n": np.array(3, dtype=np.int64)}
    b = {"n": np.array(6, dtype=np.int64)}
    out = weighted_average([a, b], [1, 1])  # 4.5 -> 4 (round half to even)
    assert out["n"].dtype == np.int64 and int(out["n"]) == 4


def test_selected_keys_only() -> None:
    a = {"x": np.ones(2), "y": np.zeros(2)}
    out = weighted_average([a, a], [1, 2], keys=["x"])
    assert set(out) == {"x"}


@pytest.mark.parametrize("weights", [[], [1, -1], [0, 0], [1, float("nan")]])
def test_bad_weights_rejected(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        normalise_weights(weights)


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 states but 1 weights"):
        weighted_average([{"x": np.ones(1)}] * 2, [1])
