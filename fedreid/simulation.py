"""Run a composed config on Flower's simulation engine (what ``run_simulation.py`` calls).

Everything that can be wrong with the data or the config fails here, before Ray starts, with
one :class:`~fedreid.errors.FedReIDError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from fedreid.config import Config
from fedreid.errors import FedReIDError
from fedreid.run import STOP
from fedreid.strategies.registry import check_composition
from fedreid.tasks import get_task

log = logging.getLogger("fedreid")


class RunFailed(FedReIDError):
    """The run ended without finishing (results.json says why)."""


class Interrupted(FedReIDError):
    """Ctrl-C stopped the run (exit status 130)."""


class ClientsFailed(FedReIDError):
    """The run finished, but some client never contributed (exit status 3)."""


def prepare(cfg: Config) -> int:
    """Fail fast before Flower starts: make/check the data, count the clients, check the
    strategy composition; returns the number of clients."""
    num_clients = get_task(cfg).prepare(cfg)
    check_composition(cfg, num_clients)
    return num_clients


def simulate(cfg: Config) -> str:
    """Run the configured job in-process on Flower's simulation engine; returns the run folder.

    Raises:
        Interrupted: Ctrl-C (status ``interrupted``; resume with ``resume=true``).
        RunFailed: the run ended ``failed`` (the reason is in results.json) or never finished.
        ClientsFailed: it finished, but a client never sent a valid training reply.
    """
    num_clients = prepare(cfg)  # before the heavy imports: bad data fails fast
    from fedreid.server_app import prepare_output_dir

    prepare_output_dir(cfg)  # fails before Flower starts if it would overwrite a run
    cfg.overwrite = True  # the folder is ours now (run_server checks again)
    with stop_on_sigint():
        _run(cfg, num_clients)
    check_outcome(cfg.output_dir)
    return cfg.output_dir


def check_outcome(output_dir: str) -> None:
    """Raise unless the run in ``output_dir`` finished with every client contributing.

    Raises:
        Interrupted, RunFailed, ClientsFailed: as :func:`simulate` documents.
    """
    results = Path(output_dir) / "results.json"
    payload = json.loads(results.read_text()) if results.exists() else {}
    status = payload.get("status")
    if status == "interrupted":
        raise Interrupted(f"{payload.get('reason', 'interrupted')} ({results})")
    if status == "failed":
        raise RunFailed(f"the run failed: {payload.get('reason', '?')} ({results})")
    if status != "finished":
        raise RunFailed(f"the simulation did not finish; see the log above ({results})")
    if payload.get("failed_clients"):
        failed = ", ".join(payload["failed_clients"])
        raise ClientsFailed(f"client(s) {failed} sent no valid training reply ({results})")


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[None]:
    """While a simulation runs, the first Ctrl-C asks the run loop to stop (the run ends
    ``interrupted`` within seconds, its last round checkpointed); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt
        log.warning("Ctrl-C: stopping after the current wait (press again to abort)")
        STOP.set()

    STOP.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.clear()


def _run(cfg: Config, num_clients: int) -> None:
    """Flower's simulation engine with our ServerApp and ClientApp (the ServerApp's own
    exceptions are in results.json; they are not raised twice here)."""
    from flwr.simulation import run_simulation

    from fedreid.client_app import app as client_app
    from fedreid.server_app import make_server_app

    backend = {
        "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": cfg.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False},
    }
    try:
        run_simulation(
            server_app=make_server_app(cfg),
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=backend,
        )
    except Exception as err:  # Flower re-raises the ServerApp's exception once it stopped
        cause = err if isinstance(err, FedReIDError) else err.__cause__
        if not isinstance(cause, FedReIDError):  # ours are already logged and in results.json
            log.error("the simulation ended with %s: %s", type(err).__name__, err)


def simulate_many(cfgs: list[Config]) -> dict[str, str]:
    """Run several configs one after another inside ONE Flower simulation (one Ray start).

    For benchmarks and tests that compare many settings on the same clients: every config
    must have the same client count; each run gets its own output folder, run id and client
    state. Returns ``{output_dir: "finished" | "<error type>: <message>"}``; a failing run
    does not stop the others.
    """
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedreid.client_app import app as client_app
    from fedreid.server_app import run_server

    counts = {prepare(cfg) for cfg in cfgs}
    if len(counts) != 1:
        raise FedReIDError(f"simulate_many needs one client count, got {sorted(counts)}")
    # output folders are checked by run_server, run by run: a later config may resume from
    # the checkpoint an earlier one writes
    outcome: dict[str, str] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: object, context: object) -> None:
        for cfg in cfgs:
            try:
                run_server(grid, cfg)  # type: ignore[arg-type]
                check_outcome(cfg.output_dir)
                outcome[cfg.output_dir] = "finished"
            except Exception as err:  # recorded; the next config still runs
                outcome[cfg.output_dir] = f"{type(err).__name__}: {err}"

    first = cfgs[0]
    with stop_on_sigint():
        run_simulation(
            server_app=server,
            client_app=client_app,
            num_supernodes=counts.pop(),
            backend_config={
                "client_resources": {"num_cpus": first.client_cpus, "num_gpus": first.client_gpus},
                "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False},
            },
        )
    return outcome
