"""Run a composed config on Flower's simulation engine (what ``run_simulation.py`` calls).

Everything that can be wrong with the data or the config fails here, before Ray starts, with
one :class:`~fedreid.errors.FedReIDError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedreid.config import Config
from fedreid.errors import FedReIDError
from fedreid.strategies.registry import check_composition
from fedreid.tasks import get_task


class RunFailed(FedReIDError):
    """The run ended without finishing (results.json says why)."""


class ClientsFailed(FedReIDError):
    """The run finished, but some client never contributed (exit status 3)."""


def prepare(cfg: Config) -> int:
    """Fail fast before Flower starts: make/check the data, count the clients, check the
    strategy composition; returns the number of clients."""
    num_clients = get_task(cfg).prepare(cfg)
    check_composition(cfg, num_clients)
    return num_clients


def simulate(cfg: Config) -> str:
    """Run the configured job in-process on Flower's simulation engine; returns the run folder."""
    num_clients = prepare(cfg)  # before the heavy imports: bad data fails fast
    from flwr.simulation import run_simulation

    from fedreid.client_app import app as client_app
    from fedreid.server_app import make_server_app, prepare_output_dir

    prepare_output_dir(cfg)  # fails before Flower starts if it would overwrite a run
    cfg.overwrite = True  # the folder is ours now (run_server checks again)
    backend = {
        "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": cfg.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False},
    }
    run_simulation(
        server_app=make_server_app(cfg),
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config=backend,
    )
    results = Path(cfg.output_dir) / "results.json"
    payload = json.loads(results.read_text()) if results.exists() else {}
    status = payload.get("status")
    if status == "failed":
        raise RunFailed(f"the run failed: {payload.get('reason', '?')} ({results})")
    if status != "finished":
        raise RunFailed(f"the simulation did not finish; see the log above ({results})")
    if payload.get("failed_clients"):
        failed = ", ".join(payload["failed_clients"])
        raise ClientsFailed(f"client(s) {failed} sent no valid training reply ({results})")
    return cfg.output_dir
