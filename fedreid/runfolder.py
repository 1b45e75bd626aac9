"""A finished run folder as a usable model: its config, its global model, its clients' models.

Everything the ``fedreid`` command (:mod:`fedreid.cli`) does after training starts here:

* the config is the one the run recorded (``results.json`` ``config``, rebuilt with
  :func:`fedreid.config.from_container`), so the architecture, the image size, the
  preprocessing, the evaluation batch size, the mixed-precision setting and the data are the
  run's own;
* the weights are ``global_model.pt``: the shared part (backbone + bottleneck) for FedPav and
  FedAvg, loaded into :func:`fedreid.models.builder.reid_model` with
  :func:`fedreid.models.reid.load_shared`; the packed ``signs`` and ``mask`` for HideNseek,
  rebuilt on the seeded network with :func:`fedreid.clients.hidenseek_client.global_model`.

Which model answers for a client mirrors what its own evaluation used during the run:

* ``strategy.bn_policy=average`` (FedPav, FedAvg, any aggregator): the global model, for every
  client and every other dataset;
* ``strategy.bn_policy=local`` and HideNseek: the global weights with *that client's*
  BatchNorm running statistics (read from its state folder, ``<run>/clients/<name>/<run id>``
  in simulation); the global model alone has no trained statistics, so other datasets need a
  client's (``--client NAME``);
* ``strategy=local``: the client's own model (nothing was shared).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedreid.config import Config, from_container, resolve_path
from fedreid.errors import ConfigError, FedReIDError
from fedreid.models.reid import ReIDNet, is_bn_buffer

log = logging.getLogger("fedreid")

RESULTS = "results.json"
GLOBAL_MODEL = "global_model.pt"


class RunFolderError(FedReIDError, ValueError):
    """Not a usable run folder: missing, no results.json / global_model.pt, unreadable."""


@dataclass
class RunFolder:
    """A run folder opened for use (see the module docstring).

    Attributes:
        path: the run folder (absolute).
        payload: its ``results.json``.
        cfg: the run's config.
    """

    path: Path
    payload: dict[str, Any]
    cfg: Config
    _global: ReIDNet | None = field(default=None, repr=False)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Open ``path``; one-line :class:`RunFolderError` / :class:`ConfigError` otherwise."""
        folder = resolve_path(str(path))
        if not folder.is_dir():
            raise RunFolderError(f"run folder not found: {folder}")
        results = folder / RESULTS
        if not results.is_file():
            raise RunFolderError(f"{folder} is not a run folder: no {RESULTS}")
        try:
            payload = json.loads(results.read_text())
        except (OSError, ValueError) as err:
            raise RunFolderError(f"cannot read {results} ({type(err).__name__})") from err
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise RunFolderError(f"{results} holds no run config")
        if not (folder / GLOBAL_MODEL).is_file():
            status = payload.get("status", "?")
            raise RunFolderError(
                f"{folder} has no {GLOBAL_MODEL} (run status: {status}; the model is written "
                "when a run finishes)"
            )
        cfg = from_container(payload["config"])
        if cfg.task != "reid":
            raise ConfigError(f"{folder}: task={cfg.task}; fedreid eval/extract/... need ReID runs")
        if payload.get("status") != "finished":
            log.warning("%s: run status is %r, not finished", folder, payload.get("status"))
        return cls(path=folder, payload=payload, cfg=cfg)

    # -- facts --------------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        return self.cfg.strategy.name

    @property
    def per_client(self) -> bool:
        """True when a client's model differs from the global one (own BN statistics, or no
        global model at all)."""
        return self.strategy in ("local", "hidenseek") or self.cfg.strategy.bn_policy == "local"

    @property
    def final(self) -> dict[str, dict[str, float]]:
        """``results.json`` ``final``: each client's last figures."""
        return dict(self.payload.get("final") or {})

    @property
    def holdout(self) -> list[str]:
        """Domains the run kept out of training (``data.holdout``)."""
        return [str(n) for n in self.cfg.data.holdout]

    def describe(self) -> str:
        m, d = self.cfg.model, self.cfg.data
        return (
            f"{self.strategy} ({m.arch}, {d.height}x{d.width}, bn_policy="
            f"{self.cfg.strategy.bn_policy}, amp={self.cfg.train.amp})"
        )

    # -- models -------------------------------------------------------------------------------
    def global_state(self) -> dict[str, torch.Tensor]:
        """``global_model.pt`` (loaded with ``weights_only=True``: no code runs)."""
        path = self.path / GLOBAL_MODEL
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RunFolderError(f"cannot load {path} ({type(err).__name__})") from err
        if not isinstance(state, dict):
            raise RunFolderError(f"{path} is not a state dict")
        return state

    def global_model(self) -> ReIDNet:
        """The global model, eval mode, on the CPU (a fresh copy each call after the first
        build is cheap: the built model is cached and deep-copied)."""
        import copy

        if self._global is None:
            self._global = self._build_global()
        return copy.deepcopy(self._global)

    def _build_global(self) -> ReIDNet:
        if self.strategy == "local":
            raise ConfigError(
                "strategy=local shares nothing: there is no global model; pass --client NAME "
                "to use one client's own model"
            )
        state = self.global_state()
        if self.strategy == "hidenseek":
            from fedreid.clients.hidenseek_client import global_model
            from fedreid.models.builder import seeded_reid_model
            from fedreid.protocol import MASK

            # the packed mask and one global array: packed signs (or FedPM's probabilities)
            others = [k for k in state if k != MASK]
            if MASK not in state or len(others) != 1:
                raise RunFolderError(
                    f"{self.path / GLOBAL_MODEL} is not a HideNseek model (keys {sorted(state)})"
                )
            seeded = seeded_reid_model(self.cfg)
            model = global_model(self.cfg, seeded, state[others[0]].numpy(), state[MASK].numpy())
        else:
            from fedreid.models.builder import reid_model
            from fedreid.models.reid import load_shared

            torch.manual_seed(self.cfg.seed)
            model = reid_model(self.cfg.model, 0)
            load_shared(model, state)
        return model.eval()

    def state_dir(self, client: str) -> Path:
        """Where a simulated client kept its state (``state_dir`` or ``<run>/clients``)."""
        base = resolve_path(self.cfg.state_dir) if self.cfg.state_dir else self.path / "clients"
        folder = base / client
        run_id = self._run_id(folder)
        return folder / run_id if run_id else folder

    def _run_id(self, folder: Path) -> str:
        ckpt = self.path / "checkpoint.pt"
        if ckpt.is_file():
            try:
                run_id = torch.load(ckpt, map_location="cpu", weights_only=True).get("run_id")
                if run_id and (folder / str(run_id)).is_dir():
                    return str(run_id)
            except Exception:  # a damaged checkpoint: fall back to the folder listing
                pass
        subs = [p for p in folder.glob("*") if p.is_dir()] if folder.is_dir() else []
        return subs[0].name if len(subs) == 1 else ""

    def client_model(self, client: str) -> ReIDNet:
        """The model ``client`` was evaluated with in the run (see the module docstring)."""
        if not self.per_client:
            return self.global_model()
        from fedreid.clients.state import ClientState

        folder = self.state_dir(client)
        state = ClientState(None, folder)
        if self.strategy == "hidenseek":
            from fedreid.clients.hidenseek_client import BN_STATE

            key = BN_STATE
        else:
            key = "local_model"
        saved = state.load(key)
        if saved is None:
            raise RunFolderError(
                f"client {client}: no saved {key!r} under {folder} (a deployed client keeps "
                "its state on its own node)"
            )
        if self.strategy == "local":
            from fedreid.models.builder import reid_model
            from fedreid.models.reid import load_shared

            model = reid_model(self.cfg.model, 0)
            load_shared(model, saved)
            return model.eval()
        model = self.global_model()
        model.load_state_dict({k: v for k, v in saved.items() if is_bn_buffer(k)}, strict=False)
        return model.eval()

    def model(self, client: str | None = None) -> ReIDNet:
        """The global model, or ``client``'s; a clear error when the run needs a client."""
        if client:
            return self.client_model(client)
        if self.per_client:
            what = (
                "strategy=local shares nothing"
                if self.strategy == "local"
                else "this run keeps BatchNorm statistics on each client "
                f"({'hidenseek' if self.strategy == 'hidenseek' else 'bn_policy=local'})"
            )
            raise ConfigError(f"{what}: pass --client NAME to use that client's model")
        return self.global_model()
