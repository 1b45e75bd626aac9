"""Tests of ``python -m fedreid.report``: hand-made results.json files with known numbers.

Two configs (strategy ``fedpav`` and ``local``) x three seeds, two clients, evaluations at
rounds 2 and 4 (rounds 1 and 3 train only). All values are multiples of 1/8, so most means
and standard deviations are exact in binary floating point.

fedpav, final (round 4), per seed 0, 1, 2:
    rank-1  c1 .75 .875 1   c2 .5 .625 .75   -> run means .625 .75 .875  -> 0.75 ± 0.125
    mAP     c1 .5 .625 .75  c2 .25 .375 .5   -> run means .375 .5 .625   -> 0.5 ± 0.125
  round 2 rank-1 c1 1 .25 .25, c2 .75 .25 .25 -> run means .875 .25 .25, so the best round is
    round 2 for seed 0 and round 4 otherwise: best .875 .75 .875 -> mean 2.5/3, sd sqrt(3)/24
    (deviations 1/24, -1/12, 1/24: sum of squares 6/576, over n - 1 = 2 -> 3/576).
  round 2 mAP .125 everywhere, below the finals: best mAP = final mAP.
local, final: rank-1 c1 .5 .75 .75, c2 .5 .5 .75 -> .5 .625 .75 -> 0.625 ± 0.125
              mAP both clients .5 .25 .75          -> 0.5 ± 0.25
  round 2 .125 everywhere: best = final.
Paired fedpav - local: final rank-1 .125 .125 .125 -> 0.125 ± 0 (|mean| > sd);
                       final mAP -.125 .25 -.125   -> 0 ± sqrt(3)/8 (not).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedreid.report import (
    ReportError,
    build_report,
    main,
    mean_sd,
    paired_differences,
)

SEEDS = (0, 1, 2)
FINAL = {  # (strategy, client) -> per-seed final (rank1, mAP)
    ("fedpav", "c1"): [(0.75, 0.5), (0.875, 0.625), (1.0, 0.75)],
    ("fedpav", "c2"): [(0.5, 0.25), (0.625, 0.375), (0.75, 0.5)],
    ("local", "c1"): [(0.5, 0.5), (0.75, 0.25), (0.75, 0.75)],
    ("local", "c2"): [(0.5, 0.5), (0.5, 0.25), (0.75, 0.75)],
}
ROUND2_RANK1 = {("fedpav", "c1"): [1.0, 0.25, 0.25], ("fedpav", "c2"): [0.75, 0.25, 0.25]}


def config(strategy: str, seed: int, out: Path) -> dict:
    """A results.json config: differs between seeds only in the ignored keys."""
    return {
        "data": {"source": "synthetic", "seed": 0, "datasets": []},
        "strategy": {"name": strategy, "density": 1.0},
        "wandb": {"enabled": False, "mode": f"offline-{seed}"},
        "num_rounds": 4,
        "seed": seed,
        "output_dir": str(out),
        "state_dir": str(out / "clients"),
        "resume": seed == 1,
        "overwrite": seed == 2,
    }


def payload(strategy: str, seed: int, out: Path, status: str = "finished") -> dict:
    rounds = []
    for rnd in (1, 2, 3, 4):
        clients = {}
        for client in ("c1", "c2"):
            m = {"train_loss": 1.0 / rnd, "num_examples": 10.0}
            if rnd == 2:
                rank1 = ROUND2_RANK1.get((strategy, client), [0.125] * 3)[seed]
                m.update(rank1=rank1, mAP=0.125, rank5=1.0)
            if rnd == 4:
                rank1, mAP = FINAL[(strategy, client)][seed]
                m.update(rank1=rank1, mAP=mAP, rank5=1.0, local_rank1=0.0)
            clients[client] = m
        rounds.append({"round": rnd, "elapsed_s": float(rnd), "clients": clients, "server": {}})
    return {"status": status, "config": config(strategy, seed, out), "rounds": rounds}


def write(path: Path, data: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(data))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A hydra multirun folder (0..5), a nested single run folder, a running run, noise."""
    root = tmp_path / "multirun"
    job = 0
    for strategy in ("local", "fedpav"):
        for seed in SEEDS:
            run_dir = root / "2026-01-01" / "12-00-00" / str(job)
            if (strategy, seed) == ("fedpav", 2):  # one run elsewhere, deeper
                run_dir = tmp_path / "multirun" / "extra" / "nested" / "run"
            write(run_dir, payload(strategy, seed, run_dir))
            job += 1
    running = root / "2026-01-01" / "12-00-00" / "9"
    write(running, payload("fedpav", 0, running, status="running"))
    (root / "2026-01-01" / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_mean_sd() -> None:
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, sd = mean_sd([0.25])
    assert mean == 0.25 and math.isnan(sd)
    assert all(math.isnan(x) for x in mean_sd([]))


def test_grouping_and_figures(sweep: Path) -> None:
    report = build_report([sweep])
    assert report.left_out == {"running": 1}
    assert report.differing_keys == ["strategy.name"]
    assert [g.label for g in report.groups] == ["strategy.name=fedpav", "strategy.name=local"]
    fedpav, local = report.groups
    assert fedpav.seeds == [0, 1, 2] and local.seeds == [0, 1, 2]
    assert "seed" not in fedpav.config and "wandb" not in fedpav.config
    assert fedpav.config["data.seed"] == 0  # nested keys named seed are part of the setup

    fp = {k: [run.summary[k] for run in fedpav.runs] for k in fedpav.runs[0].summary}
    assert fp["final_rank1"] == [0.625, 0.75, 0.875]
    assert fp["best_rank1"] == [0.875, 0.75, 0.875]
    assert fp["final_mAP"] == fp["best_mAP"] == [0.375, 0.5, 0.625]
    assert fedpav.runs[0].rounds == [2, 4]

    assert mean_sd(fp["final_rank1"]) == (0.75, 0.125)
    assert mean_sd(fp["final_mAP"]) == (0.5, 0.125)
    best_mean, best_sd = mean_sd(fp["best_rank1"])
    assert best_mean == pytest.approx(2.5 / 3, abs=1e-12)
    assert best_sd == pytest.approx(math.sqrt(3) / 24, abs=1e-12)
    lc = [run.summary for run in local.runs]
    assert mean_sd(s["final_rank1"] for s in lc) == (0.625, 0.125)
    assert mean_sd(s["final_mAP"] for s in lc) == (0.5, 0.25)
    assert [s["best_rank1"] for s in lc] == [s["final_rank1"] for s in lc]


def test_paired_differences(sweep: Path) -> None:
    fedpav, local = build_report([sweep]).groups
    rank1 = paired_differences(fedpav, local, "final_rank1")
    assert rank1.seeds == [0, 1, 2]
    assert rank1.differences == [0.125, 0.125, 0.125]
    assert (rank1.mean, rank1.sd, rank1.exceeds_sd) == (0.125, 0.0, True)
    mAP = paired_differences(fedpav, local, "final_mAP")
    assert mAP.differences == [-0.125, 0.25, -0.125]
    assert mAP.mean == 0.0 and mAP.sd == pytest.approx(math.sqrt(3) / 8)
    assert mAP.exceeds_sd is False
    with pytest.raises(ReportError, match="unknown metric"):
        paired_differences(fedpav, local, "rank5")


def test_paired_differences_use_common_seeds(tmp_path: Path) -> None:
    """Seeds in one group only are left out; a repeated seed counts with its mean."""
    for strategy, seed, name in [
        ("fedpav", 0, "a0"),
        ("fedpav", 1, "a1"),
        ("fedpav", 1, "a1bis"),
        ("fedpav", 2, "a2"),
        ("local", 1, "b1"),
        ("local", 2, "b2"),
        ("local", 7, "b7"),
    ]:
        data = payload(strategy, min(seed, 2), tmp_path / name)
        data["config"]["seed"] = seed
        write(tmp_path / name, data)
    fedpav, local = build_report([tmp_path]).groups
    assert fedpav.seeds == [0, 1, 1, 2] and local.seeds == [1, 2, 7]
    diff = paired_differences(fedpav, local, "final_rank1")
    assert diff.seeds == [1, 2] and diff.differences == [0.125, 0.125]
    solo = build_report([tmp_path / "a0"]).groups[0]
    with pytest.raises(ReportError, match="share no seed"):
        paired_differences(solo, local)


def test_cli_writes_tables_json_and_plot(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 finished run(s) in 2 group(s); left out 1 run(s) (running: 1)" in printed
    assert "75.00 ± 12.50" in printed

    data = json.loads((out / "report.json").read_text())
    assert data["num_runs"] == 6 and data["left_out"] == {"running": 1}
    fedpav, local = data["groups"]
    assert fedpav["description"] == {"strategy.name": "fedpav"}
    assert fedpav["num_runs"] == 3 and fedpav["seeds"] == [0, 1, 2]
    assert fedpav["final_rank1"] == {"mean": 0.75, "sd": 0.125}
    assert fedpav["best_rank1"]["mean"] == pytest.approx(2.5 / 3)
    assert fedpav["best_rank1"]["sd"] == pytest.approx(math.sqrt(3) / 24)
    assert local["final_mAP"] == {"mean": 0.5, "sd": 0.25}
    # Per client: fedpav c1 final rank-1 .75 .875 1 -> 0.875 ± 0.125.
    assert fedpav["clients"]["c1"]["rank1"] == {"mean": 0.875, "sd": 0.125, "n": 3}
    assert local["clients"]["c2"]["mAP"] == {"mean": 0.5, "sd": 0.25, "n": 3}
    # Convergence: round 2 run means .875 .25 .25 and round 4 .625 .75 .875.
    curve = fedpav["convergence_rank1"]
    assert curve["rounds"] == [2, 4] and curve["n"] == [3, 3]
    assert curve["mean"] == pytest.approx([1.375 / 3, 0.75])
    assert curve["sd"][1] == 0.125

    md = (out / "report.md").read_text()
    assert "| strategy.name=fedpav | 3 | 0, 1, 2 | 75.00 ± 12.50 | 83.33 ± 7.22 |" in md
    assert "unweighted mean over its clients" in md
    assert "| c1 | 87.50 ± 12.50 |" in md
    png = out / "convergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_single_run_folder_and_default_out(tmp_path: Path) -> None:
    run = write(tmp_path / "one", payload("fedpav", 1, tmp_path / "one"))
    assert main([str(run)]) == 0
    data = json.loads((run / "report.json").read_text())
    (group,) = data["groups"]
    assert group["label"] == "all runs" and group["final_rank1"] == {"mean": 0.75, "sd": None}
    assert (run / "report.md").exists() and (run / "convergence.png").exists()


def test_reads_what_the_run_recorder_writes(tmp_path: Path) -> None:
    """The schema as written by fedreid.results.RunRecorder (no hand-made JSON)."""
    from fedreid.results import RunRecorder

    for seed, (r1, r2) in enumerate([(0.5, 0.75), (0.25, 0.5)]):
        out = tmp_path / f"run{seed}"
        recorder = RunRecorder(out, {"strategy": {"name": "fedpav"}, "seed": seed})
        recorder.client(1, "a", {"train_loss": 1.0})
        recorder.end_round(1)
        recorder.client(2, "a", {"rank1": r1, "mAP": r1 / 2})
        recorder.client(2, "b", {"rank1": r2, "mAP": r2 / 2})
        recorder.end_round(2)
        if seed == 0:
            recorder.finish(None)
    report = build_report([tmp_path])
    assert report.left_out == {"running": 1}
    (group,) = report.groups
    assert group.seeds == [0] and group.runs[0].summary["final_rank1"] == 0.625


def test_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such folder") and err.count("\n") == 1

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no results.json under")

    write(tmp_path / "running", payload("local", 0, tmp_path / "running", status="running"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    bad = payload("local", 0, tmp_path / "bad")
    bad["rounds"][1]["clients"]["c1"]["rank1"] = "n/a"  # finished, but malformed
    write(tmp_path / "bad", bad)
    args = [str(tmp_path / name) for name in ("running", "broken", "bad")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: no finished run with rank-1 evaluations among 3 results.json "
        "(running: 1, unreadable: 2)\n"
    )


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedreid.report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such folder: {tmp_path / 'nope'}"]
