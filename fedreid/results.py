"""Run outputs: results.json, metrics.csv, plots, checkpoints and (optional) wandb logging.

``results.json`` carries ``"status": "running"`` until the run finishes, so a stopped run never
looks finished; every write goes to a temporary file first and is renamed into place.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CLIENT_KEYS = (
    "rank1",
    "rank5",
    "rank10",
    "mAP",
    "mINP",
    "local_rank1",
    "local_mAP",
    "train_loss",
    "num_examples",
    "bytes_up",
    "bytes_up_arrays",
    "bytes_down",
    "bytes_down_arrays",
)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def wandb_identity(config: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """wandb's run ``name``, ``group`` and ``tags`` from the run's config.

    group: the hydra sweep folder when the run is one job of a ``-m`` sweep, else the
    strategy's label (``fedpav+cdw``, ...); name: ``<label>-seed<seed>-<run folder>``; tags:
    strategy, aggregator/optimiser/DP when set, data source, preset or datasets, scenario,
    held-out domains, architecture, image size, BN policy.
    """
    s, d, m = config.get("strategy", {}), config.get("data", {}), config.get("model", {})
    try:
        from fedreid.config import from_container
        from fedreid.strategies.registry import label as strategy_label

        label = strategy_label(from_container(config))
    except Exception:  # an odd config must not stop tracking
        label = str(s.get("name", "run"))
    group = label
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            group = str(HydraConfig.get().sweep.dir)
    except Exception:  # no hydra (flwr run, tests)
        pass
    tags = [
        str(s.get("name", "")),
        *[t for t in ("cdw", "kd") if s.get(t)],
        *[
            f"{k}:{s[k]}"
            for k in ("aggregator", "server_optimizer")
            if s.get(k, "mean") not in ("mean", "none")
        ],
        f"dp:{config.get('privacy', {}).get('dp', 'none')}",
        f"bn:{s.get('bn_policy', '')}",
        f"data:{d.get('source', '')}",
        f"preset:{d.get('preset', '')}" if d.get("source") == "synthetic" else "",
        f"scenario:{d.get('scenario', '')}",
        *[f"holdout:{h}" for h in d.get("holdout", [])],
        str(m.get("arch", "")),
        f"{d.get('height')}x{d.get('width')}",
    ]
    tags = [t[:64] for t in dict.fromkeys(tags) if t and not t.endswith(":none")]
    name = f"{label}-seed{config.get('seed', 0)}-{Path(output_dir).name}"
    return {"name": name, "group": group[:128], "tags": tags}


class RunRecorder:
    """Collects per-round, per-client metrics and writes the run folder.

    Args:
        output_dir: the run folder (created).
        config: the run's config as a plain dict (stored in results.json).
        wandb_cfg: the ``wandb`` config section; logging happens only when enabled.
    """

    def __init__(
        self, output_dir: Path, config: dict[str, Any], wandb_cfg: dict[str, Any] | None = None
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[dict[str, Any]] = []
        self.server: dict[int, dict[str, float]] = {}
        self.start_time = time.time()
        self.elapsed_offset = 0.0
        self.notes: dict[str, Any] = {}  # run-level facts: failure reason, failing clients
        self._wandb = None
        if wandb_cfg and wandb_cfg.get("enabled"):
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg.get("project", "fedreid"),
                entity=wandb_cfg.get("entity") or None,
                mode=wandb_cfg.get("mode", "offline"),
                dir=str(self.output_dir),
                config=config,
                **wandb_identity(config, self.output_dir),
            )

    # -- collection -----------------------------------------------------------------------
    def _round(self, server_round: int) -> dict[str, Any]:
        for r in self.rounds:
            if r["round"] == server_round:
                return r
        entry = {"round": server_round, "elapsed_s": 0.0, "clients": {}, "server": {}}
        self.rounds.append(entry)
        return entry

    def client(self, server_round: int, name: str, metrics: dict[str, float]) -> None:
        """Merge ``metrics`` into this round's entry for client ``name``."""
        entry = self._round(server_round)["clients"].setdefault(name, {})
        entry.update({k: float(v) for k, v in metrics.items()})

    def server_metric(self, server_round: int, metrics: dict[str, float]) -> None:
        """Server-side figures of a round (distillation time, excluded replies, agreement)."""
        self._round(server_round)["server"].update(metrics)

    def elapsed(self) -> float:
        return self.elapsed_offset + time.time() - self.start_time

    def end_round(self, server_round: int) -> None:
        """Stamp the round's elapsed time, write results.json/metrics.csv, log to wandb."""
        entry = self._round(server_round)
        entry["elapsed_s"] = self.elapsed()
        self.write(status="running")
        if self._wandb is not None:
            flat = {f"{c}/{k}": v for c, m in entry["clients"].items() for k, v in m.items()}
            flat.update({f"server/{k}": v for k, v in entry["server"].items()})
            self._wandb.log(flat, step=server_round)

    # -- output ---------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, dict[str, float]]:
        """Each client's latest value of every metric."""
        final: dict[str, dict[str, float]] = {}
        for entry in sorted(self.rounds, key=lambda r: r["round"]):
            for name, metrics in entry["clients"].items():
                final.setdefault(name, {}).update(metrics)
        return final

    def payload(self, status: str) -> dict[str, Any]:
        rounds = sorted(self.rounds, key=lambda r: r["round"])
        out = {"status": status, "config": self.config, "rounds": rounds, **self.notes}
        if status == "finished":
            out["final"] = self.final_metrics()
        return out

    def write(self, status: str) -> None:
        """results.json and metrics.csv, atomically."""
        atomic_write_text(
            self.output_dir / "results.json",
            json.dumps(self.payload(status), indent=1, sort_keys=False),
        )
        keys = sorted({k for r in self.rounds for m in r["clients"].values() for k in m})
        tmp = self.output_dir / f".metrics.csv.tmp{os.getpid()}"
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["round", "elapsed_s", "client", *keys])
            for r in sorted(self.rounds, key=lambda r: r["round"]):
                for name, m in sorted(r["clients"].items()):
                    writer.writerow(
                        [r["round"], f"{r['elapsed_s']:.2f}", name, *[m.get(k, "") for k in keys]]
                    )
        os.replace(tmp, self.output_dir / "metrics.csv")

    def load(self, payload: dict[str, Any]) -> None:
        """Restore rounds from an earlier results.json (resume)."""
        self.rounds = list(payload.get("rounds", []))
        if self.rounds:
            self.elapsed_offset = max(r.get("elapsed_s", 0.0) for r in self.rounds)

    def fail(self, status: str, reason: str) -> None:
        """results.json with ``status`` (``failed`` / ``interrupted``) and the reason."""
        self.notes["reason"] = reason
        self.write(status=status)
        if self._wandb is not None:
            self._wandb.finish(exit_code=1)

    def finish(self, arrays: dict[str, torch.Tensor] | None) -> None:
        """Final checkpoint, plots and results.json with ``status: finished``."""
        if arrays is not None:
            atomic_torch_save(arrays, self.output_dir / "global_model.pt")
        try:
            from fedreid.plots import plot_run

            plot_run(self.payload("finished"), self.output_dir)
        except Exception as err:  # plots must not lose the results
            log.warning("plotting failed: %s", err)
        self.write(status="finished")
        if self._wandb is not None:
            self._wandb.summary.update(
                {f"final/{c}/{k}": v for c, m in self.final_metrics().items() for k, v in m.items()}
            )
            self._wandb_outputs()
            self._wandb.finish()

    def _wandb_outputs(self) -> None:
        """Log the run's plots as images and ``global_model.pt`` as a model artifact."""
        import wandb

        try:
            images = {
                f"plots/{p.stem}": wandb.Image(str(p))
                for p in (self.output_dir / "curves.png", self.output_dir / "final.png")
                if p.exists()
            }
            if images:
                self._wandb.log(images)
            model = self.output_dir / "global_model.pt"
            if model.exists():
                artifact = wandb.Artifact(
                    f"fedreid-model-{self._wandb.id}",
                    type="model",
                    description="the run's final global model (fedreid eval/export RUN_DIR)",
                    metadata={"config": self.config, "rounds": len(self.rounds)},
                )
                artifact.add_file(str(model))
                for extra in ("results.json",):
                    if (self.output_dir / extra).exists():
                        artifact.add_file(str(self.output_dir / extra))
                self._wandb.log_artifact(artifact, aliases=["final"])
        except Exception as err:  # tracking must not lose the run
            log.warning("wandb: logging plots / model failed: %s", err)
