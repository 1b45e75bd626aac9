"""Run fedreid on Flower's simulation engine, configured by hydra (``conf/``).

Examples:
    python run_simulation.py                                  # the main job (FedPav, 9 clients)
    python run_simulation.py data=tiny num_rounds=2           # a smoke run
    python run_simulation.py -m strategy=fedpav,fedpav_cdw    # a sweep
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedreid.config import from_container
from fedreid.errors import FedReIDError
from fedreid.simulation import simulate


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
