"""Checking client replies one by one, so one malformed update is excluded, not the round."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from fedreid.errors import UpdateError

MAX_EXAMPLES = 100_000_000


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
    cfg = msg.content.config_records.get("client") if msg.has_content() else None
    if cfg is not None and isinstance(cfg.get("name"), str):
        return str(cfg["name"])
    return f"node-{msg.metadata.src_node_id}"


def parse_reply(
    msg: Message,
    expected: dict[str, tuple[tuple[int, ...], np.dtype]] | None,
    *,
    arrays_key: str = "arrays",
) -> ClientReply:
    """Validate a training reply against the expected keys/shapes; raise UpdateError if bad.

    Args:
        msg: the reply message.
        expected: ``{key: (shape, dtype)}`` of the arrays the client must send; None skips
            array checks (evaluation replies).
    """
    name = reply_name(msg)
    if msg.has_error():
        reason = (msg.error.reason or "").strip().splitlines() or ["(no reason)"]
        raise UpdateError(f"{name}: client error: {reason[-1]}")
    content = msg.content
    metric_records = list(content.metric_records.values())
    if len(metric_records) != 1:
        raise UpdateError(f"{name}: expected one MetricRecord, got {len(metric_records)}")
    metrics = dict(metric_records[0])
    n = metrics.get("num-examples")
    if (
        not isinstance(n, (int, float))
        or isinstance(n, bool)
        or not math.isfinite(n)
        or n <= 0
        or n != int(n)
        or n > MAX_EXAMPLES
    ):
        raise UpdateError(f"{name}: impossible num-examples {n!r}")
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):
                raise UpdateError(f"{name}: metric {k!r} is not finite ({v})")
            clean[k] = float(v)
    reply = ClientReply(
        node_id=msg.metadata.src_node_id, name=name, num_examples=int(n), metrics=clean, message=msg
    )
    if expected is None:
        return reply
    if arrays_key not in content.array_records or len(content.array_records) != 1:
        raise UpdateError(f"{name}: expected exactly one ArrayRecord {arrays_key!r}")
    record = content.array_records[arrays_key]
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
        if arr.dtype.kind != np.dtype(dtype).kind:
            raise UpdateError(f"{name}: {key} has dtype {arr.dtype}, expected {dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise UpdateError(f"{name}: {key} holds NaN or Inf")
        arrays[key] = arr
    reply.arrays = arrays
    reply.bytes_up = int(record.count_bytes())
    return reply
