"""HideNseek against its baselines over seeds, at equal communication, through Flower's engine.

Every run goes through :func:`fedreid.simulation.simulate` (one Python process runs them one
after the other; each run is its own folder ``--out/<method>/seed<k>`` with ``results.json``;
a finished run is reused unless ``--rerun``). The setting is ``conf/classify.yaml``
(image classification, Conv4, Dirichlet label partitions) with the options below; the
methods differ only in ``strategy``:

==================  ===========================================================================
method              what it is
==================  ===========================================================================
``fedavg``          dense FedAvg (float32 both ways): the reference
``hidenseek``       sign mask on the SynFlow subnetwork (``strategy.density``), scores reset to
                    ``+/-magnitude`` every round (the protocol of the paper as we read it)
``hidenseek_keep``  the same, confidence-preserving: clients keep their score magnitudes
                    between rounds and take only the signs from the vote
``binary``          {0, 1} keep-mask on the *same* subnetwork and density (the same bits)
``binary_all``      {0, 1} keep-mask over every weight (1 bit per maskable weight)
``fedpm``           FedPM-style probabilistic mask on the same subnetwork (1-bit Bernoulli
                    draws up, uint8 keep-probabilities down)
==================  ===========================================================================

Per method it prints (mean ± sample sd over seeds): final and best accuracy (pooled over the
clients' held-out splits), rounds, wall time and cumulative bytes to reach ``--target``
accuracy, the local training time per round, the bytes per round, and the measured upload
bits per surviving weight per round; then a claims table (reproduces / does not /
inconclusive, from the 95 % t-interval of the seed-paired difference). ``--json`` writes every
number.

Definitions:

* **accuracy** of a round: the sum over clients of ``accuracy * n_test`` over the sum of
  ``n_test`` (evaluation every round);
* **bytes**: the training messages only, both ways, summed over clients (``bytes_up`` = the
  reply's records: arrays, metrics and name; down = the sent ArrayRecord, without the config
  record that carries the shipped run config, about 2.6 kB per message for every method;
  round 1's downlink carries the pruning mask once, so the one-off mask download is
  included); evaluation messages are not counted (every method sends the same global arrays
  there as in training);
* **wall time to target**: SynFlow's one-off time (HideNseek, binary, FedPM) plus the sum over
  rounds of the server's training phase (send, local training, receive) and aggregation,
  evaluation excluded; on a shared machine it is noisy, so ``local train s`` (each client's
  own training time, mean over clients and rounds) is printed too.

Usage::

    python bench/hidenseek_evidence.py                         # 4 methods x 3 seeds
    python bench/hidenseek_evidence.py --methods hidenseek_keep binary_all --seeds 0 1 2
    python bench/hidenseek_evidence.py --report-only --json outputs/hidenseek_evidence/e.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedreid.report import Interval, t_interval  # noqa: E402
from fedreid.report import verdict as judge  # noqa: E402

log = logging.getLogger("fedreid")

METHODS: dict[str, list[str]] = {
    "fedavg": ["strategy=fedavg"],
    "hidenseek": ["strategy=hidenseek", "strategy.keep_scores=false"],
    "hidenseek_keep": ["strategy=hidenseek", "strategy.keep_scores=true"],
    "binary": ["strategy=hidenseek_binary"],
    "binary_all": ["strategy=hidenseek_binary", "strategy.binary_scope=all"],
    "fedpm": ["strategy=hidenseek_fedpm"],
}
LABELS = {
    "fedavg": "FedAvg (dense, float32 messages)",
    "hidenseek": "HideNseek (sign, reset each round)",
    "hidenseek_keep": "HideNseek (sign, keeps own magnitudes)",
    "binary": "Binary mask, same subnetwork",
    "binary_all": "Binary mask, all weights",
    "fedpm": "FedPM mask, same subnetwork",
}
DEFAULT_METHODS = ["fedavg", "hidenseek", "binary", "fedpm"]
LR_GRID: dict[str, list[float]] = {
    "fedavg": [0.001, 0.003, 0.01, 0.03, 0.1],
    **{m: [0.1, 0.3, 1.0, 3.0, 10.0] for m in ("hidenseek", "hidenseek_keep", "binary", "fedpm")},
}
"""``--sweep``'s learning rates per method: ``classification.lr`` for FedAvg, the mask
methods' ``strategy.score_lr``. The chosen values live in ``conf/classify_strategy/``."""


def overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The shared setting of every run."""
    return [
        f"seed={seed}",
        f"num_rounds={args.rounds}",
        "eval_every=1",
        f"train.local_epochs={args.local_epochs}",
        f"train.max_batches={args.max_batches}",
        f"classification.dataset={args.dataset}",
        f"classification.partition={args.partition}",
        f"classification.alpha={args.alpha}",
        f"classification.num_clients={args.clients}",
        f"classification.model={args.model}",
        f"strategy.density={args.density}",
        f"strategy.synflow_iterations={args.synflow_iterations}",
    ]


def lr_overrides(method: str, args: argparse.Namespace, lr: float | None) -> list[str]:
    """The method's learning rate: ``lr`` (a sweep), else ``--lr``/``--score-lr``, else the
    value chosen in its config file (no override)."""
    dense = method == "fedavg"
    key = "classification.lr" if dense else "strategy.score_lr"
    value = lr if lr is not None else (args.lr if dense else args.score_lr)
    return [] if value is None else [f"{key}={value}"]


def run_config(method: str, seed: int, args: argparse.Namespace, run_dir: Path, lr=None):
    """The composed config of one run."""
    from fedreid.config import compose

    extra = [*METHODS[method], *lr_overrides(method, args, lr)]
    return compose(
        [*overrides(args, seed), *extra, f"output_dir={run_dir}", "overwrite=true"], "classify"
    )


def _saved(run_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` payload of ``run_dir`` (None when there is none)."""
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def recipe_change(payload: dict[str, Any] | None, cfg) -> str:
    """How a saved run differs from ``cfg``'s recipe ("" if it does not, or if there is none)."""
    from fedreid.recipe import differences

    if payload is None:
        return ""
    diff = differences(payload["config"], cfg.to_dict(), free=("output_dir", "overwrite"))
    return "; ".join(diff[:3])


def reusable(run_dir: Path, cfg) -> dict[str, Any] | None:
    """The finished run in ``run_dir`` if it was made with ``cfg``'s recipe, else None."""
    payload = _saved(run_dir)
    if payload is None or payload.get("status") != "finished" or recipe_change(payload, cfg):
        return None
    return payload


def run_one(method: str, seed: int, args: argparse.Namespace, root: Path, lr=None) -> None:
    """One simulation into ``root/method/seed<k>`` (reused when finished with this recipe)."""
    from fedreid.simulation import simulate

    run_dir = root / method / f"seed{seed}"
    cfg = run_config(method, seed, args, run_dir, lr)
    if not args.rerun and reusable(run_dir, cfg) is not None:
        log.info("%s seed %d: reusing %s", method, seed, run_dir)
        return
    if not args.rerun and (change := recipe_change(_saved(run_dir), cfg)):
        print(
            f"error: {run_dir} holds a run with another recipe ({change}); pass --rerun to "
            "replace it, or choose another --out",
            file=sys.stderr,
        )
        raise SystemExit(2)
    start = time.time()
    simulate(cfg)
    log.info("%s seed %d: %.0fs", method, seed, time.time() - start)


# -- one run's figures --------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


_N_TEST: dict[tuple[Any, ...], dict[str, int]] = {}


def _n_test(config: dict[str, Any]) -> dict[str, int]:
    """Each client's held-out size (the partition depends on the data settings and seed)."""
    from fedreid.config import from_container
    from fedreid.data.classification import client_data

    c = config["classification"]
    split = (c.get("partition", "dirichlet"), c["alpha"], c["test_fraction"])
    key = (c["dataset"], c["num_clients"], *split, config["seed"])
    if key not in _N_TEST:
        cfg = from_container(config)
        _N_TEST[key] = {f"client{i}": client_data(cfg, i).num_test for i in range(c["num_clients"])}
    return _N_TEST[key]


def _down(m: dict[str, Any]) -> float:
    """The downlink's arrays (``bytes_down_arrays``; older runs recorded them as
    ``bytes_down``), so runs recorded before and after the run loop began counting whole
    messages compare alike."""
    return float(m.get("bytes_down_arrays", m.get("bytes_down", 0)))


def figures(payload: dict[str, Any], target: float) -> dict[str, Any]:
    """Accuracy per round, time and bytes to ``target``, bits per weight, train time."""
    config = payload["config"]
    rounds = sorted(payload["rounds"], key=lambda r: r["round"])
    n_test = _n_test(config)
    acc, wall, cum_bytes, bpw = [], [], [], []
    elapsed = float(rounds[0]["server"].get("synflow_s", 0.0)) if rounds else 0.0
    total = 0.0
    for r in rounds:
        clients = r["clients"]
        s = r["server"]
        elapsed += s.get("train_phase_s", 0.0) + s.get("aggregate_s", 0.0)
        total += sum(m.get("bytes_up", 0) + _down(m) for m in clients.values())
        scored = {c: m for c, m in clients.items() if "accuracy" in m}
        weight = sum(n_test[c] for c in scored)
        acc.append(sum(m["accuracy"] * n_test[c] for c, m in scored.items()) / weight)
        wall.append(elapsed)
        cum_bytes.append(total)
        bpw.append(s.get("upload_bpw", float("nan")))
    hit = next((i for i, a in enumerate(acc) if a >= target), None)
    per_client = [m for r in rounds for m in r["clients"].values() if "train_time_s" in m]
    later = [m for r in rounds[1:] for m in r["clients"].values()]
    return {
        "acc": acc,
        "final": acc[-1],
        "best": max(acc),
        "rounds_to_target": None if hit is None else hit + 1,
        "wall_to_target": None if hit is None else wall[hit],
        "bytes_to_target": None if hit is None else cum_bytes[hit],
        "bytes_total": total,
        "wall_total": wall[-1],
        "train_s": _mean([m["train_time_s"] for m in per_client]),
        "bytes_up_round": _mean([m["bytes_up"] for m in later]),
        "bytes_down_round": _mean([_down(m) for m in later]),
        "bytes_down_round1": _mean([_down(m) for m in rounds[0]["clients"].values()]),
        "upload_bpw": bpw,
        "xor_rate": [r["server"].get("xor_rate", float("nan")) for r in rounds],
        "xor_entropy": [r["server"].get("xor_entropy", float("nan")) for r in rounds],
        "bits": rounds[0]["server"].get("bits"),
        "synflow_s": rounds[0]["server"].get("synflow_s", 0.0),
        "lr": config["classification"]["lr"]
        if config["strategy"]["name"] == "fedavg"
        else config["strategy"]["score_lr"],
    }


# -- over seeds -------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean, sd and 95 % t-interval of the seed-paired differences ``a - b``."""
    t = t_interval(x - y for x, y in zip(a, b, strict=True))
    return {"mean": t.mean, "sd": t.sd, "n": t.n, "low": t.low, "high": t.high}


def verdict(diff: dict[str, float], better: str = "higher") -> str:
    """The shared rule of :func:`fedreid.report.verdict` on a :func:`paired` result."""
    return judge(
        Interval(diff["mean"], diff["sd"], int(diff["n"]), diff["low"], diff["high"]), better
    )


def _pct(m: float, sd: float) -> str:
    if math.isnan(m):
        return "-"
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if not math.isnan(sd) else f"{100 * m:.1f}"


def _num(m: float, sd: float, fmt: str = "{:.1f}") -> str:
    if math.isnan(m):
        return "-"
    return (fmt + " ± " + fmt).format(m, sd) if not math.isnan(sd) else fmt.format(m)


def _bytes(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f} B"


def collect(
    args: argparse.Namespace, root: Path | None = None, lr: float | None = None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Figures of the finished runs made with this invocation's recipe, by method and seed."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = (root or args.out) / method / f"seed{seed}"
            payload = reusable(run_dir, run_config(method, seed, args, run_dir, lr))
            if payload is not None:
                out.setdefault(method, {})[seed] = figures(payload, args.target)
    return out


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Each method over its :data:`LR_GRID` (``--out/lr<v>/<method>/seed<k>``); the best
    learning rate per method by the mean accuracy of the last three rounds (less noisy than
    the final round alone; averaged over the sweep's seeds)."""
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                for lr in LR_GRID[method]:
                    run_one(method, seed, args, args.out / f"lr{lr:g}", lr)
    width = max(len(LR_GRID[m]) for m in args.methods)
    lines = [
        f"Learning-rate sweep, seeds {args.seeds}: accuracy %, mean of the last 3 rounds "
        "(final round; best round), averaged over the seeds",
        "",
        "| method | lr: last 3 (final; best) |" + " |" * (width - 1) + " chosen lr |",
        "|---|" + "---|" * (width + 1),
    ]
    chosen: dict[str, float] = {}
    for method in args.methods:
        cells, finals = [], {}
        for lr in LR_GRID[method]:
            figs = list(collect(args, args.out / f"lr{lr:g}", lr).get(method, {}).values())
            if figs:
                finals[lr] = _mean([_mean(f["acc"][-3:]) for f in figs])
                final = _mean([f["final"] for f in figs])
                best = _mean([f["best"] for f in figs])
                pct = f"{100 * finals[lr]:.1f} ({100 * final:.1f}; {100 * best:.1f})"
                cells.append(f"{lr:g}: {pct}")
            else:
                cells.append(f"{lr:g}: -")
        if finals:
            chosen[method] = max(finals, key=lambda lr: finals[lr])
        choice = chosen.get(method, "-")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {choice} |")
    text = "\n".join(lines)
    print(text)
    return {"chosen": chosen, "markdown": text}


def report(args: argparse.Namespace) -> dict[str, Any]:
    runs = collect(args)
    lines = [
        f"Setting: {args.dataset}, {args.clients} clients, "
        f"{'IID' if args.partition == 'iid' else f'Dirichlet {args.alpha}'}, "
        f"{args.model}, density {args.density}, {args.rounds} rounds x {args.local_epochs} local "
        f"epoch(s) of at most {args.max_batches or 'all'} batches; target accuracy "
        f"{100 * args.target:.0f}%; learning rates "
        + ", ".join(f"{m} {next(iter(r.values()))['lr']:g}" for m, r in runs.items())
        + ". Mean ± sd over seeds.",
        "",
        "| method | seeds | final acc % | best acc % | rounds to target (reached) | "
        "wall s to target | bytes to target | up / client / round | down / client / round "
        "(round 1) | local train s / round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for method, by_seed in runs.items():
        figs = list(by_seed.values())
        reached = [f for f in figs if f["rounds_to_target"] is not None]
        row = {
            "seeds": sorted(by_seed),
            "final": mean_sd([f["final"] for f in figs]),
            "best": mean_sd([f["best"] for f in figs]),
            "rounds_to_target": mean_sd([f["rounds_to_target"] for f in reached]),
            "wall_to_target": mean_sd([f["wall_to_target"] for f in reached]),
            "bytes_to_target": mean_sd([f["bytes_to_target"] for f in reached]),
            "reached": len(reached),
            "train_s": mean_sd([f["train_s"] for f in figs]),
            "bytes_up_round": _mean([f["bytes_up_round"] for f in figs]),
            "bytes_down_round": _mean([f["bytes_down_round"] for f in figs]),
            "bytes_down_round1": _mean([f["bytes_down_round1"] for f in figs]),
            "acc_curve": [
                mean_sd([f["acc"][i] for f in figs])
                for i in range(min(len(f["acc"]) for f in figs))
            ],
            "upload_bpw": [
                _mean([f["upload_bpw"][i] for f in figs]) for i in range(len(figs[0]["upload_bpw"]))
            ],
            "xor_entropy": [
                _mean([f["xor_entropy"][i] for f in figs])
                for i in range(len(figs[0]["xor_entropy"]))
            ],
        }
        summary[method] = row
        lines.append(
            f"| {LABELS[method]} | {len(figs)} | {_pct(*row['final'])} | {_pct(*row['best'])} | "
            f"{_num(*row['rounds_to_target'])} ({len(reached)}/{len(figs)}) | "
            f"{_num(*row['wall_to_target'])} | {_bytes(row['bytes_to_target'][0])} | "
            f"{_bytes(row['bytes_up_round'])} | {_bytes(row['bytes_down_round'])} "
            f"({_bytes(row['bytes_down_round1'])}) | {_num(*row['train_s'], '{:.2f}')} |"
        )
    # bits per surviving weight per round (masked methods)
    masked = [m for m in summary if m != "fedavg"]
    if masked:
        n_rounds = max(len(summary[m]["upload_bpw"]) for m in masked)
        lines += [
            "",
            "Measured upload, bits per surviving weight (payload incl. 5-byte header; mean over "
            "clients and seeds), per round; in brackets H(xor rate), the i.i.d. floor:",
            "",
            "| round | " + " | ".join(LABELS[m] for m in masked) + " |",
            "|---|" + "---|" * len(masked),
        ]
        for i in range(n_rounds):
            cells = []
            for m in masked:
                bpw, ent = summary[m]["upload_bpw"], summary[m]["xor_entropy"]
                cells.append(f"{bpw[i]:.3f} [{ent[i]:.3f}]" if i < len(bpw) else "-")
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    claims = claims_table(runs, args)
    lines += ["", *claims["lines"]]
    text = "\n".join(lines)
    print(text)
    return {"summary": summary, "claims": claims["rows"], "runs": runs, "markdown": text}


def claims_table(runs: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> dict:
    """The paper's four claims, each from seed-paired differences."""
    rows: list[dict[str, Any]] = []

    def pair(a: str, b: str, key: str) -> tuple[dict[str, float], list[int]] | None:
        if a not in runs or b not in runs:
            return None
        seeds = sorted(set(runs[a]) & set(runs[b]))
        xs = [runs[a][s][key] for s in seeds]
        ys = [runs[b][s][key] for s in seeds]
        if not seeds or any(v is None for v in xs + ys):
            return None
        return paired(xs, ys), seeds

    def censored(claim: str, a: str, b: str, key: str, unit: str, scale: float) -> None:
        """Lower is better; a seed where a method never reached the target counts as worse
        than any seed where it did (both missing: a tie)."""
        seeds = sorted(set(runs[a]) & set(runs[b]))
        xs = [runs[a][s][key] for s in seeds]
        ys = [runs[b][s][key] for s in seeds]
        pairs = list(zip(xs, ys, strict=True))
        wins = sum(1 for x, y in pairs if x is not None and (y is None or x < y))
        losses = sum(1 for x, y in pairs if y is not None and (x is None or y < x))
        n = len(seeds)
        both = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
        if n and wins == n:
            text = "reproduces"
        elif n and losses == n:
            text = "does not"
        else:
            text = "inconclusive"
        where = (
            f"; where both reached: {_mean([x for x, _ in both]) * scale:.2f} vs "
            f"{_mean([y for _, y in both]) * scale:.2f} {unit}"
            if both
            else ""
        )
        rows.append(
            {
                "claim": claim,
                "comparison": f"{a} vs {b}",
                "verdict": text,
                "numbers": (
                    f"{a} lower in {wins}/{n} seeds, higher in {losses}/{n}; reached target: "
                    f"{a} {sum(x is not None for x in xs)}/{n}, "
                    f"{b} {sum(y is not None for y in ys)}/{n}{where}"
                ),
            }
        )

    def add(claim: str, a: str, b: str, key: str, better: str, unit: str, scale: float) -> None:
        if a not in runs or b not in runs:
            return
        if key.endswith("_to_target"):
            censored(claim, a, b, key, unit, scale)
            return
        got = pair(a, b, key)
        if got is None:
            return
        d, seeds = got
        rows.append(
            {
                "claim": claim,
                "comparison": f"{a} vs {b}",
                "verdict": verdict(d, better),
                "numbers": (
                    f"{a} - {b} = {d['mean'] * scale:+.2f} {unit} (sd {d['sd'] * scale:.2f}, "
                    f"95% CI [{d['low'] * scale:+.2f}, {d['high'] * scale:+.2f}], "
                    f"{len(seeds)} seeds)"
                ),
                "diff": d,
            }
        )

    hns = "hidenseek"
    add(
        "higher accuracy than binary masks at the same compression",
        hns,
        "binary",
        "final",
        "higher",
        "points",
        100,
    )
    add(
        "higher accuracy than binary masks at the same compression (best round)",
        hns,
        "binary",
        "best",
        "higher",
        "points",
        100,
    )
    add(
        "higher accuracy than a FedPM mask on the same subnetwork",
        hns,
        "fedpm",
        "final",
        "higher",
        "points",
        100,
    )
    for other in ("fedavg", "binary", "fedpm"):
        add(
            "lower communication (bytes to target)",
            hns,
            other,
            "bytes_to_target",
            "lower",
            "MB" if other == "fedavg" else "kB",
            1e-6 if other == "fedavg" else 1e-3,
        )
    for other in ("fedavg", "binary", "fedpm"):
        add(
            "lower communication (bytes over all rounds)",
            hns,
            other,
            "bytes_total",
            "lower",
            "MB" if other == "fedavg" else "kB",
            1e-6 if other == "fedavg" else 1e-3,
        )
    add("lower training time (local s per round)", hns, "fedavg", "train_s", "lower", "s", 1)
    add("lower training time (wall s to target)", hns, "fedavg", "wall_to_target", "lower", "s", 1)
    add(
        "faster convergence (rounds to target)",
        hns,
        "fedavg",
        "rounds_to_target",
        "lower",
        "rounds",
        1,
    )
    add(
        "faster convergence (rounds to target)",
        hns,
        "binary",
        "rounds_to_target",
        "lower",
        "rounds",
        1,
    )
    keep = "hidenseek_keep"
    add(
        "higher accuracy than binary masks at the same compression",
        keep,
        "binary",
        "final",
        "higher",
        "points",
        100,
    )
    add(
        "lower communication (bytes to target)",
        keep,
        "fedavg",
        "bytes_to_target",
        "lower",
        "MB",
        1e-6,
    )
    add(
        "faster convergence (rounds to target)",
        keep,
        "fedavg",
        "rounds_to_target",
        "lower",
        "rounds",
        1,
    )
    add(
        "faster convergence (rounds to target)",
        keep,
        "binary",
        "rounds_to_target",
        "lower",
        "rounds",
        1,
    )
    if "hidenseek_keep" in runs:
        add(
            "keeping magnitudes beats resetting them",
            "hidenseek_keep",
            hns,
            "final",
            "higher",
            "points",
            100,
        )
    lines = [
        "| claim | comparison | verdict | numbers |",
        "|---|---|---|---|",
        *[f"| {r['claim']} | {r['comparison']} | {r['verdict']} | {r['numbers']} |" for r in rows],
    ]
    return {"rows": rows, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--max-batches", type=int, default=10)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--partition", default="dirichlet", choices=["dirichlet", "iid"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--model", default="conv4")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--synflow-iterations", type=int, default=20)
    parser.add_argument("--score-lr", type=float, default=None, help="default: config file")
    parser.add_argument("--lr", type=float, default=None, help="FedAvg's; default: config file")
    parser.add_argument("--sweep", action="store_true", help="each method over LR_GRID")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "hidenseek_evidence")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.sweep:
        result = sweep(args)
    else:
        if not args.report_only:
            for seed in args.seeds:  # seed-major: an interrupted study leaves complete seeds
                for method in args.methods:
                    run_one(method, seed, args, args.out)
        result = report(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
