"""Checking client replies one by one, so one malformed update is excluded, not the round.

A reply is rejected (:class:`~fedreid.errors.UpdateError`, with the reason) when it is an error
reply; carries records other than its one MetricRecord, its ``client`` ConfigRecord and (for
training) its one ArrayRecord; is larger than the configured limit; claims an impossible
``num-examples``; reports a metric that is not a finite number, not known for its phase, or
outside its range (:data:`fedreid.protocol.TRAIN_METRICS`, :data:`EVALUATE_METRICS`); or sends
arrays whose keys, shapes or exact dtypes differ from what the server sent, or that hold NaN
or Inf. Checks that need the whole round or the whole run (one name per node, pinned
``num-examples``, the update-norm screen) live in :mod:`fedreid.run`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from fedreid.errors import UpdateError
from fedreid.protocol import ARRAYS, CLIENT, NUM_EXAMPLES

MAX_EXAMPLES = 100_000_000
MAX_NAME = 128
Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


@dataclass
class ClientReply:
    """A reply that passed the checks, unpacked for aggregation."""

    node_id: int
    name: str
    num_examples: int
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    bytes_up: int = 0
    message: Message | None = None


def reply_name(msg: Message) -> str:
    """The client's self-reported name, else ``node-<id>``."""
    cfg = msg.content.config_records.get(CLIENT) if msg.has_content() else None
    if cfg is not None and isinstance(cfg.get("name"), str):
        return str(cfg["name"])
    return f"node-{msg.metadata.src_node_id}"


def message_bytes(msg: Message) -> int:
    """Bytes of every record of a reply (arrays, metrics and config records alike)."""
    content = msg.content
    total = 0
    for records in (content.array_records, content.metric_records, content.config_records):
        total += sum(int(r.count_bytes()) for r in records.values())
    return total


def _check_records(name: str, msg: Message, train: bool) -> None:
    content = msg.content
    if len(content.metric_records) != 1:
        raise UpdateError(f"{name}: expected one MetricRecord, got {len(content.metric_records)}")
    extra_config = sorted(set(content.config_records) - {CLIENT})
    if extra_config:
        raise UpdateError(f"{name}: unknown records {extra_config[:3]}")
    arrays = set(content.array_records)
    if train and arrays != {ARRAYS}:
        raise UpdateError(
            f"{name}: expected exactly one ArrayRecord {ARRAYS!r}, got {sorted(arrays)}"
        )
    if not train and arrays:
        raise UpdateError(f"{name}: an evaluation reply carries arrays {sorted(arrays)[:3]}")


def _check_metrics(
    name: str, metrics: Mapping[str, object], allowed: Mapping[str, tuple[float, float]] | None
) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if key == NUM_EXAMPLES:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UpdateError(f"{name}: metric {key!r} is not a number ({type(value).__name__})")
        if not math.isfinite(value):
            raise UpdateError(f"{name}: metric {key!r} is not finite ({value})")
        if allowed is not None:
            if key not in allowed:
                raise UpdateError(f"{name}: unknown metric {key!r}")
            low, high = allowed[key]
            if not low <= value <= high:
                raise UpdateError(f"{name}: metric {key!r}={value:g} outside [{low:g}, {high:g}]")
        clean[key] = float(value)
    return clean


def parse_reply(
    msg: Message,
    expected: Spec | None,
    *,
    allowed_metrics: Mapping[str, tuple[float, float]] | None = None,
    max_bytes: int = 0,
) -> ClientReply:
    """Validate one reply; raise :class:`UpdateError` naming the client and the reason.

    Args:
        msg: the reply message.
        expected: ``{key: (shape, dtype)}`` of the arrays a training reply must carry (what
            the server sent it); None for evaluation replies (which carry no arrays).
        allowed_metrics: known metric keys and their ranges; None accepts any finite number.
        max_bytes: the largest reply accepted (all records counted); 0 = no limit.
    """
    name = reply_name(msg)
    if msg.has_error():
        reason = (msg.error.reason or "").strip().splitlines() or ["(no reason)"]
        raise UpdateError(f"{name}: client error: {reason[-1]}")
    if len(name) > MAX_NAME:
        raise UpdateError(f"node-{msg.metadata.src_node_id}: client name longer than {MAX_NAME}")
    train = expected is not None
    _check_records(name, msg, train)
    size = message_bytes(msg)
    if max_bytes and size > max_bytes:
        raise UpdateError(f"{name}: reply of {size} bytes exceeds the limit of {max_bytes}")
    metrics = dict(next(iter(msg.content.metric_records.values())))
    n = metrics.get(NUM_EXAMPLES)
    if (
        not isinstance(n, (int, float))
        or isinstance(n, bool)
        or not math.isfinite(n)
        or n <= 0
        or n != int(n)
        or n > MAX_EXAMPLES
    ):
        raise UpdateError(f"{name}: impossible num-examples {n!r}")
    clean = _check_metrics(name, metrics, allowed_metrics)
    reply = ClientReply(
        node_id=msg.metadata.src_node_id,
        name=name,
        num_examples=int(n),
        metrics=clean,
        bytes_up=size,
        message=msg,
    )
    if expected is None:
        return reply
    record = msg.content.array_records[ARRAYS]
    keys = set(record.keys())
    if keys != set(expected):
        missing = sorted(set(expected) - keys)[:3]
        extra = sorted(keys - set(expected))[:3]
        raise UpdateError(f"{name}: wrong keys (missing {missing}, extra {extra})")
    arrays = {}
    for key in expected:
        try:
            arr = record[key].numpy()
        except Exception as err:
            raise UpdateError(f"{name}: undecodable array {key!r} ({err})") from err
        shape, dtype = expected[key]
        if tuple(arr.shape) != tuple(shape):
            raise UpdateError(f"{name}: {key} has shape {tuple(arr.shape)}, expected {shape}")
        if arr.dtype != np.dtype(dtype):
            raise UpdateError(f"{name}: {key} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise UpdateError(f"{name}: {key} holds NaN or Inf")
        arrays[key] = arr
    reply.arrays = arrays
    return reply
