"""A run stopped after round 2 and resumed reaches the same round-4 state as one that never
stopped: same per-client metrics, same global model (Flower's simulation engine, tiny preset).

The stop is the end of a 2-round run; the resume is ``num_rounds=4 resume=true`` in the same
folder, which holds the round-2 checkpoint (global arrays, strategy state, RNG states, results)
and the clients' heads (``<output_dir>/clients``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch

from fedreid.config import Config, compose

pytestmark = pytest.mark.skipif(
    os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1"
)

METRICS = ("rank1", "rank5", "mAP", "mINP", "local_rank1", "local_mAP")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedreid.data.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("resume_data") / "tiny", preset="tiny", seed=0, progress=False
    )


def make_cfg(root: Path, out: Path, rounds: int, resume: bool = False) -> Config:
    """Two clients, two batches per round, evaluation at rounds 2 and 4, seed 7."""
    cfg = compose(
        [
            "data=tiny",
            "model.arch=resnet_mini",
            f"data.root={root}",
            "data.datasets=[market1501,cuhk03]",
            "data.height=64",
            "data.width=32",
            "data.batch_size=16",
            "train.max_batches=2",
            "eval_every=2",
            "seed=7",
            f"num_rounds={rounds}",
            f"output_dir={out}",
            f"resume={str(resume).lower()}",
        ]
    )
    return cfg


def newest_head(client_dir: Path) -> Path:
    """The client's head of the latest round (state is versioned per round)."""
    return max(client_dir.rglob("head@*.pt"), key=lambda p: int(p.stem.split("@")[1]))


def simulate(cfg: Config) -> dict:
    from fedreid.simulation import simulate as run

    out = Path(run(cfg))
    return json.loads((out / "results.json").read_text())


def by_round(payload: dict) -> dict[int, dict[str, dict[str, float]]]:
    return {r["round"]: r["clients"] for r in payload["rounds"]}


def test_resume_matches_uninterrupted(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = simulate(make_cfg(tiny_root, tmp_path / "full", 4))

    part_dir = tmp_path / "stopped"
    first = simulate(make_cfg(tiny_root, part_dir, 2))
    assert [r["round"] for r in first["rounds"]] == [1, 2]
    ckpt = torch.load(part_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["round"] == 2
    heads = sorted({p.parent.parent.name for p in (part_dir / "clients").rglob("head@*.pt")})
    assert heads == ["cuhk03", "market1501"], "client heads persist in the run folder"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedreid"):
        resumed = simulate(make_cfg(tiny_root, part_dir, 4, resume=True))
    messages = [r.getMessage() for r in caplog.records if r.name == "fedreid"]
    assert any("resuming after round 2" in m for m in messages), messages
    assert any("rounds 3..4" in m for m in messages), "rounds 1-2 must not run again"

    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert resumed["status"] == "finished"
    a, b = by_round(full), by_round(resumed)
    report = []
    for rnd in (1, 2, 3, 4):
        assert set(a[rnd]) == set(b[rnd]) == {"market1501", "cuhk03"}
        for client in a[rnd]:
            keys = [k for k in (*METRICS, "train_loss") if k in a[rnd][client]]
            if rnd in (2, 4):
                assert {"rank1", "mAP"} <= set(keys), "evaluation at rounds 2 and 4"
            for key in keys:
                x, y = a[rnd][client][key], b[rnd][client].get(key)
                assert y is not None, f"round {rnd} {client}: {key} missing after resume"
                report.append((rnd, client, key, x, y))
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (
                    f"round {rnd} {client} {key}: uninterrupted {x} vs resumed {y}"
                )

    g_full = torch.load(tmp_path / "full" / "global_model.pt", map_location="cpu")
    g_res = torch.load(part_dir / "global_model.pt", map_location="cpu")
    assert set(g_full) == set(g_res)
    worst = 0.0
    for key, t in g_full.items():
        u = g_res[key]
        assert t.shape == u.shape and t.dtype == u.dtype, key
        if t.is_floating_point():
            worst = max(worst, float((t - u).abs().max()))
            assert torch.allclose(t, u, rtol=1e-4, atol=1e-5), f"{key} differs after resume"
        else:
            assert torch.equal(t, u), key
    for name in ("market1501", "cuhk03"):  # the clients' private heads too
        h_full = torch.load(newest_head(tmp_path / "full" / "clients" / name))
        h_res = torch.load(newest_head(part_dir / "clients" / name))
        assert set(h_full) == set(h_res)
        for key, t in h_full.items():
            assert torch.allclose(t, h_res[key], rtol=1e-4, atol=1e-5), f"{name} head {key}"
    print(
        f"\nresume vs uninterrupted: max |global diff| = {worst:.3g}; "
        + "; ".join(
            f"r{r} {c} {k}: {x:.6f}/{y:.6f}"
            for r, c, k, x, y in report
            if r == 4 and k in ("rank1", "mAP")
        )
    )
