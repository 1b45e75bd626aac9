"""The pretrained regime: ``python -m fedreid.pretrain`` writes a backbone file, ``model.init``
starts every model from it, and a bad file stops ``run_simulation.py`` at start.

One tiny pretrain (a small pool of the pretraining preset's own people, 1 epoch, 2 batches)
feeds every test; the simulation is one round on two tiny clients.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedreid.config import compose
from fedreid.errors import ConfigError
from fedreid.models.reid import is_bn_buffer

ROOT = Path(__file__).resolve().parent.parent
RUN_SIMULATION = ROOT / "run_simulation.py"
SIZE = ["data.height=32", "data.width=16"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clients' data: the tiny synthetic preset."""
    from fedreid.data.synthetic import generate

    base = tmp_path_factory.mktemp("pretrain_clients")
    return generate(base / "tiny", preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pool drawn like the pretraining preset (same stream, same exclusions)."""
    from fedreid.data import synthetic as syn

    spec = dataclasses.replace(
        syn.POOL.domains[0], num_cams=3, train_ids=12, train_imgs_per_id=(2, 3), test_ids=3
    )
    small = dataclasses.replace(syn.POOL, name="pretrain-test", domains=(spec,))
    base = tmp_path_factory.mktemp("pretrain_pool")
    return syn.generate(base / "pool", preset=small, seed=0, progress=False)


@pytest.fixture(scope="module")
def init_file(pool_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m fedreid.pretrain`` (in-process): 32x16, 1 epoch of 2 batches of 8."""
    from fedreid.pretrain import main

    out = tmp_path_factory.mktemp("pretrain_out") / "sub" / "r18.pt"
    argv = ["--data-root", str(pool_root), "--height", "32", "--width", "16", "--epochs", "1"]
    argv += ["--batch-size", "8", "--max-batches", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out


def _file_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload["state_dict"], payload["meta"]


def test_pretrain_file_is_backbone_only_and_safe_to_load(init_file: Path) -> None:
    state, meta = _file_state(init_file)
    assert any(k.startswith("backbone.") for k in state)
    assert not any(k.startswith("classifier.") for k in state), "no classifier head"
    assert meta["arch"] == "resnet18" and (meta["height"], meta["width"]) == (32, 16)
    assert meta["epochs"] == 1 and meta["wall_time_s"] > 0 and meta["images"] > 0
    assert "pretrain" in meta["pool"]


def test_pool_never_holds_a_client_identity() -> None:
    """The pool's people avoid every client preset's people drawn with the same seed."""
    from fedreid.data import synthetic as syn

    pool = syn.build_domain(syn.POOL.domains[0], 0, syn.POOL)
    keys = syn.client_identity_keys(0)
    assert keys and not {i.key() for i in pool.identities.values()} & keys
    with pytest.raises(ConfigError, match="pretraining pool"):
        compose(["data.preset=pretrain"])


def _simulate_cfg(tiny_root: Path, out: Path, init: Path, *extra: str):
    return compose(
        [
            "data=tiny",
            f"data.root={tiny_root}",
            "data.datasets=[market1501,cuhk03]",
            *SIZE,
            "data.batch_size=8",
            "train.max_batches=1",
            # float32: this checks where the weights start; under bf16 one market1501 update
            # came back NaN once in CI (excluded by the server), see the closing note
            "train.amp=off",
            "num_rounds=1",
            f"model.init={init}",
            f"output_dir={out}",
            *extra,
        ]
    )


def _backbone_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone parameters (no BatchNorm running statistics, which training moves)."""
    return {k: v for k, v in state.items() if k.startswith("backbone.") and not is_bn_buffer(k)}


def test_simulation_starts_from_the_file(init_file: Path, tiny_root: Path, tmp_path: Path) -> None:
    """The server's initial arrays are the file's; after one round with a backbone learning
    rate of 1e-30 (no visible step) the global backbone still is, unlike a random start."""
    from fedreid.models.builder import seeded_reid_model
    from fedreid.simulation import simulate
    from fedreid.strategies.registry import build_strategy

    state, _ = _file_state(init_file)
    cfg = _simulate_cfg(tiny_root, tmp_path / "run", init_file, "train.lr_backbone=1e-30")
    _, initial = build_strategy(cfg, 2)
    arrays = initial()[0].to_torch_state_dict()
    for key, value in state.items():
        assert torch.equal(arrays[key], value), key

    random_start = seeded_reid_model(
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=None))
    )
    out = Path(simulate(cfg))
    payload = json.loads((out / "results.json").read_text())
    assert payload["status"] == "finished"
    assert payload["config"]["model"]["init"] == str(init_file)
    final = torch.load(out / "global_model.pt", map_location="cpu", weights_only=True)
    expected = _backbone_weights(state)
    random = random_start.state_dict()
    assert expected
    for key, value in expected.items():
        got = final[key].float()
        assert torch.allclose(got, value, rtol=0, atol=1e-6), key
    far = max(float((random[k] - v).abs().max()) for k, v in expected.items())
    assert far > 1e-2, "a random start would have been told apart"


def test_clients_without_state_start_from_the_file(init_file: Path, tiny_root: Path) -> None:
    """A local-only client's first model and a bn_policy=local client's BatchNorm statistics
    (never sent by the server) come from the file, not from a random start."""
    from fedreid.clients.reid_client import ReIDClient
    from fedreid.clients.state import ClientState
    from fedreid.data import load_market
    from fedreid.models.reid import shared_state
    from fedreid.protocol import Upload

    state, _ = _file_state(init_file)
    ds = load_market(tiny_root / "cuhk03")
    cfg = _simulate_cfg(tiny_root, tiny_root / "unused", init_file, "strategy=local")
    local = ReIDClient(cfg, "cuhk03", ds, ClientState(None, None), upload=Upload.NONE)
    model = local.build_model(None).state_dict()
    for key, value in state.items():
        assert torch.equal(model[key], value), key

    cfg = _simulate_cfg(tiny_root, tiny_root / "unused", init_file, "strategy.bn_policy=local")
    client = ReIDClient(cfg, "cuhk03", ds, ClientState(None, None))
    torch.manual_seed(1)
    sent = {k: v for k, v in shared_state(local.build_model(None)).items() if not is_bn_buffer(k)}
    sent = {k: v + 1.0 for k, v in sent.items()}  # the server's (other) weights
    model = client.build_model(sent).state_dict()
    stats = [k for k in state if is_bn_buffer(k) and not k.endswith("num_batches_tracked")]
    assert stats
    for key in stats:
        assert torch.equal(model[key], state[key]), key
    assert torch.equal(model["backbone.0.weight"], sent["backbone.0.weight"])


def test_torchvision_state_dict_is_accepted(tmp_path: Path) -> None:
    """A plain torchvision ResNet state dict (e.g. ImageNet weights) maps onto the backbone."""
    from torchvision.models import resnet18

    from fedreid.models.builder import seeded_reid_model

    torch.manual_seed(3)
    tv = resnet18(weights=None).state_dict()
    path = tmp_path / "tv.pth"
    torch.save(tv, path)
    cfg = compose([*SIZE, f"model.init={path}"])
    model = seeded_reid_model(cfg).state_dict()
    assert torch.equal(model["backbone.0.weight"], tv["conv1.weight"])
    assert torch.equal(model["backbone.7.1.bn2.running_var"], tv["layer4.1.bn2.running_var"])


def test_init_is_part_of_the_resume_fingerprint(init_file: Path, tmp_path: Path) -> None:
    from fedreid.server_app import config_changes

    cfg = compose([f"model.init={init_file}"])
    before = compose([]).to_dict()
    assert any(c.startswith("model.init:") for c in config_changes(before, cfg))
    assert not config_changes(cfg.to_dict(), cfg)


def test_pretrain_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing data folder, unwritable output, unknown arch: one ``error:`` line, exit 2."""
    from fedreid.pretrain import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = {
        "missing": ["--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "x.pt")],
        "unwritable": ["--data-root", str(tmp_path), "--out", str(blocker / "x.pt")],
        "arch": ["--arch", "resnet9", "--out", str(tmp_path / "x.pt")],
        "folder_out": ["--data-root", str(tmp_path), "--out", str(tmp_path)],
    }
    for name, argv in cases.items():
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's usage errors
            code = int(stop.code or 0)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert not (tmp_path / "x.pt").exists()


# -- bad model.init through the real entry point: exit 2, one error line -----------------------
@pytest.fixture(scope="module")
def bad_runs(init_file: Path, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every bad ``model.init`` through ``run_simulation.py``, all started at once."""
    base = tmp_path_factory.mktemp("bad_init")
    corrupt = base / "corrupt.pt"
    corrupt.write_bytes(init_file.read_bytes()[:2000])
    tiny = ["data=tiny", f"data.root={tiny_root}", "num_rounds=1", *SIZE]
    cases = {
        "missing": ([f"model.init={base / 'nope.pt'}"], ["not found", "nope.pt"]),
        "corrupt": ([f"model.init={corrupt}"], ["corrupt.pt", "not a loadable"]),
        "arch": (
            ["model=resnet50", "model.pretrained=false", f"model.init={init_file}"],
            ["resnet50", "made for resnet18"],
        ),
        "pretrained": (["model.pretrained=true", f"model.init={init_file}"], ["pretrained"]),
    }
    procs = {}
    for name, (args, expect) in cases.items():
        out = base / name
        argv = [sys.executable, str(RUN_SIMULATION), *tiny, *args, f"output_dir={out / 'run'}"]
        argv.append(f"hydra.run.dir={out / 'hydra'}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            argv, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs[name] = (proc, expect, out)
    results = {}
    for name, (proc, expect, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, expect, out)
    return results


@pytest.mark.parametrize("name", ["missing", "corrupt", "arch", "pretrained"])
def test_bad_init_fails_at_start(bad_runs: dict, name: str) -> None:
    code, stdout, stderr, expect, out = bad_runs[name]
    detail = f"stdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-2000:]}"
    assert code == 2, detail
    assert "Traceback" not in stderr, detail
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], detail
    for needle in expect:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert not (out / "run" / "results.json").exists()
