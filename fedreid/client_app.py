"""Flower ClientApp: decodes messages, drives the plain client wrappers, encodes replies.

The head (and any other per-client tensor) never enters a reply: replies carry only the
shared arrays (or packed mask bits), ``num-examples``, metrics and the client's name.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedreid.clients.node import load_spec, resolve_node
from fedreid.clients.state import ClientState
from fedreid.config import Config
from fedreid.strategies.base import CONFIG_KEY

log = logging.getLogger("fedreid")

app = ClientApp()


def build_client(msg: Message, context: Context):
    """The run config from the message, this node's data, and the right client wrapper."""
    cfg = Config.from_json(str(msg.content["config"][CONFIG_KEY]))
    if cfg.task == "classification":
        from fedreid.clients.classification_client import build_classification_client

        client = build_classification_client(
            cfg, dict(context.node_config), context.state, dict(msg.content["config"])
        )
        return cfg, client
    spec, state_dir = resolve_node(dict(context.node_config), cfg)
    dataset = load_spec(spec)
    state = ClientState(context.state, state_dir)
    if cfg.strategy.name == "hidenseek":
        from fedreid.clients.hidenseek_client import HideNseekClient

        client = HideNseekClient(cfg, spec.name, dataset, state, dict(msg.content["config"]))
    else:
        from fedreid.clients.reid_client import ReIDClient

        client = ReIDClient(cfg, spec.name, dataset, state)
    if cfg.fault.kind or cfg.fault.schedule:
        from fedreid.clients.faulty import maybe_faulty

        client = maybe_faulty(cfg, client, int(msg.content["config"].get("server-round", 0)))
    return cfg, client


def received_arrays(msg: Message) -> dict[str, torch.Tensor] | None:
    """The shared arrays of a message; None when it carries none (``strategy=local``)."""
    record = msg.content.array_records.get("arrays")
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
        content["arrays"] = arrays
    content["metrics"] = MetricRecord(
        {**{k: float(v) for k, v in metrics.items()}, "num-examples": int(num_examples)}
    )
    content["client"] = ConfigRecord({"name": name})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on the received model; reply with the shared part only."""
    cfg, client = build_client(msg, context)
    config = msg.content["config"]
    result = client.fit(
        received_arrays(msg),
        int(config["server-round"]),
        evaluate_local=bool(config.get("evaluate-local", False)),
    )
    arrays = (
        result.arrays if hasattr(result, "arrays") else ArrayRecord(torch_state_dict=result.shared)
    )
    return reply(msg, client.name, result.metrics, result.num_examples, arrays)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank the client's own query/gallery with the received global model."""
    cfg, client = build_client(msg, context)
    metrics = client.evaluate(received_arrays(msg))
    num_eval = getattr(client, "num_eval_examples", None) or len(client.dataset.query)
    return reply(msg, client.name, metrics, num_eval)
