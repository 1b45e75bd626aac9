"""The task registry: the only place that switches on ``cfg.task`` (``reid`` or ``classification``).

A :class:`Task` says how to check and count the clients' data, how to build the seeded network
and the initial global arrays, and which client wrapper answers a message. The server side
(run loop, strategies) and the ClientApp both look tasks up here; no other module compares
task names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import RecordDict
from torch import nn

from fedreid.batching import epoch_batches
from fedreid.config import Config, resolve_path
from fedreid.errors import ConfigError, DatasetError
from fedreid.protocol import EVAL_LOCAL_KEY, ROUND_KEY, RUN_KEY, Upload

log = logging.getLogger("fedreid")

ClientFactory = Callable[
    [Config, Upload, bool, Mapping[str, Any], Mapping[str, Any], RecordDict | None], Any
]
"""``(cfg, upload, cdw, server_config, node_config, context_state) -> client wrapper``."""


@dataclass(frozen=True)
class Task:
    """Everything that differs between the ReID and the classification task."""

    name: str
    prepare: Callable[[Config], int]
    """Check (and make, for synthetic data) every client's data; returns the client count."""
    num_clients: Callable[[Config], int]
    """How many clients the scenario has (cheap: no image is read)."""
    resolve_paths: Callable[[Config], None]
    """Make the config's data paths absolute (clients may run in another directory)."""
    seeded_model: Callable[[Config], nn.Module]
    """The network every party rebuilds from ``cfg.seed`` (shared part only, for ReID)."""
    input_shape: Callable[[Config], tuple[int, int, int]]
    """One training sample's shape (SynFlow scores at the training resolution)."""
    make_client: ClientFactory
    ensure_data: Callable[[Config], None] = lambda cfg: None
    """Server side of ``flwr run``: make data the server may generate (the synthetic set)."""
    client_sizes: Callable[[Config], dict[str, int]] = lambda cfg: {}
    """Training-set size per client name, where the server can read the scenario ({} if not:
    a deployment's data lives on the SuperNodes); pins what clients may report."""
    batch_size: Callable[[Config], int] = lambda cfg: cfg.data.batch_size
    """The clients' training batch size (what :func:`local_steps` divides by)."""
    drop_last: Callable[[Config], bool] = lambda cfg: False
    """Whether the clients' loaders drop an incomplete last batch (:mod:`fedreid.batching`)."""


def local_steps(task: Task, cfg: Config, num_examples: int) -> int:
    """The optimizer steps a client with ``num_examples`` training examples takes in a round.

    Mirrors the clients' loaders (:func:`fedreid.batching.epoch_batches`) and
    :func:`fedreid.training.train_epochs` (``train.max_batches`` per epoch, ``local_epochs``
    epochs). The server computes it from the pinned example count, so a client cannot talk
    its way into a larger allowance for the norm screen.
    """
    bs = max(task.batch_size(cfg), 1)
    batches = epoch_batches(num_examples, bs, task.drop_last(cfg))
    if cfg.train.max_batches > 0:
        batches = min(batches, cfg.train.max_batches)
    return max(batches, 1) * max(cfg.train.local_epochs, 1)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def initial_state(task: Task, cfg: Config) -> dict[str, torch.Tensor]:
    """The initial global arrays of a dense strategy: the seeded network's state."""
    return _state(task.seeded_model(cfg))


def _state_scope(server_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run, round and phase a client's state is read and written for."""
    return {
        "run_id": str(server_config.get(RUN_KEY, "")),
        "server_round": int(server_config.get(ROUND_KEY, 0)),
        "phase": "train" if EVAL_LOCAL_KEY in server_config else "evaluate",
    }


# -- ReID --------------------------------------------------------------------
def _reid_prepare(cfg: Config) -> int:
    from fedreid.data.scenarios import client_specs, public_images, synthetic_root
    from fedreid.data.types import unmatched_queries, verify_images

    if cfg.data.source == "synthetic":
        synthetic_root(cfg.data)
    specs = client_specs(cfg.data)
    for spec in specs:
        ds = spec.load()
        if not ds.train or not ds.query or not ds.gallery:
            raise DatasetError(f"client {spec.name}: empty train, query or gallery split")
        verify_images(ds)
        missing = unmatched_queries(ds)
        if missing == len(ds.query):
            raise DatasetError(
                f"client {spec.name}: none of its {missing} queries has a gallery image of the "
                "same identity from another camera; it cannot be evaluated"
            )
        if missing:
            log.warning(
                "client %s: %d of %d queries have no gallery match from another camera and "
                "are skipped by the evaluation protocol",
                spec.name,
                missing,
                len(ds.query),
            )
    if cfg.strategy.kd:
        public_images(cfg.data)
    return len(specs)


def _reid_ensure(cfg: Config) -> None:
    if cfg.data.source == "synthetic":
        from fedreid.data.scenarios import synthetic_root

        synthetic_root(cfg.data)


def _reid_sizes(cfg: Config) -> dict[str, int]:
    from fedreid.data.scenarios import client_specs

    try:
        return {spec.name: len(spec.load().train) for spec in client_specs(cfg.data)}
    except Exception:  # the data is on the SuperNodes, not here
        return {}


def _reid_num_clients(cfg: Config) -> int:
    from fedreid.data.scenarios import client_specs

    return len(client_specs(cfg.data))


def _reid_paths(cfg: Config) -> None:
    cfg.data.root = str(resolve_path(cfg.data.root))


def _reid_model(cfg: Config) -> nn.Module:
    from fedreid.models.builder import seeded_reid_model

    return seeded_reid_model(cfg)


def _reid_client(
    cfg: Config,
    upload: Upload,
    cdw: bool,
    server_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    context_state: RecordDict | None,
) -> Any:
    from fedreid.clients.node import load_spec, resolve_node
    from fedreid.clients.state import ClientState

    spec, state_dir = resolve_node(dict(node_config), cfg)
    dataset = load_spec(spec)
    state = ClientState(context_state, state_dir, **_state_scope(server_config))
    if upload == Upload.SIGNS:
        from fedreid.clients.hidenseek_client import HideNseekClient

        return HideNseekClient(cfg, spec.name, dataset, state, dict(server_config))
    from fedreid.clients.reid_client import ReIDClient

    return ReIDClient(cfg, spec.name, dataset, state, upload=upload, cdw=cdw)


# -- classification --------------------------------------------------------------------
def _cls_prepare(cfg: Config) -> int:
    from fedreid.data.classification import prepare

    return prepare(cfg)


def _cls_paths(cfg: Config) -> None:
    cfg.classification.data_dir = str(resolve_path(cfg.classification.data_dir))


def _cls_model(cfg: Config) -> nn.Module:
    from fedreid.models.builder import classification_model

    return classification_model(cfg)


def _cls_shape(cfg: Config) -> tuple[int, int, int]:
    from fedreid.data.classification import dataset_info

    info = dataset_info(cfg.classification.dataset)
    return info.channels, info.image_size, info.image_size


def _cls_client(
    cfg: Config,
    upload: Upload,
    cdw: bool,
    server_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    context_state: RecordDict | None,
) -> Any:
    from fedreid.clients.classification_client import build_classification_client

    if cdw:
        raise ConfigError("cosine-distance weighting needs ReID logits: task=classification")
    return build_classification_client(
        cfg, upload, node_config, context_state, server_config, _state_scope(server_config)
    )


TASKS: dict[str, Task] = {
    "reid": Task(
        name="reid",
        prepare=_reid_prepare,
        num_clients=_reid_num_clients,
        resolve_paths=_reid_paths,
        seeded_model=_reid_model,
        input_shape=lambda cfg: (3, cfg.data.height, cfg.data.width),
        make_client=_reid_client,
        ensure_data=_reid_ensure,
        client_sizes=_reid_sizes,
        drop_last=lambda cfg: cfg.data.drop_last,
    ),
    "classification": Task(
        name="classification",
        prepare=_cls_prepare,
        num_clients=lambda cfg: cfg.classification.num_clients,
        resolve_paths=_cls_paths,
        seeded_model=_cls_model,
        input_shape=_cls_shape,
        make_client=_cls_client,
        batch_size=lambda cfg: cfg.classification.batch_size,
    ),
}


def get_task(cfg: Config) -> Task:
    """The registered task of ``cfg.task`` (one line naming the choices if unknown)."""
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise ConfigError(f"task={cfg.task!r} is not one of {', '.join(TASKS)}") from None
