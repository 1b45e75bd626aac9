"""The ``fedreid`` command on a real (tiny) run: eval reproduces the run's own figures, held-out
domains are reported as unseen, re-ranking, feature extraction, export parity, visrank, report,
and one ``error:`` line with exit status 2 on bad input.

One 2-round FedPav simulation on the tiny preset (32x16 images, one batch per client) with
``data.holdout=[ilids]`` serves every test of the module.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedreid import cli
from fedreid.config import compose
from fedreid.inference import features, place
from fedreid.runfolder import RunFolder

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
SMALL = [
    "data.height=32",
    "data.width=16",
    "train.max_batches=1",
    "eval_every=1",
    "model.arch=resnet_mini",  # 0.3 M parameters: the same path, a fraction of the time
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedreid.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0, progress=False)


PER_CLIENT = {  # runs whose clients keep their own BatchNorm statistics
    "fedpav_bn_local": ("num_rounds=1", "strategy.bn_policy=local"),
    "hidenseek": ("num_rounds=1", "strategy=hidenseek", "strategy.synflow_iterations=1"),
}


@pytest.fixture(scope="module")
def runs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every run these tests read, trained in ONE Flower simulation (one Ray start): FedPav for
    2 rounds with ilids held out, and the per-client-statistics runs (same clients)."""
    from fedreid.simulation import simulate_many

    base = tmp_path_factory.mktemp("runs")
    settings = {"fedpav": ("num_rounds=2",), **PER_CLIENT}
    cfgs = [
        compose(
            ["data=tiny", f"data.root={tiny_root}", f"output_dir={base / name}", *SMALL]
            + ["data.holdout=[ilids]", *overrides]
        )
        for name, overrides in settings.items()
    ]
    outcome = simulate_many(cfgs)
    assert set(outcome.values()) == {"finished"}, outcome
    return {name: base / name for name in settings}


@pytest.fixture(scope="module")
def run_dir(runs: dict[str, Path]) -> Path:
    return runs["fedpav"]


def _eval(run: Path, *args: str, name: str = "run") -> dict:
    """Run ``fedreid eval`` and read the JSON it wrote (``eval/<name>.json``)."""
    assert cli.main(["eval", str(run), "--no-progress", *args]) == 0
    return json.loads((run / "eval" / f"{name}.json").read_text())


def test_eval_reproduces_the_runs_final_figures(run_dir: Path, capsys) -> None:
    final = json.loads((run_dir / "results.json").read_text())["final"]
    assert set(final) == {"market1501", "cuhk03"}  # ilids held out of training
    rows = _eval(run_dir)["datasets"]
    for client, figures in final.items():
        assert rows[client]["role"] == "client"
        for key in METRICS:  # exactly, not approximately
            assert rows[client][key] == figures[key], (client, key)
    assert rows["ilids"]["role"] == "unseen"
    assert all(0.0 <= rows["ilids"][k] <= 1.0 for k in METRICS)
    table = capsys.readouterr().out
    assert "| ilids | unseen |" in table and "| market1501 | client |" in table


def test_eval_named_datasets_and_rerank(run_dir: Path) -> None:
    payload = _eval(run_dir, "--datasets", "ilids,cuhk03", "--rerank", name="ilids+cuhk03_rerank")
    rows = payload["datasets"]
    assert list(rows) == ["ilids", "cuhk03"]
    assert rows["ilids"]["role"] == "unseen" and rows["cuhk03"]["role"] == "client"
    assert payload["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    for row in rows.values():
        assert row["rerank_s"] >= 0 and all(0.0 <= row[k] <= 1.0 for k in METRICS)


def test_extract_any_folder(run_dir: Path, tiny_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    sources = sorted((tiny_root / "ilids" / "query").glob("*.jpg"))[:3]
    (folder / "sub").mkdir(parents=True)
    Image.open(sources[0]).save(folder / "b.png")
    Image.open(sources[1]).save(folder / "sub" / "a.jpg")
    Image.open(sources[2]).save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "feats.npz"
    assert cli.main(["extract", str(run_dir), str(folder), "--out", str(out), "--no-progress"]) == 0
    data = np.load(out)
    assert data["names"].tolist() == ["a.jpg", "b.png", "sub/a.jpg"]
    feats = data["features"]
    assert feats.shape == (3, 512) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # the same features eval computes for the same image
    run = RunFolder.open(run_dir)
    model = place(run.model(), run.cfg, torch.device("cpu"))
    ref, _, _ = features(model, [(str(folder / "a.jpg"), 0, 0)], run.cfg, torch.device("cpu"))
    np.testing.assert_allclose(feats[0], ref[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(fmt: str, run_dir: Path, tiny_root: Path, tmp_path: Path) -> None:
    from fedreid.data.transforms import build_transforms, read_image
    from fedreid.export import run_exported

    out = tmp_path / f"model.{fmt}"
    assert cli.main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["input"]["shape"] == ["N", 3, 32, 16]
    assert sidecar["output"]["l2_normalised"] and sidecar["output"]["flip_averaged"]
    # parity on real images against the features eval computes (flip-averaged, normalised),
    # in float32 as exported (eval itself follows the run's train.amp, bf16 where native)
    run = RunFolder.open(run_dir)
    items = [(str(p), 0, 0) for p in sorted((tiny_root / "market1501" / "query").glob("*"))[:5]]
    cfg = copy.deepcopy(run.cfg)
    cfg.train.amp = "off"
    model = place(run.model(), cfg, torch.device("cpu"))
    ref, _, _ = features(model, items, cfg, torch.device("cpu"))
    transform = build_transforms(32, 16, train=False)
    images = torch.stack([transform(read_image(p)) for p, _, _ in items]).numpy()
    got = run_exported(out, fmt, images)
    assert got.shape == (5, 512)
    assert float(np.abs(got - ref.numpy()).max()) <= 1e-4


def test_visrank_writes_bordered_grids(run_dir: Path, tmp_path: Path) -> None:
    from fedreid.visrank import BORDER, GAP, GREEN, GREY, LABEL_H, RED

    out = tmp_path / "vis"
    args = ["visrank", str(run_dir), "--dataset", "market1501", "--out", str(out)]
    assert cli.main([*args, "--topk", "4", "--num-queries", "3", "--no-progress"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    img = Image.open(pngs[0]).convert("RGB")
    cell_w = 64 + 2 * BORDER  # 128 pixels high at 2:1
    assert img.width == 5 * cell_w + 4 * GAP + 2 * GAP
    assert img.getpixel((1, LABEL_H + 1)) == GREY
    for k in range(4):
        x = cell_w + 3 * GAP + k * (cell_w + GAP) + 1
        assert img.getpixel((x, LABEL_H + 1)) in (GREEN, RED)


def test_report_subcommand(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists()


def test_help_of_every_subcommand(capsys) -> None:
    for args in ([], ["eval"], ["extract"], ["export"], ["visrank"]):
        with pytest.raises(SystemExit) as stop:
            cli.main([*args, "--help"])
        assert stop.value.code == 0
    assert "eval" in capsys.readouterr().out


def _one_error_line(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_one_line_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert "not found" in _one_error_line(capsys, ["eval", str(tmp_path / "missing")])
    assert "no results.json" in _one_error_line(capsys, ["eval", str(tmp_path)])
    half = tmp_path / "half"
    half.mkdir()
    (half / "results.json").write_text((run_dir / "results.json").read_text())
    assert "global_model.pt" in _one_error_line(
        capsys, ["extract", str(half), str(tmp_path), "--out", "x"]
    )
    line = _one_error_line(capsys, ["eval", str(run_dir), "--datasets", "nowhere"])
    assert "unknown dataset 'nowhere'" in line
    line = _one_error_line(capsys, ["eval", str(run_dir), "--data-root", str(tmp_path / "none")])
    assert "data root not found" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _one_error_line(
        capsys, ["extract", str(run_dir), str(empty), "--out", "x"]
    )
    assert "no results.json" in _one_error_line(capsys, ["report", str(tmp_path / "empty")])
    for argv in (["export", str(run_dir), "--format", "tflite", "--out", "x"], ["report"]):
        with pytest.raises(SystemExit) as stop:  # argparse: one line too
            cli.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.parametrize("name", list(PER_CLIENT))
def test_per_client_statistics_still_exact(
    name: str, runs: dict[str, Path], tiny_root: Path, tmp_path: Path
) -> None:
    """Runs whose clients keep their own BatchNorm statistics: each client is evaluated with
    the global weights and its statistics from the run's client state, exactly as in the run."""
    run = runs[name]
    final = json.loads((run / "results.json").read_text())["final"]
    rows = _eval(run)["datasets"]
    assert set(rows) == set(final)
    for client, figures in final.items():
        assert rows[client]["model"] == "client"
        assert [rows[client][k] for k in METRICS] == [figures[k] for k in METRICS]
    out = tmp_path / "f.npz"
    argv = ["extract", str(run), str(tiny_root / "ilids" / "query"), "--out", str(out)]
    assert cli.main(argv) == 2 and not out.exists()  # no global BN statistics: --client NAME
    assert cli.main([*argv, "--client", "cuhk03", "--no-progress"]) == 0 and out.exists()
