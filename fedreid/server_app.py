"""Flower ServerApp: builds the strategy from the config and runs it on the Grid.

``flwr run`` composes the config from ``conf/`` with the ``overrides`` string of
``[tool.flwr.app.config]``; ``run_simulation.py`` passes its hydra config to
:func:`make_server_app` instead. Both end in :func:`run_server`.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedreid.config import Config, compose, resolve_path
from fedreid.errors import ConfigError, FedReIDError
from fedreid.recipe import differences
from fedreid.results import RunRecorder
from fedreid.run import LoopSettings, RunInterrupted, RunLoop
from fedreid.strategies.registry import build_strategy, label
from fedreid.tasks import get_task, local_steps

log = logging.getLogger("fedreid")


RUN_ARTEFACTS = (
    "results.json",
    "metrics.csv",
    "checkpoint.pt",
    "global_model.pt",
    "curves.png",
    "final.png",
)
"""What a run writes into its folder (``overwrite=true`` removes them, and ``clients/``)."""
RESUME_FREE_KEYS = ("resume", "resume_force", "overwrite", "output_dir", "num_rounds", "wandb")
"""Settings a resumed run may change (more rounds, another log destination)."""


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """``key: old -> new`` for every setting that differs from the checkpoint's config
    (:mod:`fedreid.recipe`'s rule: a resume may change the run length and folders)."""
    return differences(saved, cfg.to_dict(), free=RESUME_FREE_KEYS)


def check_resume(cfg: Config, out: Path) -> None:
    """A checkpoint exists, loads without running code, and was made with this config."""
    path = out / "checkpoint.pt"
    if not path.exists():
        raise ConfigError(f"resume=true but no checkpoint in {out}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["results"]["config"]
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot resume: {path} is corrupt ({reason})") from err
    changes = config_changes(saved, cfg)
    if changes and not cfg.resume_force:
        shown = "; ".join(changes[:3]) + (
            f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        )
        raise ConfigError(
            f"resume=true with a changed config ({shown}); "
            "pass resume_force=true to continue anyway"
        )
    if changes:
        log.warning("resuming with a changed config (resume_force=true): %s", "; ".join(changes))


def prepare_output_dir(cfg: Config) -> Path:
    """Create the run folder; refuse to overwrite a previous run unless asked (or resuming).

    ``overwrite=true`` removes the old run's files and client state first, so nothing of it
    is reused; ``resume=true`` checks the checkpoint and that the config did not change.
    """
    out = resolve_path(cfg.output_dir or f"outputs/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    results = out / "results.json"
    if results.exists() and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"output folder {out} already holds a run; pass resume=true, "
            "overwrite=true or another output_dir"
        )
    if cfg.resume:
        check_resume(cfg, out)
    elif cfg.overwrite and results.exists():
        for name in RUN_ARTEFACTS:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "clients", ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output folder {out} is not writable ({err.strerror})") from err
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
        eval_local=cfg.eval_local,
        round_timeout_s=cfg.round_timeout_s,
        node_wait_s=cfg.node_wait_s,
        min_replies=cfg.strategy.min_replies,
        resume=cfg.resume,
        config_json=cfg.to_json(),
        seed=cfg.seed,
        strict_metrics=cfg.trust.strict_metrics,
        norm_screen=cfg.trust.norm_screen,
        pin_examples=cfg.trust.pin_examples,
        pin_tolerance=cfg.trust.pin_tolerance,
        max_bytes=int(cfg.trust.max_message_mb * 2**20),
        on_too_few=cfg.trust.on_too_few,
        known_examples=task.client_sizes(cfg) if cfg.trust.pin_examples else {},
        local_steps=functools.partial(local_steps, task, cfg),
    )
    loop = RunLoop(strategy, grid, recorder, settings)
    try:
        final = loop.run(initial)
    except RunInterrupted as err:
        log.warning("%s", err)
        recorder.fail("interrupted", str(err))
        raise
    except FedReIDError as err:  # a failed round, a bad checkpoint: the run says so
        log.error("run failed: %s", err)
        recorder.fail("failed", str(err))
        raise
    failed = loop.failed_clients()
    if failed:
        log.error("client(s) %s sent no valid training reply in any round", ", ".join(failed))
        recorder.notes["failed_clients"] = failed
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
