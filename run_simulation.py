"""Run fedreid on Flower's simulation engine, configured by hydra (``fedreid/conf/``).

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

from fedreid.config import compose, from_container
from fedreid.errors import FedReIDError


@hydra.main(config_path="fedreid/conf", config_name="config", version_base=None)
def main(raw: DictConfig) -> None:
    # imported here: a bad command line fails in about a second, before torch and Flower load
    from fedreid.simulation import ClientsFailed, Interrupted, simulate

    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    try:
        cfg = from_container(container)
        if not cfg.output_dir:
            cfg.output_dir = HydraConfig.get().runtime.output_dir
        out = simulate(cfg)
    except Interrupted as err:  # Ctrl-C: status interrupted, resumable
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(130)
    except ClientsFailed as err:  # finished, but a site never contributed
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # an unwritable output folder, a full disk
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(2)
    print(f"results: {out}/results.json")


def check_overrides(argv: list[str]) -> None:
    """Compose the command line's overrides once before hydra does, so an unknown key or a
    malformed value ends with one ``error:`` line and exit code 2 (hydra's own message is
    several lines and exit 1). Sweeps (``-m``) and hydra's own flags are left to hydra."""
    if any(a.startswith("-") for a in argv):
        return
    try:
        compose(argv)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
