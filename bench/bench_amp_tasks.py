"""bf16 vs float32 on the classification task: HideNseek's masked layers and dense FedAvg.

The straight-through sign mask must learn the same under bf16 autocast as in float32. This runs
``conf/classify.yaml`` (mnist5k, 5 Dirichlet(0.5) clients, Conv4) for HideNseek and FedAvg with
``train.amp=on`` and ``off``, several seeds, a short schedule (``--rounds`` rounds of 1 local
epoch capped at ``--batches`` batches), all inside ONE Flower simulation (one Ray start), and
prints the final accuracy (mean over clients) per run, mean ± sd per setting, and the paired
difference bf16 minus float32 (same seed) against the seed-to-seed spread.

    python bench/bench_amp_tasks.py --out outputs/amp_tasks
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STRATEGIES = ("hidenseek", "fedavg")
AMPS = {"fp32": "off", "bf16": "on"}


def final_accuracy(folder: Path) -> float:
    """Mean over clients of the final accuracy, in percent."""
    final = json.loads((folder / "results.json").read_text())["final"]
    return 100 * statistics.mean(m["accuracy"] for m in final.values())


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):5.1f} ± {sd:4.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/amp_tasks"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()

    from fedreid.config import compose
    from fedreid.simulation import simulate_many

    folders = {
        (strategy, amp, seed): args.out / f"{strategy}_{amp}_seed{seed}"
        for strategy in STRATEGIES
        for amp in AMPS
        for seed in args.seeds
    }
    cfgs = [
        compose(
            [
                f"strategy={strategy}",
                f"train.amp={AMPS[amp]}",
                f"seed={seed}",
                f"num_rounds={args.rounds}",
                "train.local_epochs=1",
                f"train.max_batches={args.batches}",
                f"output_dir={folder}",
                "overwrite=true",
            ],
            config_name="classify",
        )
        for (strategy, amp, seed), folder in folders.items()
    ]
    start = time.time()
    outcome = simulate_many(cfgs)
    failed = {k: v for k, v in outcome.items() if v != "finished"}
    if failed:
        print(f"error: runs did not finish: {failed}", file=sys.stderr)
        return 1
    print(f"{len(cfgs)} runs in {time.time() - start:.0f}s")
    acc = {key: final_accuracy(folder) for key, folder in folders.items()}
    print(f"\nfinal accuracy %, mean over clients; {args.rounds} rounds, seeds {args.seeds}")
    for strategy in STRATEGIES:
        for amp in AMPS:
            values = [acc[(strategy, amp, s)] for s in args.seeds]
            per_seed = " ".join(f"{v:5.1f}" for v in values)
            print(f"{strategy:10s} {amp:5s} {per_seed}   {spread(values)}")
        diffs = [acc[(strategy, "bf16", s)] - acc[(strategy, "fp32", s)] for s in args.seeds]
        print(f"{strategy:10s} bf16 - fp32 (paired): {spread(diffs)}")
    rows = [{"strategy": k[0], "amp": k[1], "seed": k[2], "accuracy": v} for k, v in acc.items()]
    (args.out / "amp_tasks.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
