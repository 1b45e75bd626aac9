"""wandb tracking (offline): run name, group and tags from the config, the run's plots as images,
the final global model as an artifact."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fedreid.config import compose
from fedreid.results import RunRecorder, wandb_identity


def test_identity_from_config(tmp_path: Path) -> None:
    cfg = compose(["data=tiny", "strategy=fedpav_cdw", "data.holdout=[ilids]", "seed=3"])
    ident = wandb_identity(cfg.to_dict(), tmp_path / "12-00-00_fedpav_cdw")
    assert ident["group"] == "fedpav+cdw"  # no hydra sweep: the strategy's label
    assert ident["name"] == "fedpav+cdw-seed3-12-00-00_fedpav_cdw"
    assert {"fedpav", "cdw", "preset:tiny", "holdout:ilids", "resnet18"} <= set(ident["tags"])


def test_group_is_the_hydra_sweep(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    sweep = SimpleNamespace(mode=RunMode.MULTIRUN, sweep=SimpleNamespace(dir="multirun/d/t"))
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: sweep))
    cfg = compose(["data=tiny"])
    assert wandb_identity(cfg.to_dict(), tmp_path / "0_fedpav")["group"] == "multirun/d/t"


def test_offline_run_logs_plots_and_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # CI disables wandb; this test wants it offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    cfg = compose(["data=tiny", "wandb.enabled=true"])
    out = tmp_path / "run"
    recorder = RunRecorder(out, cfg.to_dict(), cfg.wandb.__dict__)
    recorder.client(1, "market1501", {"rank1": 0.5, "mAP": 0.4, "train_loss": 1.0})
    recorder.end_round(1)
    recorder.finish({"w": torch.zeros(3)})
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the run's name, a tag, the artifact and its file; wandb's service may still be writing
    expected = (b"fedpav-seed0-run", b"preset:tiny", b"fedreid-model-", b"global_model.pt")
    deadline = time.monotonic() + 30
    while True:
        log = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
        missing = [e for e in expected if e not in log]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing
    images = {p.name.split("_")[0] for p in runs[0].glob("files/media/images/plots/*.png")}
    assert images == {"curves", "final"}
