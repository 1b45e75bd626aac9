"""HideNseek vs its baselines on both tasks, through Flower's engine: one markdown table.

Runs (each through ``fedreid.simulation.simulate``, one folder per run under ``--out``):

* **ReID** (synthetic ``default`` preset, 9 clients, 64x32 images, ``--reid-rounds`` rounds,
  evaluated at the middle and last round): FedPav (dense, float32), HideNseek (sign mask at
  ``strategy.density``) and the binary {0, 1} mask over all weights (FedMask-style);
* **classification** (scikit-learn digits, 5 Dirichlet(0.5) clients, Conv4, 5 local epochs,
  ``--cls-rounds`` rounds, ``fedreid/conf/classify.yaml``): FedAvg (dense), HideNseek at densities
  0.05 and 0.2, and binary.

For each run the table gives the final accuracy (classification: pooled accuracy on the
clients' held-out splits; ReID: mean over clients of rank-1 and mAP), the bytes a client sends
and receives per round, measured from the real Flower messages (``bytes_up`` = the reply's
``ArrayRecord.count_bytes()``, ``bytes_down`` = the sent one's; mean over clients and rounds
2.., round 1's downlink, which carries HideNseek's mask, separately), the upload ratio to the
dense baseline, and the local training time per client per round (``train_time_s``: the
client's epochs only, mean over clients and rounds).

A run whose ``results.json`` says ``finished`` is reused (``--rerun`` repeats it).

Usage::

    python bench/hidenseek_table.py                      # both tasks, writes table.md
    python bench/hidenseek_table.py --skip-reid          # classification only (~5 min)
    python bench/hidenseek_table.py --report-only        # rebuild the table from the runs
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("fedreid")

# The table's protocol, pinned: packed 1-bit uploads and the binary mask over ALL weights
# (bench/hidenseek_evidence.py measures coded uploads and the equal-communication baselines).
_PACKED = "strategy.upload_coding=packed"
_ALL = "strategy.binary_scope=all"
REID_RUNS = {
    "reid_fedpav": ["strategy=fedpav"],
    "reid_hidenseek": ["strategy=hidenseek", _PACKED],
    "reid_binary": ["strategy=hidenseek_binary", _ALL, _PACKED],
}
CLS_RUNS = {
    "cls_fedavg": ["strategy=fedavg"],
    "cls_hidenseek": ["strategy=hidenseek", _PACKED],
    "cls_hidenseek_d20": ["strategy=hidenseek", "strategy.density=0.2", _PACKED],
    "cls_binary": ["strategy=hidenseek_binary", _ALL, _PACKED],
}
LABELS = {
    "reid_fedpav": "FedPav (dense float32)",
    "reid_hidenseek": "HideNseek (sign mask)",
    "reid_binary": "Binary mask (FedMask-style)",
    "cls_fedavg": "FedAvg (dense float32)",
    "cls_hidenseek": "HideNseek (sign mask)",
    "cls_hidenseek_d20": "HideNseek (sign mask, density 0.2)",
    "cls_binary": "Binary mask (FedMask-style)",
}
DENSE = {"reid": "reid_fedpav", "cls": "cls_fedavg"}


def reid_overrides(rounds: int, synflow_iterations: int) -> list[str]:
    """The ReID benchmark shared by all three runs."""
    return [
        "data.height=64",
        "data.width=32",
        f"num_rounds={rounds}",
        f"eval_every={max(1, rounds // 2)}",
        f"strategy.synflow_iterations={synflow_iterations}",
    ]


def cls_overrides(rounds: int) -> list[str]:
    """The classification benchmark (fedreid/conf/classify.yaml) shared by all three runs."""
    return [f"num_rounds={rounds}", "eval_every=1", "classification.dataset=digits"]


def finished(run_dir: Path) -> bool:
    path = run_dir / "results.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "finished"


def run(name: str, overrides: list[str], out: Path, config_name: str, rerun: bool) -> None:
    """One simulation into ``out/name`` (skipped when already finished)."""
    from fedreid.config import compose
    from fedreid.simulation import simulate

    run_dir = out / name
    if finished(run_dir) and not rerun:
        log.info("%s: reusing %s", name, run_dir)
        return
    cfg = compose([*overrides, f"output_dir={run_dir}", "overwrite=true"], config_name)
    start = time.time()
    simulate(cfg)
    log.info("%s: %.0fs", name, time.time() - start)


# -- the report ------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarise(payload: dict[str, Any]) -> dict[str, float]:
    """Final accuracy, bytes per client per round and local training time of one run."""
    rounds = sorted(payload["rounds"], key=lambda r: r["round"])
    config = payload["config"]
    out: dict[str, float] = {"rounds": float(len(rounds))}
    evaluated = [
        r for r in rounds if any("rank1" in m or "accuracy" in m for m in r["clients"].values())
    ]
    last = evaluated[-1]["clients"] if evaluated else {}
    if config["task"] == "classification":
        from fedreid.config import from_container
        from fedreid.data.classification import client_data

        cfg = from_container(config)
        n_test = {f"client{i}": client_data(cfg, i).num_test for i in range(len(last))}
        total = sum(n_test[c] for c in last)
        out["accuracy"] = sum(m["accuracy"] * n_test[c] for c, m in last.items()) / total
    else:
        out["rank1"] = _mean([m["rank1"] for m in last.values()])
        out["mAP"] = _mean([m["mAP"] for m in last.values()])
    later = [m for r in rounds[1:] for m in r["clients"].values()] or [
        m for m in rounds[0]["clients"].values()
    ]
    out["bytes_up"] = _mean([m["bytes_up"] for m in later])
    out["bytes_down"] = _mean([m["bytes_down"] for m in later])
    out["bytes_down_round1"] = _mean([m["bytes_down"] for m in rounds[0]["clients"].values()])
    out["train_time_s"] = _mean([m["train_time_s"] for r in rounds for m in r["clients"].values()])
    out["train_phase_s"] = _mean([r["server"].get("train_phase_s", 0.0) for r in rounds])
    for key in ("agreement", "flipped"):
        vals = [r["server"][key] for r in rounds if key in r["server"]]
        if vals:
            out[key] = _mean(vals)
    if "bits" in rounds[0]["server"]:
        out["bits"] = rounds[0]["server"]["bits"]
    s = config["strategy"]
    pruned = s["name"] == "hidenseek" and (
        s["mask_mode"] == "sign" or s.get("binary_scope", "all") == "pruned"
    )
    out["density"] = s["density"] if pruned else 1.0
    return out


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def table(out: Path, names: list[str]) -> str:
    """A markdown table of the finished runs among ``names``."""
    rows = {
        n: summarise(json.loads((out / n / "results.json").read_text()))
        for n in names
        if finished(out / n)
    }
    lines: list[str] = []
    for task, title in (
        ("reid", "ReID (synthetic default preset, 9 clients)"),
        ("cls", "Classification (digits, 5 clients, Dirichlet 0.5)"),
    ):
        task_rows = {n: r for n, r in rows.items() if n.startswith(task)}
        if not task_rows:
            continue
        dense_up = rows.get(DENSE[task], {}).get("bytes_up")
        metric = "rank-1 / mAP" if task == "reid" else "accuracy"
        lines += [
            f"**{title}**",
            "",
            f"| method | density | {metric} | up / client / round | down / client / round "
            "(round 1) | upload vs dense | local train s / round | sign agreement / flipped |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, r in task_rows.items():
            acc = (
                f"{100 * r['rank1']:.1f}% / {100 * r['mAP']:.1f}%"
                if task == "reid"
                else f"{100 * r['accuracy']:.1f}%"
            )
            ratio = f"1/{dense_up / r['bytes_up']:.0f}" if dense_up and n != DENSE[task] else "1"
            agree = f"{r['agreement']:.3f} / {r['flipped']:.4f}" if "agreement" in r else "-"
            lines.append(
                f"| {LABELS.get(n, n)} | {r['density']:g} | {acc} | {_bytes(r['bytes_up'])} | "
                f"{_bytes(r['bytes_down'])} ({_bytes(r['bytes_down_round1'])}) | {ratio} | "
                f"{r['train_time_s']:.2f} | {agree} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "hidenseek_table")
    parser.add_argument("--reid-rounds", type=int, default=6)
    parser.add_argument("--cls-rounds", type=int, default=20)
    parser.add_argument("--synflow-iterations", type=int, default=20)
    parser.add_argument("--skip-reid", action="store_true")
    parser.add_argument("--skip-cls", action="store_true")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if not args.skip_cls:
            for name, extra in CLS_RUNS.items():
                run(name, [*extra, *cls_overrides(args.cls_rounds)], out, "classify", args.rerun)
        if not args.skip_reid:
            for name, extra in REID_RUNS.items():
                common = reid_overrides(args.reid_rounds, args.synflow_iterations)
                run(name, [*extra, *common], out, "config", args.rerun)
    text = table(out, [*CLS_RUNS, *REID_RUNS])
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
