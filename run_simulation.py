"""Run fedreid on Flower's simulation engine, configured by hydra (``conf/``).

Examples:
    python run_simulation.py                                  # the main job (FedPav, 9 clients)
    python run_simulation.py data=tiny num_rounds=2           # a smoke run
    python run_simulation.py -m strategy=fedpav,fedpav_cdw    # a sweep
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedreid.config import Config, from_container
from fedreid.errors import FedReIDError

log = logging.getLogger("fedreid")


def prepare(cfg: Config) -> int:
    """Fail fast before Flower starts: make/check the data, count clients, load each once."""
    if cfg.task == "classification":
        from fedreid.data.classification import prepare as prepare_classification

        return prepare_classification(cfg)
    from fedreid.data.scenarios import client_specs, public_images, synthetic_root
    from fedreid.data.types import verify_images

    if cfg.data.source == "synthetic":
        synthetic_root(cfg.data)
    specs = client_specs(cfg.data)
    for spec in specs:
        ds = spec.load()
        if not ds.train or not ds.query or not ds.gallery:
            raise FedReIDError(f"client {spec.name}: empty train, query or gallery split")
        verify_images(ds)
    if cfg.strategy.kd:
        public_images(cfg.data)
    return len(specs)


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
    if not results.exists() or json.loads(results.read_text()).get("status") != "finished":
        raise FedReIDError(f"the simulation did not finish; see the log above ({results})")
    return cfg.output_dir


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(raw: DictConfig) -> None:
    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    try:
        cfg = from_container(container)
        if not cfg.output_dir:
            cfg.output_dir = HydraConfig.get().runtime.output_dir
        out = simulate(cfg)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {out}/results.json")


if __name__ == "__main__":
    main()
