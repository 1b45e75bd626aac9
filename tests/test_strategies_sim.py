"""Each FedPav variant and local training, two rounds end to end on Flower's simulation engine.

All four run inside one Flower simulation (one Ray start), as small as they can be:
the tiny synthetic preset, one batch per client per round, one distillation batch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedreid import compare
from fedreid.config import compose
from fedreid.errors import ConfigError


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedreid.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0, progress=False)


STRATEGIES = ["fedpav_cdw", "fedpav_kd", "fedpav_cdw_kd", "local"]


def strategy_cfg(strategy: str, root: Path, out: Path):
    return compose(
        [
            "data=tiny",
            "model.arch=resnet_mini",
            f"data.root={root}",
            "num_rounds=2",
            "eval_every=1",
            "data.height=64",
            "data.width=32",
            "train.max_batches=1",
            "strategy.kd_every=1",
            "strategy.kd_max_batches=1",
            "strategy.cdw_batches=1",
            f"strategy={strategy}",
            f"output_dir={out}",
        ]
    )


@pytest.fixture(scope="module")
def strategy_runs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four methods, two rounds each, in one Flower simulation (one Ray start)."""
    from fedreid.simulation import simulate_many

    base = tmp_path_factory.mktemp("strategies")
    cfgs = [strategy_cfg(s, tiny_root, base / s) for s in STRATEGIES]
    outcome = simulate_many([*cfgs, uncapped_cfg(tiny_root, base / "uncapped")])
    assert set(outcome.values()) == {"finished"}, outcome
    return base


def uncapped_cfg(root: Path, out: Path):
    """The README's smoke run: FedPav on the tiny preset at the default batch size and image
    size, every batch of every epoch (ilids: 34 images = 32 + 2)."""
    return compose(
        ["data=tiny", "model.arch=resnet_mini", f"data.root={root}", "num_rounds=2"]
        + [f"output_dir={out}"]
    )


def test_smoke_run_excludes_no_honest_client(strategy_runs: Path) -> None:
    """Regression: the last batch of 2 images gave ilids a per-step update 25-29x the round's
    median, and the norm screen excluded it every round (exit 3). Dropping incomplete last
    batches (``data.drop_last``, the default) keeps every honest client in."""
    results = json.loads((strategy_runs / "uncapped" / "results.json").read_text())
    assert results["status"] == "finished"
    assert results["config"]["train"]["max_batches"] == 0  # really uncapped
    for r in results["rounds"]:
        assert "excluded" not in r["server"], r["server"]
        assert set(r["clients"]) == {"market1501", "cuhk03", "ilids"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_rounds(strategy: str, strategy_runs: Path, tiny_root: Path) -> None:
    out = strategy_runs / strategy
    cfg = strategy_cfg(strategy, tiny_root, out)

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished"
    rounds = {r["round"]: r for r in results["rounds"]}
    assert sorted(rounds) == [1, 2]
    clients = {"market1501", "cuhk03", "ilids"}
    for r in rounds.values():
        assert set(r["clients"]) == clients
        for metrics in r["clients"].values():
            assert 0.0 <= metrics["rank1"] <= 1.0 and 0.0 <= metrics["mAP"] <= 1.0
            assert metrics["train_loss"] > 0
    assert set(results["final"]) == clients

    kd = cfg.strategy.kd
    cdw = cfg.strategy.cdw
    for r in rounds.values():
        server = r["server"]
        assert ("kd_time_s" in server) == kd, server
        if kd:
            assert server["kd_time_s"] > 0 and server["kd_teachers"] == 3
            assert server["kd_images"] == cfg.strategy.kd_batch_size
        for metrics in r["clients"].values():
            assert ("cdw_distance" in metrics) == cdw
            if strategy != "local":
                assert "agg_weight" in metrics
                # eval_local=last (the default recipe): the local models ranked at round 2 only
                assert ("local_rank1" in metrics) == (r["round"] == 2), r["round"]
        if strategy != "local":
            weights = [m["agg_weight"] for m in r["clients"].values()]
            assert sum(weights) == pytest.approx(1.0)
            if cdw:  # the weights are the distances over their sum, not the sample counts
                d = {n: m["cdw_distance"] for n, m in r["clients"].items()}
                for n, m in r["clients"].items():
                    assert m["agg_weight"] == pytest.approx(d[n] / sum(d.values()))
    if strategy == "local":
        assert all(
            m["bytes_up_arrays"] == 0 for r in rounds.values() for m in r["clients"].values()
        )


# -- the comparison report, on hand-made results ---------------------------------------------------
def fake_run(
    out: Path,
    method: str,
    rank1: dict[str, list[float]],
    local: bool = False,
    kd_time: float | None = None,
) -> None:
    """A results.json with the given rank-1 per client per round (mAP = rank-1 / 2)."""
    rounds = []
    for i in range(len(next(iter(rank1.values())))):
        clients = {}
        for n, (name, values) in enumerate(rank1.items()):
            m = {"rank1": values[i], "mAP": values[i] / 2, "num_examples": 100 - n}
            if local:
                m.update(local_rank1=values[i] + 0.1, local_mAP=values[i] / 2 + 0.1)
            clients[name] = m
        server = {"kd_time_s": kd_time} if kd_time is not None else {}
        rounds.append(
            {"round": i + 1, "elapsed_s": 60.0 * (i + 1), "clients": clients, "server": server}
        )
    (out / method).mkdir(parents=True)
    (out / method / "results.json").write_text(
        json.dumps({"status": "finished", "config": {}, "rounds": rounds})
    )


def test_compare_report_only(tmp_path: Path) -> None:
    fake_run(tmp_path, "local", {"big": [0.5, 0.6, 0.7], "small": [0.1, 0.2, 0.3]})
    fake_run(tmp_path, "fedpav", {"big": [0.4, 0.6, 0.5], "small": [0.3, 0.5, 0.4]}, local=True)
    fake_run(
        tmp_path, "fedpav_kd", {"big": [0.4, 0.5, 0.6], "small": [0.3, 0.4, 0.5]}, kd_time=12.0
    )
    assert compare.main(["--report-only", str(tmp_path)]) == 0
    for name in ("table.md", "table.csv", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows, cols, grid = compare.table(compare.load_runs(tmp_path))
    assert rows == ["big", "small", "mean"]  # largest training set first
    assert [c.label for c in cols] == ["Local training", "FedPav", "FedPav Local", "FedPav+KD"]
    cell = grid[("big", "FedPav")]
    assert (cell.final_rank1, cell.best_rank1, cell.final_mAP, cell.best_mAP) == (
        0.5,
        0.6,
        0.25,
        0.3,
    )
    assert grid[("small", "FedPav Local")].best_rank1 == pytest.approx(0.6)
    assert grid[("mean", "Local training")].final_rank1 == pytest.approx(0.5)
    fl, drops = compare.fluctuation(compare.load_runs(tmp_path)["fedpav"])
    assert fl == pytest.approx(100 * (0.2 + 0.1 + 0.2 + 0.1) / 4) and drops == 2
    md = (tmp_path / "table.md").read_text()
    assert "| big | 70.0 (70.0) | 50.0 (60.0) | 60.0 (70.0) | 60.0 (60.0) |" in md
    assert "12.0 s" in md
    assert not math.isnan(compare.run_facts(compare.load_runs(tmp_path)["fedpav_kd"])["kd_mean_s"])


def test_compare_rejects_per_run_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="per run"):
        compare.check_overrides(["data=tiny", "strategy=fedpav"])
    assert compare.main(["--out", str(tmp_path), "--methods", "nope"]) == 2
    assert compare.main(["--report-only", str(tmp_path / "empty")]) == 2


def test_compare_warns_when_runs_used_different_data(tmp_path: Path) -> None:
    fake_run(tmp_path, "local", {"a": [0.5]})
    fake_run(tmp_path, "fedpav", {"a": [0.4]})
    (tmp_path / "comparison.json").write_text(
        json.dumps(
            {
                "methods": ["local", "fedpav"],
                "overrides": [],
                "data": {"local": "aaaa", "fedpav": "bbbb"},
            }
        )
    )
    compare.report(tmp_path)
    assert "Warning: the runs used different data" in (tmp_path / "table.md").read_text()
    assert compare.data_fingerprint(str(tmp_path / "nowhere")) == ""


def test_compare_plans_reuse_resume_or_fresh(tmp_path: Path) -> None:
    cfg = compose(["data=tiny", "num_rounds=2", "strategy=fedpav"])
    run_dir = tmp_path / "fedpav"
    assert compare.plan_run(run_dir, cfg, rerun=False) == "fresh"  # nothing there
    fake_run(tmp_path, "fedpav", {"a": [0.1, 0.2]})
    payload = json.loads((run_dir / "results.json").read_text())
    payload["config"] = {**cfg.to_dict(), "output_dir": str(run_dir), "overwrite": True}
    (run_dir / "results.json").write_text(json.dumps(payload))
    assert compare.plan_run(run_dir, cfg, rerun=False) == "reuse"
    assert compare.plan_run(run_dir, cfg, rerun=True) == "fresh"
    cfg.num_rounds = 4  # extend: continue from the checkpoint
    assert compare.plan_run(run_dir, cfg, rerun=False) == "fresh"  # ... if there is one
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert compare.plan_run(run_dir, cfg, rerun=False) == "resume"
    cfg.seed = 1  # another setup: refused, nothing saved is replaced unless asked
    with pytest.raises(ConfigError, match=r"another setup \(seed: 0 -> 1\); pass --rerun"):
        compare.plan_run(run_dir, cfg, rerun=False)
    assert compare.plan_run(run_dir, cfg, rerun=True) == "fresh"


def test_compare_refuses_to_replace_a_run_of_another_setup(tmp_path: Path, capsys) -> None:
    """A finished run made with another recipe stays as it is: one error line, exit 2, and
    nothing in the folder changes (not even comparison.json)."""
    fake_run(tmp_path, "fedpav", {"a": [0.1, 0.2]})
    results = tmp_path / "fedpav" / "results.json"
    payload = json.loads(results.read_text())
    payload["config"] = compose(["data=tiny", "seed=5"]).to_dict()
    results.write_text(json.dumps(payload))
    before = results.read_text()
    code = compare.main(["--out", str(tmp_path), "--methods", "fedpav", "data=tiny"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "seed: 5 -> 0" in err[0]
    assert results.read_text() == before
    assert not (tmp_path / "comparison.json").exists()
