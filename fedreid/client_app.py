"""Flower ClientApp: decodes messages, drives the plain client wrappers, encodes replies.

The server's message says what to answer (:data:`fedreid.protocol.UPLOAD_KEY`: the shared
tensors, nothing, or sign bits) and whether to report CDW distances; the task registry picks
the client wrapper. The head (and any other per-client tensor) never enters a reply: replies
carry only the arrays the server asked for, ``num-examples``, metrics and the client's name.

Client-side differential privacy uses Flower's own ``fixedclipping_mod`` and
``adaptiveclipping_mod``; :func:`dp_clipping_mod` applies the one the server's DP wrapper
asks for (``privacy.dp=client_fixed|client_adaptive``) and passes every other message through.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedreid.config import Config
from fedreid.protocol import (
    ARRAYS,
    CDW_KEY,
    CLIENT,
    CONFIG,
    CONFIG_KEY,
    DP_KEY,
    EVAL_LOCAL_KEY,
    METRICS,
    NUM_EXAMPLES,
    ROUND_KEY,
    UPLOAD_KEY,
    Upload,
)
from fedreid.tasks import get_task

log = logging.getLogger("fedreid")

CLIENT_DP_MODS = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}
"""``privacy.dp`` -> Flower's client-side clipping mod."""


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply Flower's client-side clipping mod when the run uses client-side DP."""
    if msg.metadata.message_type == "train" and msg.has_content():
        config = msg.content.config_records.get(CONFIG)
        mode = str(config.get(DP_KEY, "")) if config is not None else ""
        mod = CLIENT_DP_MODS.get(mode)
        if mod is not None:
            return mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[dp_clipping_mod])


def build_client(msg: Message, context: Context) -> tuple[Config, Any]:
    """The run config from the message, this node's data, and the right client wrapper."""
    server_config = msg.content[CONFIG]
    cfg = Config.from_json(str(server_config[CONFIG_KEY]))
    upload = Upload(str(server_config.get(UPLOAD_KEY, Upload.SHARED)))
    cdw = bool(server_config.get(CDW_KEY, False))
    client = get_task(cfg).make_client(
        cfg, upload, cdw, dict(server_config), dict(context.node_config), context.state
    )
    if cfg.fault.kind or cfg.fault.schedule:
        from fedreid.clients.faulty import maybe_faulty

        client = maybe_faulty(cfg, client, int(server_config.get(ROUND_KEY, 0)))
    return cfg, client


def received_arrays(msg: Message) -> dict[str, torch.Tensor] | None:
    """The arrays of a message; None when it carries none (local training)."""
    record = msg.content.array_records.get(ARRAYS)
    if record is None or len(record) == 0:
        return None
    return record.to_torch_state_dict()


def reply(
    msg: Message,
    name: str,
    metrics: dict[str, float],
    num_examples: int,
    arrays: ArrayRecord | None = None,
) -> Message:
    """One ArrayRecord (training only), one MetricRecord with num-examples, the client name."""
    content = RecordDict()
    if arrays is not None:
        content[ARRAYS] = arrays
    content[METRICS] = MetricRecord(
        {**{k: float(v) for k, v in metrics.items()}, NUM_EXAMPLES: int(num_examples)}
    )
    content[CLIENT] = ConfigRecord({"name": name})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on the received model; reply with what the server asked for."""
    _cfg, client = build_client(msg, context)
    config = msg.content[CONFIG]
    result = client.fit(
        received_arrays(msg),
        int(config[ROUND_KEY]),
        evaluate_local=bool(config.get(EVAL_LOCAL_KEY, False)),
    )
    arrays = (
        result.arrays if hasattr(result, "arrays") else ArrayRecord(torch_state_dict=result.shared)
    )
    return reply(msg, client.name, result.metrics, result.num_examples, arrays)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the client's own held-out data."""
    _cfg, client = build_client(msg, context)
    metrics = client.evaluate(received_arrays(msg))
    num_eval = getattr(client, "num_eval_examples", None) or len(client.dataset.query)
    return reply(msg, client.name, metrics, num_eval)
