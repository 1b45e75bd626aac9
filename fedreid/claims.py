"""The FedReID paper's claims, tested over seeds from a comparison study's run folders.

::

    python -m fedreid.claims STUDY_DIR [--target 0.2] [--large 3] [--out DIR]

``STUDY_DIR`` holds one :mod:`fedreid.compare` folder per seed (any subfolders, e.g.
``seed0/``, ``seed1/``), each with ``<method>/results.json``. Only finished runs count; the
seed is read from each run's config, and every method must have run with the same recipe
(the config minus ``seed``, ``strategy`` and the output paths), else the study is refused.

Every figure is the **unweighted mean over clients** (each client's last evaluation), not the
query-weighted mean of the log's "pooled" line. The claims (paired per seed, method A minus
method B; verdict from the 95 % Student-t interval of the differences: ``reproduces`` when it
lies on the claimed side of 0, ``does not`` on the other side, ``inconclusive`` when it
contains 0):

(a) the large clients (the ``--large`` largest training sets) do worse federated (FedPav) than
    alone (local training);
(b) accuracy fluctuates across rounds: the **fluctuation** of a run is the mean absolute
    change of a client's rank-1 between consecutive evaluations (points), averaged over
    clients; FedPav's is compared with local training's, whose rank-1 moves only through
    its own training and the small query sets;
(c) KD smooths convergence (lower fluctuation than without KD), and its cost (final rank-1,
    wall time);
(d) CDW lifts the clients' local models ("FedPav+CDW Local", each client's model after its
    local epoch, before aggregation) above local training;
plus "FedPav Local" vs FedPav's global model, and rounds and wall time until the mean
rank-1 first reaches ``--target``. Comparisons whose methods did not run are left out.

Writes ``claims.md`` and ``claims.json`` into ``--out`` (default: ``STUDY_DIR``). Bad input
prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedreid.compare import LABELS, METHODS, cells, client_order, fluctuation, series
from fedreid.errors import FedReIDError
from fedreid.recipe import differences
from fedreid.report import Interval, mean_sd, t_interval, verdict

SETUP_FREE_KEYS = ("seed", "strategy", "output_dir", "state_dir", "resume", "overwrite", "wandb")
"""Config keys that may differ between a study's runs (everything else is the recipe)."""


class ClaimsError(FedReIDError):
    """A study that cannot be judged: no runs, mixed recipes, one seed only."""


@dataclass(frozen=True)
class RunFigures:
    """What the claims need from one finished run (fractions in [0, 1], points for changes)."""

    final_rank1: float
    final_mAP: float
    client_rank1: dict[str, float]
    fluctuation: float
    local_final_rank1: float
    """Mean final ``local_rank1`` (before aggregation); NaN where the run has none."""
    rounds_to_target: float
    """First evaluated round whose mean rank-1 reaches the target; NaN if none does."""
    wall_to_target_s: float
    wall_s: float
    kd_s: float = 0.0
    """Server time spent distilling (the rounds' ``kd_time_s``, summed); 0 without KD."""


Study = dict[str, dict[int, dict[str, Any]]]
"""method -> seed -> results.json payload."""


# -- loading ------------------------------------------------------------------------------------
def load_study(root: Path) -> Study:
    """Finished runs under ``root`` (``**/<method>/results.json``), by method and seed.

    Raises:
        ClaimsError: no finished run, a seed run twice for a method, or mixed recipes.
    """
    if not root.is_dir():
        raise ClaimsError(f"{root} is not a folder")
    study: Study = {}
    first: tuple[Path, dict[str, Any]] | None = None
    for path in sorted(root.rglob("results.json")):
        method = path.parent.name
        if method not in METHODS:
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ClaimsError(f"{path} is unreadable: {err}") from err
        if payload.get("status") != "finished":
            continue
        seed = int(payload["config"]["seed"])
        if seed in study.get(method, {}):
            raise ClaimsError(f"{method} seed {seed} appears twice under {root}")
        study.setdefault(method, {})[seed] = payload
        if first is None:
            first = (path.parent, payload["config"])
        elif diff := differences(first[1], payload["config"], free=SETUP_FREE_KEYS):
            raise ClaimsError(
                f"the runs under {root} differ in more than seed and method: {first[0]} and "
                f"{path.parent} ({diff[0]})"
            )
    if not study:
        raise ClaimsError(f"no finished run of {', '.join(METHODS)} under {root}")
    return study


# -- per run ------------------------------------------------------------------------------------
def mean_curve(payload: dict[str, Any], prefix: str = "") -> list[tuple[int, float, float]]:
    """``(round, mean rank-1 over clients, elapsed s)`` at rounds where every client was
    evaluated."""
    per_client = series(payload, f"{prefix}rank1")
    elapsed = {int(r["round"]): float(r.get("elapsed_s", math.nan)) for r in payload["rounds"]}
    by_round: dict[int, list[float]] = {}
    for points in per_client.values():
        for rnd, value in points:
            by_round.setdefault(rnd, []).append(value)
    return [
        (rnd, statistics.fmean(vals), elapsed.get(rnd, math.nan))
        for rnd, vals in sorted(by_round.items())
        if len(vals) == len(per_client)
    ]


def run_figures(payload: dict[str, Any], target: float) -> RunFigures:
    """The figures of one run; ``target`` is the mean rank-1 for time-to-accuracy."""
    final = cells(payload, "")
    if not final:
        raise ClaimsError("a finished run has no rank-1 evaluation")
    local = cells(payload, "local_")
    reached = [(rnd, t) for rnd, value, t in mean_curve(payload) if value >= target]
    return RunFigures(
        final_rank1=statistics.fmean(c.final_rank1 for c in final.values()),
        final_mAP=statistics.fmean(c.final_mAP for c in final.values()),
        client_rank1={name: c.final_rank1 for name, c in final.items()},
        fluctuation=fluctuation(payload)[0],
        local_final_rank1=(
            statistics.fmean(c.final_rank1 for c in local.values()) if local else math.nan
        ),
        rounds_to_target=float(reached[0][0]) if reached else math.nan,
        wall_to_target_s=reached[0][1] if reached else math.nan,
        wall_s=max(float(r.get("elapsed_s", 0.0)) for r in payload["rounds"]),
        kd_s=sum(float(r.get("server", {}).get("kd_time_s", 0.0)) for r in payload["rounds"]),
    )


# -- claims -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One paired comparison: ``figure(a) - figure(b)`` per seed."""

    claim: str
    a: str
    b: str
    figure: str
    """A :class:`RunFigures` field, ``client_rank1:<client>``, ``large_rank1`` (mean over the
    large clients) or ``a_local_vs_b`` (A's models before aggregation against B's final)."""
    claimed: str | None
    """``higher``/``lower`` (the claim's direction), or None for a cost (no verdict)."""
    unit: str = "points"


@dataclass(frozen=True)
class Judged:
    claim: Claim
    seeds: list[int]
    differences: list[float]
    interval: Interval
    exceeds_sd: bool
    verdict: str


def claims_for(study: Study, large: list[str]) -> list[Claim]:
    """The paper's claims that the study's methods can test, in the order of the docstring."""
    kd_pairs = [("fedpav_kd", "fedpav"), ("fedpav_cdw_kd", "fedpav_cdw")]
    wanted = [
        Claim(
            "(a) large clients do worse federated than alone",
            "fedpav",
            "local",
            "large_rank1",
            "lower",
        ),
        *[
            Claim(
                f"(a) {name} (large) federated vs alone",
                "fedpav",
                "local",
                f"client_rank1:{name}",
                "lower",
            )
            for name in large
        ],
        Claim("(b) accuracy fluctuates across rounds", "fedpav", "local", "fluctuation", "higher"),
        *[Claim("(c) KD smooths convergence", a, b, "fluctuation", "lower") for a, b in kd_pairs],
        *[Claim("(c) cost of KD: final rank-1", a, b, "final_rank1", None) for a, b in kd_pairs],
        *[Claim("(c) cost of KD: wall time", a, b, "wall_s", None, "min") for a, b in kd_pairs],
        *[Claim("(c) cost of KD: distillation", a, b, "kd_s", None, "min") for a, b in kd_pairs],
        Claim(
            "(d) CDW lifts local models above local training",
            "fedpav_cdw",
            "local",
            "a_local_vs_b",
            "higher",
        ),
        Claim(
            "CDW lifts local models above FedPav's",
            "fedpav_cdw",
            "fedpav",
            "local_final_rank1",
            "higher",
        ),
        Claim(
            "FedPav Local above FedPav's global model", "fedpav", "fedpav", "a_local_vs_b", "higher"
        ),
        Claim("federation vs local training (mean rank-1)", "fedpav", "local", "final_rank1", None),
    ]
    return [c for c in wanted if c.a in study and c.b in study]


def _value(claim: Claim, side: str, fig: RunFigures, large: list[str]) -> float:
    """The claim's figure of one run (``side`` is ``a`` or ``b``), in the claim's unit."""
    name = claim.figure
    if name == "large_rank1":
        return 100 * statistics.fmean(fig.client_rank1[c] for c in large)
    if name.startswith("client_rank1:"):
        return 100 * fig.client_rank1[name.split(":", 1)[1]]
    if name == "a_local_vs_b":  # a's models before aggregation against b's final models
        return 100 * (fig.local_final_rank1 if side == "a" else fig.final_rank1)
    if name == "fluctuation":
        return fig.fluctuation
    if name in ("wall_s", "kd_s"):
        return getattr(fig, name) / 60
    return 100 * getattr(fig, name)


def judge(figures: dict[str, dict[int, RunFigures]], claim: Claim, large: list[str]) -> Judged:
    """Per-seed differences of one claim, their interval and verdict."""
    seeds = sorted(set(figures[claim.a]) & set(figures[claim.b]))
    diffs = [
        _value(claim, "a", figures[claim.a][s], large)
        - _value(claim, "b", figures[claim.b][s], large)
        for s in seeds
    ]
    diffs_ok = [d for d in diffs if not math.isnan(d)]
    interval = t_interval(diffs_ok)
    sd = interval.sd
    exceeds = bool(not math.isnan(sd) and abs(interval.mean) > sd)
    result = verdict(interval, claim.claimed) if claim.claimed else "(no claim)"
    if claim.claimed and len(diffs_ok) < len(diffs):
        result = "inconclusive"
    return Judged(claim, seeds, diffs, interval, exceeds, result)


def large_clients(study: Study, count: int) -> list[str]:
    """The ``count`` clients with the largest training sets (any run's ``num_examples``)."""
    any_runs = {f"{m}/{s}": p for m, by_seed in study.items() for s, p in by_seed.items()}
    return client_order(any_runs)[:count]


def analyse(study: Study, target: float, large_count: int = 3) -> dict[str, Any]:
    """Method table, claims and time to target of a study (JSON-ready)."""
    figures = {m: {s: run_figures(p, target) for s, p in runs.items()} for m, runs in study.items()}
    if max(len(runs) for runs in figures.values()) < 2:
        raise ClaimsError("one seed per method: a spread needs at least two (three recommended)")
    large = large_clients(study, large_count)
    methods = [m for m in METHODS if m in figures]

    def summary(getter: Callable[[RunFigures], float], method: str) -> list[float]:
        values = [getter(f) for f in figures[method].values()]
        return list(mean_sd([v for v in values if not math.isnan(v)]))

    table = {
        m: {
            "seeds": sorted(figures[m]),
            "final_rank1": summary(lambda f: 100 * f.final_rank1, m),
            "final_mAP": summary(lambda f: 100 * f.final_mAP, m),
            "local_final_rank1": summary(lambda f: 100 * f.local_final_rank1, m),
            "fluctuation": summary(lambda f: f.fluctuation, m),
            "wall_min": summary(lambda f: f.wall_s / 60, m),
            "rounds_to_target": summary(lambda f: f.rounds_to_target, m),
            "wall_to_target_min": summary(lambda f: f.wall_to_target_s / 60, m),
            "reached_target": sum(not math.isnan(f.rounds_to_target) for f in figures[m].values()),
        }
        for m in methods
    }
    judged = [judge(figures, c, large) for c in claims_for(study, large)]
    return {
        "target_rank1": target,
        "large_clients": large,
        "methods": table,
        "claims": [
            {
                **asdict(j.claim),
                "seeds": j.seeds,
                "differences": j.differences,
                "mean": j.interval.mean,
                "sd": j.interval.sd,
                "ci95": [j.interval.low, j.interval.high],
                "exceeds_sd": j.exceeds_sd,
                "verdict": j.verdict,
            }
            for j in judged
        ],
    }


# -- writing ------------------------------------------------------------------------------------
def _ms(pair: list[float], fmt: str = "{:.1f}") -> str:
    mean, sd = pair
    if math.isnan(mean):
        return "–"
    return fmt.format(mean) + ("" if math.isnan(sd) else " ± " + fmt.format(sd))


def _signed(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.1f}"


def markdown(result: dict[str, Any], title: str) -> str:
    """``claims.md``: the method table, the claims with verdicts, time to target."""
    target = 100 * result["target_rank1"]
    lines = [
        f"# {title}",
        "",
        "Mean ± sample sd over seeds. Rank-1 and mAP in %, each the **unweighted mean over "
        "clients** of their final evaluation. Fluctuation: mean absolute change of a client's "
        'rank-1 between consecutive evaluations (points). "Local models": each client\'s '
        "model after its local epoch, before aggregation.",
        "",
        "| method | seeds | rank-1 | mAP | local models rank-1 | fluctuation | wall min "
        f"| rounds to {target:.0f} % (seeds) | wall min to {target:.0f} % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"| {LABELS.get(method, method)} | {','.join(map(str, row['seeds']))} | "
            f"{_ms(row['final_rank1'])} | {_ms(row['final_mAP'])} | "
            f"{_ms(row['local_final_rank1'])} | {_ms(row['fluctuation'], '{:.2f}')} | "
            f"{_ms(row['wall_min'])} | {_ms(row['rounds_to_target'])} "
            f"({row['reached_target']}/{len(row['seeds'])}) | "
            f"{_ms(row['wall_to_target_min'])} |"
        )
    lines += [
        "",
        f"Large clients: {', '.join(result['large_clients'])}. Differences are A - B per seed; "
        "verdict from the 95 % t-interval (reproduces: on the claimed side of 0; does not: "
        "on the other; inconclusive: contains 0).",
        "",
        "| claim | A - B | per seed | mean ± sd | 95 % CI | \\|mean\\| > sd | verdict |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for c in result["claims"]:
        unit = "" if c["unit"] == "points" else f" {c['unit']}"
        per_seed = ", ".join(_signed(d) for d in c["differences"])
        low, high = c["ci95"]
        ci = f"[{_signed(low)}, {_signed(high)}]" if math.isfinite(low + high) else "–"
        sd = "" if math.isnan(c["sd"]) else f" ± {c['sd']:.1f}"
        a, b = LABELS.get(c["a"], c["a"]), LABELS.get(c["b"], c["b"])
        if c["figure"] in ("a_local_vs_b", "local_final_rank1"):  # say which models
            a += " (local models)"
        if c["figure"] == "local_final_rank1":
            b += " (local models)"
        elif c["figure"] == "a_local_vs_b" and c["a"] == c["b"]:
            b += " (global)"
        lines.append(
            f"| {c['claim']} | {a} - {b} "
            f"| {per_seed} | {_signed(c['mean'])}{sd}{unit} | {ci} "
            f"| {'yes' if c['exceeds_sd'] else 'no'} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.claims",
        description="Test the FedReID paper's claims over the seeds of a comparison study.",
    )
    parser.add_argument("study", type=Path, help="folder of per-seed fedreid.compare folders")
    parser.add_argument(
        "--target", type=float, default=0.2, help="mean rank-1 for time to accuracy (0-1)"
    )
    parser.add_argument("--large", type=int, default=3, help="how many clients count as large")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: STUDY)")
    parser.add_argument("--title", default=None, help="heading of claims.md")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.target <= 1:
            raise ClaimsError(f"--target must lie in (0, 1], not {args.target}")
        if args.large < 1:
            raise ClaimsError(f"--large must be at least 1, not {args.large}")
        result = analyse(load_study(args.study), args.target, args.large)
        out = args.out or args.study
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(result, args.title or f"Claims: {args.study}")
        (out / "claims.md").write_text(text)
        (out / "claims.json").write_text(json.dumps(_jsonable(result), indent=1))
    except (FedReIDError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
