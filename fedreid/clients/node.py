"""Which client a node is, from Flower's ``node_config`` plus the shipped run config.

Simulation: ``partition-id`` indexes :func:`work_order` of
:func:`fedreid.data.scenarios.client_specs` (largest training set first).
Deployment: the SuperNode names its data, e.g.
``--node-config "dataset='market1501' data-root='/data/reid' state-dir='/var/fedreid'"``
(optional ``name``, ``source`` = synthetic|real).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fedreid.config import Config, resolve_path
from fedreid.data.scenarios import ClientSpec, client_specs
from fedreid.data.types import ReIDDataset
from fedreid.errors import ConfigError


def resolve_node(node_config: dict[str, Any], cfg: Config) -> tuple[ClientSpec, Path | None]:
    """This node's data spec and state directory."""
    if "dataset" in node_config:
        dataset = str(node_config["dataset"])
        root = node_config.get("data-root")
        if not root:
            raise ConfigError(f"node_config names dataset {dataset!r} but no data-root")
        spec = ClientSpec(
            name=str(node_config.get("name", dataset)),
            dataset=dataset,
            root=str(resolve_path(str(root))),
            source=str(node_config.get("source", cfg.data.source)),
            seed=cfg.data.seed,
        )
        state = node_config.get("state-dir")
        state_dir = resolve_path(str(state)) / spec.name if state else None
        return spec, state_dir
    if "partition-id" in node_config:
        specs = work_order(client_specs(cfg.data))
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(specs):
            raise ConfigError(f"partition-id {pid} but the scenario has {len(specs)} clients")
        spec = specs[pid]
        base = cfg.state_dir or (str(Path(cfg.output_dir) / "clients") if cfg.output_dir else "")
        return spec, (resolve_path(base) / spec.name if base else None)
    raise ConfigError(
        "node_config has neither 'dataset' (deployment) nor 'partition-id' (simulation)"
    )


def work_order(specs: list[ClientSpec]) -> list[ClientSpec]:
    """The clients by training-set size, largest first (ties keep the scenario's order).

    Flower's simulation engine queues a round's messages in partition-id order and its
    workers take them first come, first served; starting the longest jobs first (the LPT
    schedule) keeps a worker from idling while the largest client trains alone at the end
    of the round. Results do not depend on it: replies are aggregated by client name.
    """
    return sorted(specs, key=lambda spec: -len(load_spec(spec).train))


@lru_cache(maxsize=16)
def load_spec(spec: ClientSpec) -> ReIDDataset:
    """Read a client's dataset once per process (simulation actors serve many rounds)."""
    return spec.load()
