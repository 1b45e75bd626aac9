"""Malformed client updates are rejected one by one with a reason naming the client."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedreid.errors import UpdateError
from fedreid.strategies.replies import parse_reply
from tests.conftest import reply_message

EXPECTED = {"w": ((2, 2), np.dtype("float32")), "n": ((), np.dtype("int64"))}


def make_reply(arrays: dict[str, np.ndarray], n=10, name="alpha") -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
            "client": ConfigRecord({"name": name}),
        }
    )
    return reply_message(content)


def good() -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 2), np.float32), "n": np.array(3, np.int64)}


def test_valid_reply_parsed() -> None:
    r = parse_reply(make_reply(good()), EXPECTED)
    assert r.name == "alpha" and r.num_examples == 10 and r.bytes_up > 0
    assert r.metrics["train_loss"] == 1.0


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda a: a.update(w=np.full((2, 2), np.nan, np.float32)), "NaN or Inf"),
        (lambda a: a.update(w=np.full((2, 2), np.inf, np.float32)), "NaN or Inf"),
        (lambda a: a.update(w=np.ones((3, 2), np.float32)), "shape"),
        (lambda a: a.pop("n"), "missing"),
        (lambda a: a.update(extra=np.ones(1, np.float32)), "extra"),
        (lambda a: a.update(n=np.ones((), np.float32)), "dtype"),
    ],
)
def test_malformed_arrays(mutate, reason: str) -> None:
    arrays = good()
    mutate(arrays)
    with pytest.raises(UpdateError, match=f"alpha: .*{reason}"):
        parse_reply(make_reply(arrays), EXPECTED)


@pytest.mark.parametrize("n", [0, -5, 2.5, 10**12, float("inf")])
def test_impossible_num_examples(n) -> None:
    with pytest.raises(UpdateError, match="impossible num-examples"):
        parse_reply(make_reply(good(), n=n), EXPECTED)
