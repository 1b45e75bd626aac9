"""Leave-one-domain-out: does the federated model work on a camera network that never took part?

Trains FedPav and local training on the default 9-domain synthetic preset with one domain held
out (``data.holdout=[NAME]``, so 8 clients train), for several seeds, inside one Flower
simulation (one Ray start), then tests every trained model on the held-out domain with the
``fedreid eval`` command a deployer would use:

* FedPav: ``fedreid eval RUN --datasets NAME`` (the global model);
* local training has no global model: ``fedreid eval RUN --datasets NAME --client C`` for each
  of the 8 clients; the row reports the mean over those clients (and the best one).

It prints the per-seed figures, mean ± sample standard deviation over seeds, and the paired
difference FedPav minus local (same seed) with its spread. Rank-1 and mAP are in percent.

    python bench/lodo.py --out outputs/lodo                       # 3 seeds, market1501 held out
    python bench/lodo.py --out outputs/lodo --seeds 0 1 --holdout cuhk03
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("fedpav", "local")


def unseen(run: Path, holdout: str, client: str | None) -> dict[str, float]:
    """``fedreid eval`` of one model on the held-out domain: its rank-1 and mAP."""
    cmd = [sys.executable, "-m", "fedreid", "eval", str(run), "--datasets", holdout]
    cmd += ["--no-progress", *(["--client", client] if client else [])]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    row = json.loads((run / "eval" / f"{holdout}.json").read_text())["datasets"][holdout]
    return {"rank1": 100 * row["rank1"], "mAP": 100 * row["mAP"]}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):5.1f} ± {sd:4.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/lodo"))
    parser.add_argument("--holdout", default="market1501")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--amp", default="auto", help="train.amp (auto: bf16 where native)")
    args = parser.parse_args()

    from fedreid.config import compose
    from fedreid.simulation import simulate_many

    runs = {
        (method, seed): args.out / f"{method}_seed{seed}"
        for method in METHODS
        for seed in args.seeds
    }
    cfgs = [
        compose(
            [
                f"strategy={method}",
                f"seed={seed}",
                f"data.holdout=[{args.holdout}]",
                f"num_rounds={args.rounds}",
                f"eval_every={args.rounds}",
                f"train.amp={args.amp}",
                f"output_dir={folder}",
                *(["resume=true"] if (folder / "checkpoint.pt").exists() else []),
            ]
        )
        for (method, seed), folder in runs.items()
        if not _finished(folder)
    ]
    start = time.time()
    if cfgs:
        outcome = simulate_many(cfgs)
        failed = {k: v for k, v in outcome.items() if v != "finished"}
        if failed:
            print(f"error: runs did not finish: {failed}", file=sys.stderr)
            return 1
    print(f"trained {len(cfgs)} runs in {time.time() - start:.0f}s")

    table: dict[tuple[str, int], dict[str, float]] = {}
    for (method, seed), folder in runs.items():
        if method == "local":
            final = json.loads((folder / "results.json").read_text())["final"]
            per_client = {c: unseen(folder, args.holdout, c) for c in sorted(final)}
            table[(method, seed)] = {
                "rank1": statistics.mean(m["rank1"] for m in per_client.values()),
                "mAP": statistics.mean(m["mAP"] for m in per_client.values()),
                "best_rank1": max(m["rank1"] for m in per_client.values()),
                "clients": len(per_client),
            }
        else:
            table[(method, seed)] = unseen(folder, args.holdout, None)

    print(f"\nheld-out domain: {args.holdout} (never trained on); seeds {args.seeds}")
    print("local = mean over the 8 clients' own models (best client in brackets)\n")
    print(f"{'method':8s} {'seed':>4s} {'rank-1':>8s} {'mAP':>8s}")
    for (method, seed), m in table.items():
        best = f"  [{m['best_rank1']:.1f}]" if "best_rank1" in m else ""
        print(f"{method:8s} {seed:4d} {m['rank1']:8.1f} {m['mAP']:8.1f}{best}")
    print(f"\n{'method':8s} {'rank-1 mean ± sd':>18s} {'mAP mean ± sd':>18s}")
    for method in METHODS:
        r1 = [table[(method, s)]["rank1"] for s in args.seeds]
        ap = [table[(method, s)]["mAP"] for s in args.seeds]
        print(f"{method:8s} {mean_sd(r1):>18s} {mean_sd(ap):>18s}")
    diffs = {
        key: [table[("fedpav", s)][key] - table[("local", s)][key] for s in args.seeds]
        for key in ("rank1", "mAP")
    }
    print(f"{'fedpav - local (paired)':26s} {mean_sd(diffs['rank1'])}  {mean_sd(diffs['mAP'])}")
    rows = [{"method": m, "seed": s, **v} for (m, s), v in table.items()]
    (args.out / "lodo.json").write_text(json.dumps({"holdout": args.holdout, "rows": rows}))
    return 0


def _finished(folder: Path) -> bool:
    """A run already done (re-running the script only evaluates it again)."""
    results = folder / "results.json"
    return results.exists() and json.loads(results.read_text()).get("status") == "finished"


if __name__ == "__main__":
    sys.exit(main())
