"""The main job end to end, float32 vs bf16: wall time, round times and final accuracy over seeds.

Runs the README's main job (``python run_simulation.py``, defaults: 9 synthetic clients,
FedPav, 10 rounds, evaluation every 2) as a new user would, once per (``train.amp``, seed),
interleaved (bf16 seed 0, float32 seed 0, bf16 seed 1, ...) so that a change in machine load
hits both settings, and prints side by side:

* wall time of the whole command (Python start, data check, Ray start included);
* the median training-phase time of rounds without evaluation, and of rounds with it (their
  training phase also ranks the "FedPav Local" models), plus the evaluation phase;
* the final mean rank-1 / mAP, unweighted over the 9 clients;

then mean ± sample sd per setting and the paired difference bf16 minus float32 per seed,
against the seed-to-seed spread. Existing finished runs in ``--out`` are reused (only their
figures are read; their wall time is taken from the saved record).

    python bench/bench_main_job.py --out outputs/main_job            # seeds 0 1, both settings
    python bench/bench_main_job.py --out outputs/main_job --seeds 0  # one seed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"fp32": "off", "bf16": "on"}


def run(folder: Path, amp: str, seed: int) -> float:
    """The main job with one setting; returns its wall time in seconds (saved next to it)."""
    record = folder / "wall_s.json"
    if record.exists() and (folder / "results.json").exists():
        status = json.loads((folder / "results.json").read_text())["status"]
        if status == "finished":
            return float(json.loads(record.read_text())["wall_s"])
    cmd = [sys.executable, "run_simulation.py", f"train.amp={amp}", f"seed={seed}"]
    cmd += [f"output_dir={folder}", "overwrite=true"]
    env = {**os.environ, "WANDB_MODE": "disabled", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    with (folder.parent / f"{folder.name}.log").open("w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    record.write_text(json.dumps({"wall_s": wall, "cmd": cmd[1:]}))
    return wall


def figures(folder: Path, wall: float) -> dict[str, float]:
    """Round times and final accuracy of one finished run."""
    results = json.loads((folder / "results.json").read_text())
    plain, with_eval, evaluate = [], [], []
    for r in results["rounds"][1:]:  # round 1 includes the actors' start-up
        server = r["server"]
        if server["evaluate_phase_s"] > 1:
            with_eval.append(server["train_phase_s"])
            evaluate.append(server["evaluate_phase_s"])
        else:
            plain.append(server["train_phase_s"])
    final = results["final"]
    return {
        "wall_s": wall,
        "train_round_s": statistics.median(plain),
        "train_round_with_local_eval_s": statistics.median(with_eval),
        "eval_phase_s": statistics.median(evaluate),
        "rank1": 100 * statistics.mean(m["rank1"] for m in final.values()),
        "mAP": 100 * statistics.mean(m["mAP"] for m in final.values()),
    }


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):6.1f} ± {sd:4.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/main_job"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows: dict[tuple[str, int], dict[str, float]] = {}
    for seed in args.seeds:
        for name, amp in (("bf16", "on"), ("fp32", "off")):
            folder = args.out / f"{name}_seed{seed}"
            wall = run(folder, amp, seed)
            rows[(name, seed)] = figures(folder, wall)
            print(f"done {name} seed {seed}: {wall:.0f} s", flush=True)

    print("\nmain job (9 clients, 10 rounds); times in s; rank-1/mAP in %, mean over clients")
    head = f"{'amp':5s} {'seed':>4s} {'wall':>6s} {'train':>6s} {'train+L':>8s} {'eval':>6s}"
    print(f"{head} {'rank-1':>7s} {'mAP':>6s}")
    for (name, seed), f in rows.items():
        print(
            f"{name:5s} {seed:4d} {f['wall_s']:6.0f} {f['train_round_s']:6.1f} "
            f"{f['train_round_with_local_eval_s']:8.1f} {f['eval_phase_s']:6.1f} "
            f"{f['rank1']:7.1f} {f['mAP']:6.1f}"
        )
    print()
    for name in SETTINGS:
        got = [rows[(name, s)] for s in args.seeds]
        print(
            f"{name}: wall {spread([f['wall_s'] for f in got])} s, "
            f"rank-1 {spread([f['rank1'] for f in got])}, mAP {spread([f['mAP'] for f in got])}"
        )
    for key in ("wall_s", "rank1", "mAP"):
        diffs = [rows[("bf16", s)][key] - rows[("fp32", s)][key] for s in args.seeds]
        print(f"bf16 - fp32 (paired by seed) {key}: {spread(diffs)}  per seed {diffs}")
    ratio = [rows[("fp32", s)]["wall_s"] / rows[("bf16", s)]["wall_s"] for s in args.seeds]
    print(f"fp32 / bf16 wall time: {', '.join(f'{r:.2f}x' for r in ratio)}")
    payload = [{"amp": n, "seed": s, **f} for (n, s), f in rows.items()]
    (args.out / "main_job.json").write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
