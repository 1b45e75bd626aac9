"""Flower ServerApp: builds the strategy from the config and runs it on the Grid.

``flwr run`` composes the config from ``conf/`` with the ``overrides`` string of
``[tool.flwr.app.config]``; ``run_simulation.py`` passes its hydra config to
:func:`make_server_app` instead. Both end in :func:`run_server`.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedreid.config import Config, compose, resolve_path
from fedreid.data.scenarios import client_specs
from fedreid.errors import ConfigError
from fedreid.models.reid import ReIDNet, shared_state
from fedreid.results import RunRecorder

log = logging.getLogger("fedreid")


def build_strategy(cfg: Config, recorder: RunRecorder, num_clients: int):
    """The strategy class for ``cfg.strategy.name`` (flags compose the FedPav variants)."""
    name = cfg.strategy.name
    if name == "local":
        from fedreid.strategies.fedpav import LocalTraining

        return LocalTraining(cfg, recorder, num_clients)
    if name.startswith("fedpav") or name == "fedavg":  # no local head: FedPav == FedAvg
        from fedreid.strategies.fedpav import FedPav

        return FedPav(cfg, recorder, num_clients)
    if name == "hidenseek":
        from fedreid.strategies.hidenseek import HideNseek

        return HideNseek(cfg, recorder, num_clients)
    raise ConfigError(f"unknown strategy {name!r}")


def initial_model(cfg: Config) -> ReIDNet:
    """The seeded global model (shared part only: no classifier)."""
    torch.manual_seed(cfg.seed)
    m = cfg.model
    return ReIDNet(
        0,
        arch=m.arch,
        pretrained=m.pretrained,
        last_stride=m.last_stride,
        embed_dim=m.embed_dim,
        dropout=m.dropout,
    )


def prepare_output_dir(cfg: Config) -> Path:
    """Create the run folder; refuse to overwrite a previous run unless asked (or resuming)."""
    out = resolve_path(cfg.output_dir or f"outputs/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    results = out / "results.json"
    if results.exists() and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"output folder {out} already holds a run; pass resume=true, "
            "overwrite=true or another output_dir"
        )
    if cfg.resume and not (out / "checkpoint.pt").exists():
        raise ConfigError(f"resume=true but no checkpoint in {out}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    return out


def run_server(grid: Grid, cfg: Config) -> Path:
    """Run the configured strategy to the end; returns the output folder."""
    out = prepare_output_dir(cfg)
    cfg.data.root = str(resolve_path(cfg.data.root))  # clients may run elsewhere: absolute
    if cfg.state_dir:
        cfg.state_dir = str(resolve_path(cfg.state_dir))
    if cfg.task == "classification":
        cfg.classification.data_dir = str(resolve_path(cfg.classification.data_dir))
        num_clients = cfg.classification.num_clients
    else:
        num_clients = len(client_specs(cfg.data))
    recorder = RunRecorder(out, cfg.to_dict(), cfg.wandb.__dict__)
    strategy = build_strategy(cfg, recorder, num_clients)
    if hasattr(strategy, "initial_arrays"):
        initial = strategy.initial_arrays()
    elif cfg.task == "classification":
        from fedreid.clients.classification_client import initial_state

        initial = ArrayRecord(torch_state_dict=initial_state(cfg))
    else:
        initial = ArrayRecord(torch_state_dict=shared_state(initial_model(cfg)))
    result = strategy.start(grid, initial, num_rounds=cfg.num_rounds, timeout=cfg.round_timeout_s)
    final = result.arrays.to_torch_state_dict() if result.arrays is not None else None
    recorder.finish(final)
    log.info("run finished: %s", out / "results.json")
    return out


def make_server_app(cfg: Config) -> ServerApp:
    """A ServerApp bound to an already composed config (the simulation entry point)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg)

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run`` entry: compose conf/ with the run config's ``overrides`` and run."""
    if not log.handlers:  # `flwr log` shows progress, ETA and per-round ranks
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    rc = context.run_config
    cfg = compose(shlex.split(str(rc.get("overrides", ""))))
    if rc.get("output-dir"):
        cfg.output_dir = str(rc["output-dir"])
    if cfg.task == "reid" and cfg.data.source == "synthetic":
        from fedreid.data.scenarios import synthetic_root

        synthetic_root(cfg.data)
    run_server(grid, cfg)
