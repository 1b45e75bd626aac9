"""One hostile client of 9: what each attack does to the honest clients, with and without defences.

Runs the default 9-client synthetic preset (a short schedule: 64x32 images, a few batches per
round) inside ONE Flower simulation (one Ray start) whose ServerApp runs every configuration
in turn, and prints, side by side, the honest clients' mean rank-1 (unweighted over clients)
and the global model's L2 norm for:

* no attack;
* each attack with every defence switched off (``trust.norm_screen=0``,
  ``trust.strict_metrics=false``, ``trust.pin_examples=false``);
* each attack with the default validation (``trust.*`` defaults);
* each attack with every robust aggregator of ``strategy.aggregator`` and the defences off
  (so the aggregator's own robustness is what is measured).

Attacks (``fault.kind``, client ``msmt17``, every round): ``scale``, ``negate``, ``signflip``,
``inflate_cdw`` (run with CDW weights) and ``inflate_examples``.

    python bench/bench_poisoning.py --out outputs/poisoning            # the table
    python bench/bench_poisoning.py --out outputs/poisoning --quick    # 2 rounds, tiny preset
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ATTACKS = ("scale", "negate", "signflip", "inflate_cdw", "inflate_examples")
ROBUST = ("median", "trimmed_mean", "krum", "multikrum", "bulyan")
NO_DEFENCE = ["trust.norm_screen=0", "trust.strict_metrics=false", "trust.pin_examples=false"]


def runs(hostile: str) -> dict[str, list[str]]:
    """Every configuration of the table, by name."""
    out: dict[str, list[str]] = {"no attack": []}
    for attack in ATTACKS:
        base = [f"fault.kind={attack}", f"fault.client={hostile}"]
        if attack == "inflate_cdw":
            base.append("strategy.cdw=true")
        out[f"{attack} / no defence"] = [*base, *NO_DEFENCE]
        out[f"{attack} / default validation"] = base
        if attack != "inflate_cdw":  # CDW weights need a weighted mean
            for agg in ROBUST:
                extra = (
                    ["strategy.num_malicious=1"] if agg in ("krum", "multikrum", "bulyan") else []
                )
                if agg == "multikrum":
                    extra.append("strategy.num_to_select=5")
                out[f"{attack} / {agg}"] = [
                    *base,
                    *NO_DEFENCE,
                    f"strategy.aggregator={agg}",
                    *extra,
                ]
    return out


def summarise(folder: Path, hostile: str) -> tuple[float, float, str]:
    """(honest clients' mean final rank-1, global model norm, outcome).

    The outcome is the run's status, the replies the server excluded over the run, and the
    clients excluded in every round (for a defended attack: the hostile client).
    """
    import torch

    if not (folder / "global_model.pt").exists():
        return math.nan, math.nan, "no model"
    results = json.loads((folder / "results.json").read_text())
    final = results.get("final", {})
    honest = [m["rank1"] for c, m in final.items() if c != hostile and "rank1" in m]
    state = torch.load(folder / "global_model.pt", weights_only=True)
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in state.values()))
    excluded = sum(r.get("server", {}).get("excluded", 0) for r in results["rounds"])
    outcome = f"{results['status']}, {excluded} excluded"
    if results.get("failed_clients"):
        outcome += f", never used: {','.join(results['failed_clients'])}"
    return sum(honest) / max(len(honest), 1), norm, outcome


def reusable(cfg, hostile: str) -> bool:
    """A run of an earlier invocation, made with ``cfg``'s recipe, that finished with every
    honest client heard from (delete its folder to run it again)."""
    from fedreid.recipe import differences
    from fedreid.simulation import ClientsFailed, check_outcome

    folder = Path(cfg.output_dir)
    try:
        saved = json.loads((folder / "results.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    if differences(saved, cfg.to_dict(), free=("output_dir", "overwrite")):
        return False
    try:
        check_outcome(str(folder))
    except ClientsFailed as err:
        return f"client(s) {hostile} sent" in str(err)
    except Exception:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/poisoning"))
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 rounds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from fedreid.config import compose
    from fedreid.simulation import simulate_many

    hostile = "market1501" if args.quick else "msmt17"
    common = [
        *(["data=tiny"] if args.quick else []),
        f"num_rounds={2 if args.quick else args.rounds}",
        "eval_every=100",
        "data.height=64",
        "data.width=32",
        "train.max_batches=3",
        "trust.on_too_few=skip",
        "overwrite=true",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    table = runs(hostile)
    cfgs = {
        name: compose([*common, *opts, f"output_dir={args.out / name.replace(' / ', '__')}"])
        for name, opts in table.items()
    }
    todo = [cfg for cfg in cfgs.values() if not reusable(cfg, hostile)]
    start = time.time()
    if todo:
        simulate_many(todo)
    print(f"{len(todo)} runs in {time.time() - start:.0f}s ({len(cfgs) - len(todo)} reused)")
    rows = []
    print(f"\nhostile client: {hostile}; honest mean rank-1 is unweighted over the other clients")
    print(f"{'configuration':42s} {'honest rank-1':>14s} {'model norm':>12s}  outcome")
    for name, cfg in cfgs.items():
        rank1, norm, status = summarise(Path(cfg.output_dir), hostile)
        rows.append({"run": name, "honest_rank1": rank1, "norm": norm, "status": status})
        print(f"{name:42s} {100 * rank1:13.1f}% {norm:12.4g}  {status}")
    (args.out / "poisoning.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
