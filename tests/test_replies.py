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


# -- issue probes: values within valid shapes, metrics, records, sizes -------------------------
def test_float64_payload_is_rejected_by_exact_dtype() -> None:
    """1e300 in float64 would overflow to Inf after the cast to float32: refused up front."""
    arrays = good()
    arrays["w"] = np.full((2, 2), 1e300, np.float64)
    with pytest.raises(UpdateError, match="dtype float64, expected float32"):
        parse_reply(make_reply(arrays), EXPECTED)


def metric_reply(metrics: dict, arrays: dict | None = None, extra: dict | None = None) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 10, **metrics}),
            "client": ConfigRecord({"name": "alpha"}),
            **({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})} if arrays else {}),
            **(extra or {}),
        }
    )
    return reply_message(content)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"rank1": 1e6}, "outside"),
        ({"mAP": -5.0}, "outside"),
        ({"junk_0": 1.0}, "unknown metric 'junk_0'"),
        ({"rank1": float("nan")}, "not finite"),
    ],
)
def test_evaluation_metrics_in_range_and_known(metrics: dict, reason: str) -> None:
    from fedreid.protocol import EVALUATE_METRICS

    with pytest.raises(UpdateError, match=reason):
        parse_reply(metric_reply(metrics), None, allowed_metrics=EVALUATE_METRICS)
    ok = parse_reply(
        metric_reply({"rank1": 0.5, "mAP": 0.25}), None, allowed_metrics=EVALUATE_METRICS
    )
    assert ok.metrics == {"rank1": 0.5, "mAP": 0.25}


def test_cdw_distance_outside_zero_two_is_rejected() -> None:
    from fedreid.protocol import TRAIN_METRICS

    with pytest.raises(UpdateError, match="cdw_distance.*outside"):
        parse_reply(
            metric_reply({"cdw_distance": 1e9}, good()), EXPECTED, allowed_metrics=TRAIN_METRICS
        )


def test_unknown_records_and_size_limit() -> None:
    extra = {"junk": ConfigRecord({"blob": "x" * 1000})}
    with pytest.raises(UpdateError, match="unknown records"):
        parse_reply(metric_reply({}, good(), extra), EXPECTED)
    big = {"w": np.ones((2, 2), np.float32), "n": np.array(3, np.int64)}
    with pytest.raises(UpdateError, match="exceeds the limit of 10"):
        parse_reply(metric_reply({}, big), EXPECTED, max_bytes=10)
    # evaluation replies carry no arrays
    with pytest.raises(UpdateError, match="evaluation reply carries arrays"):
        parse_reply(metric_reply({}, good()), None)
