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

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedreid.config import Config, compose, resolve_path
from fedreid.errors import ConfigError
from fedreid.results import RunRecorder
from fedreid.run import LoopSettings, RunLoop
from fedreid.strategies.registry import build_strategy, label
from fedreid.tasks import get_task

log = logging.getLogger("fedreid")


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
    """Run the configured strategy to the end under the run loop; returns the output folder."""
    out = prepare_output_dir(cfg)
    task = get_task(cfg)
    task.resolve_paths(cfg)  # clients may run elsewhere: absolute paths
    if cfg.state_dir:
        cfg.state_dir = str(resolve_path(cfg.state_dir))
    num_clients = task.num_clients(cfg)
    strategy, initial = build_strategy(cfg, num_clients)
    recorder = RunRecorder(out, cfg.to_dict(), cfg.wandb.__dict__)
    log.info("%s: %d clients", label(cfg), num_clients)
    settings = LoopSettings(
        num_rounds=cfg.num_rounds,
        eval_every=cfg.eval_every,
        round_timeout_s=cfg.round_timeout_s,
        min_replies=cfg.strategy.min_replies,
        resume=cfg.resume,
        config_json=cfg.to_json(),
        seed=cfg.seed,
    )
    final = RunLoop(strategy, grid, recorder, settings).run(initial)
    recorder.finish(final.to_torch_state_dict())
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
    get_task(cfg).ensure_data(cfg)
    run_server(grid, cfg)
