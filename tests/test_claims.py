"""fedreid.claims and the interval/verdict statistics, on hand-made run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedreid import claims
from fedreid.report import Interval, t_interval, verdict

CLIENTS = {"big": 300.0, "mid": 200.0, "small": 50.0}


def payload(
    seed: int,
    method: str,
    rank1: dict[str, list[float]],
    local: dict[str, list[float]] | None = None,
    status: str = "finished",
    lr: float = 0.05,
) -> dict:
    """A results.json with evaluations at rounds 1, 2, 3 (one value per round per client)."""
    rounds = []
    for i in range(3):
        clients = {}
        for name, size in CLIENTS.items():
            m = {"num_examples": size, "rank1": rank1[name][i], "mAP": rank1[name][i] / 2}
            if local:
                m["local_rank1"] = local[name][i]
            clients[name] = m
        rounds.append({"round": i + 1, "elapsed_s": 60.0 * (i + 1), "clients": clients})
    return {
        "status": status,
        "config": {"seed": seed, "strategy": {"name": method}, "lr": lr, "output_dir": "x"},
        "rounds": rounds,
    }


def write(root: Path, seed: int, method: str, data: dict) -> None:
    run = root / f"seed{seed}" / method
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(data))


def study(tmp_path: Path, shift: list[float]) -> Path:
    """local: flat curves; fedpav: the big client 'shift[seed]' points below local, with a
    zig-zag (fluctuation), local models 0.1 above its global ones."""
    root = tmp_path / "study"
    for seed, d in enumerate(shift):
        base = {"big": [0.5, 0.5, 0.5], "mid": [0.3, 0.3, 0.3], "small": [0.1, 0.1, 0.1]}
        write(root, seed, "local", payload(seed, "local", base))
        fed = {
            "big": [0.5 - d, 0.6 - d, 0.5 - d],
            "mid": [0.3, 0.4, 0.3],
            "small": [0.1, 0.2, 0.3],
        }
        loc = {k: [v + 0.1 for v in vals] for k, vals in fed.items()}
        write(root, seed, "fedpav", payload(seed, "fedpav", fed, loc))
    return root


def test_t_interval_and_verdict_by_hand() -> None:
    t = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (t.mean, t.sd, t.n) == (2.0, 1.0, 3)
    assert t.low == pytest.approx(2 - 4.30265 / math.sqrt(3), abs=1e-4)
    assert t.high == pytest.approx(2 + 4.30265 / math.sqrt(3), abs=1e-4)
    one = t_interval([5.0])
    assert math.isinf(one.low) and math.isinf(one.high) and one.n == 1
    assert verdict(Interval(1, 0.1, 3, 0.5, 1.5)) == "reproduces"
    assert verdict(Interval(1, 0.1, 3, 0.5, 1.5), "lower") == "does not"
    assert verdict(Interval(-1, 0.1, 3, -1.5, -0.5), "lower") == "reproduces"
    assert verdict(Interval(0, 1, 3, -1.0, 1.0)) == "inconclusive"
    assert verdict(one) == "inconclusive"
    with pytest.raises(ValueError):
        verdict(t, "sideways")


def test_run_figures_by_hand() -> None:
    data = payload(
        0, "fedpav", {"big": [0.2, 0.4, 0.3], "mid": [0.1, 0.1, 0.4], "small": [0.0, 0.1, 0.2]}
    )
    fig = claims.run_figures(data, target=0.2)
    assert fig.final_rank1 == pytest.approx((0.3 + 0.4 + 0.2) / 3)
    # |changes| in points: big 20, 10; mid 0, 30; small 10, 10 -> mean 80 / 6
    assert fig.fluctuation == pytest.approx(80 / 6)
    # mean per round: 0.1, 0.2, 0.3 -> first reaches 0.2 at round 2 (120 s)
    assert fig.rounds_to_target == 2 and fig.wall_to_target_s == 120.0
    assert math.isnan(fig.local_final_rank1)
    assert math.isnan(claims.run_figures(data, target=0.9).rounds_to_target)


def test_claims_over_seeds(tmp_path: Path) -> None:
    root = study(tmp_path, shift=[0.1, 0.12, 0.14])
    result = claims.analyse(claims.load_study(root), target=0.2, large_count=1)
    assert result["large_clients"] == ["big"]
    by = {(c["claim"], c["a"], c["b"]): c for c in result["claims"]}
    large = by[("(a) large clients do worse federated than alone", "fedpav", "local")]
    assert large["differences"] == pytest.approx([-10.0, -12.0, -14.0])
    assert large["mean"] == pytest.approx(-12.0) and large["sd"] == pytest.approx(2.0)
    half = 4.30265 * 2.0 / 3**0.5  # t(0.975, 2 df) * sd / sqrt(n)
    assert large["ci95"] == pytest.approx([-12.0 - half, -12.0 + half], abs=1e-3)
    assert large["verdict"] == "reproduces" and large["exceeds_sd"]
    # local training's curves are flat: FedPav's fluctuation is the whole difference
    fl = by[("(b) accuracy fluctuates across rounds", "fedpav", "local")]
    assert fl["differences"] == pytest.approx([(10 + 10 + 10 + 10 + 10 + 10) / 6] * 3)
    assert fl["sd"] == 0 and fl["verdict"] == "reproduces", "the same sign in every seed"
    lg = by[("FedPav Local above FedPav's global model", "fedpav", "fedpav")]
    assert lg["differences"] == pytest.approx([10.0, 10.0, 10.0])
    # claims needing CDW or KD runs are left out, not faked
    assert not any("KD" in c["claim"] or "CDW" in c["claim"] for c in result["claims"])
    assert result["methods"]["local"]["reached_target"] == 3
    text = claims.markdown(result, "t")
    assert "unweighted mean over clients" in text and "| reproduces |" in text
    assert "| FedPav (local models) - FedPav (global) |" in text


def test_kd_cost_is_the_summed_distillation_time(tmp_path: Path) -> None:
    root = study(tmp_path, shift=[0.1, 0.12])
    for seed in (0, 1):
        kd = payload(seed, "fedpav_kd", {"big": [0.4] * 3, "mid": [0.3] * 3, "small": [0.2] * 3})
        kd["rounds"][1]["server"] = {"kd_time_s": 30.0 + seed * 60}
        kd["rounds"][2]["server"] = {"kd_time_s": 30.0}
        write(root, seed, "fedpav_kd", kd)
    result = claims.analyse(claims.load_study(root), target=0.2, large_count=1)
    by = {c["claim"]: c for c in result["claims"]}
    cost = by["(c) cost of KD: distillation"]
    assert cost["differences"] == pytest.approx([1.0, 2.0]), "minutes: (30 + 30) s, (90 + 30) s"
    assert cost["verdict"] == "(no claim)"
    assert claims.run_figures(kd, 0.2).kd_s == 120.0, "seed 1: 90 s + 30 s"


def test_wide_spread_is_inconclusive_and_opposite_is_does_not(tmp_path: Path) -> None:
    wide = claims.analyse(claims.load_study(study(tmp_path / "w", [0.1, 0.2, 0.3])), 0.2, 1)
    assert wide["claims"][0]["mean"] == pytest.approx(-20.0)
    assert wide["claims"][0]["verdict"] == "inconclusive", "CI [-44.8, +4.8] contains 0"
    root = study(tmp_path, shift=[-0.1, -0.2, -0.15])  # FedPav above local on the big client
    result = claims.analyse(claims.load_study(root), target=0.2, large_count=1)
    large = result["claims"][0]
    assert large["mean"] == pytest.approx(15.0) and large["verdict"] == "does not"


def test_bad_studies_are_refused(tmp_path: Path) -> None:
    with pytest.raises(claims.ClaimsError, match="not a folder"):
        claims.load_study(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(claims.ClaimsError, match="no finished run"):
        claims.load_study(empty)
    mixed = tmp_path / "mixed"
    flat = {"big": [0.1] * 3, "mid": [0.1] * 3, "small": [0.1] * 3}
    write(mixed, 0, "local", payload(0, "local", flat))
    write(mixed, 1, "local", payload(1, "local", flat, lr=0.1))
    with pytest.raises(claims.ClaimsError, match="differ in more than seed and method"):
        claims.load_study(mixed)
    one = tmp_path / "one"
    write(one, 0, "local", payload(0, "local", flat))
    write(one, 0, "fedpav", payload(0, "fedpav", flat, status="interrupted"))
    assert set(claims.load_study(one)) == {"local"}, "unfinished runs are not counted"
    with pytest.raises(claims.ClaimsError, match="one seed"):
        claims.analyse(claims.load_study(one), target=0.2)


def test_cli_writes_files_or_one_error_line(tmp_path: Path, capsys) -> None:
    root = study(tmp_path, shift=[0.1, 0.12, 0.14])
    assert claims.main([str(root), "--large", "1", "--out", str(tmp_path / "o")]) == 0
    saved = json.loads((tmp_path / "o" / "claims.json").read_text())
    assert saved["claims"][0]["verdict"] == "reproduces"
    assert (tmp_path / "o" / "claims.md").read_text().startswith("# Claims")
    capsys.readouterr()
    for argv in (
        [str(tmp_path / "nope")],
        [str(root), "--target", "2"],
        [str(root), "--large", "0"],
    ):
        assert claims.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_fedreid_claims_subcommand(tmp_path: Path, capsys) -> None:
    from fedreid.cli import main as cli_main

    root = study(tmp_path, shift=[0.1, 0.12, 0.14])
    assert cli_main(["claims", str(root), "--large", "1"]) == 0
    assert (root / "claims.md").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli_main(["claims", str(root), "--bogus"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_setting_only_newer_runs_record_is_not_a_difference(tmp_path: Path) -> None:
    flat = {"big": [0.1] * 3, "mid": [0.1] * 3, "small": [0.1] * 3}
    old, new = payload(0, "local", flat), payload(1, "local", flat)
    new["config"]["eval_local"] = "every"
    write(tmp_path, 0, "local", old)
    write(tmp_path, 1, "local", new)
    assert sorted(claims.load_study(tmp_path)["local"]) == [0, 1]


def test_compare_ranks_local_models_every_evaluation(tmp_path: Path, monkeypatch) -> None:
    from fedreid import compare

    seen = []
    monkeypatch.setattr(compare, "_simulate", lambda: lambda cfg: seen.append(cfg))
    compare.run_all(tmp_path, ["data=tiny"], ["fedpav"])
    compare.run_all(tmp_path / "b", ["data=tiny", "eval_local=off"], ["fedpav"])
    assert [c.eval_local for c in seen] == ["every", "off"]
