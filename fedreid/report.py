"""Aggregate finished runs over seeds: tables, a convergence plot and paired differences.

::

    python -m fedreid.report DIR [DIR ...] [--out OUT_DIR]

finds every ``results.json`` under the given folders (a hydra multirun folder, nested run
folders, single run folders), keeps the runs whose ``status`` is ``"finished"`` (and says how
many others it left out, by status), and groups them by their config (the ``config`` dict of
``results.json``) without the keys that do not change what is measured: ``seed``,
``output_dir``, ``state_dir``, ``resume``, ``overwrite`` and ``wandb``. Each group is
described by the config keys (dotted, e.g. ``strategy.name``) whose values differ between
groups.

A run's figure at an evaluation round is the **unweighted mean over its clients** of that
client's metric (``rank1`` or ``mAP`` in ``rounds[].clients[name]``; evaluation rounds are
those where clients have ``rank1``). Per run: *final* = the mean over clients of each
client's last evaluated value; *best* = the highest per-round mean over evaluation rounds.
Per group: mean ± sample standard deviation (n - 1) of those run figures over its runs (one
per seed). Written to ``OUT_DIR`` (default: the first DIR):

* ``report.md``: the group table (runs, seeds, final and best rank-1 and mAP, in %), then
  per-client tables of final rank-1 and final mAP (mean ± sd over seeds);
* ``report.json``: the same numbers as fractions in ``[0, 1]`` (``null`` for an undefined sd),
  plus each run's figures and each group's convergence curve;
* ``convergence.png``: mean rank-1 per round with a shaded ± sd band, one line per group.

:func:`paired_differences` compares two groups seed by seed (same seed in both), for verdicts
such as "B beats A by more than the seed-to-seed spread".

Bad input (a missing folder, no ``results.json``, no finished run) prints one line
``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedreid.errors import FedReIDError
from fedreid.recipe import recipe

IGNORED_KEYS = ("seed", "output_dir", "state_dir", "resume", "overwrite", "wandb")
"""Top-level config keys that do not define a setup (runs differing only there are seeds)."""

METRICS = ("rank1", "mAP")
SUMMARY_KEYS = ("final_rank1", "best_rank1", "final_mAP", "best_mAP")
METRIC_LABELS = {"rank1": "rank-1", "mAP": "mAP"}
CAPTION = (
    "Values in %: mean ± sample standard deviation over seeds (one run per seed). A run's "
    "value is the unweighted mean over its clients; final = each client's last evaluation, "
    "best = the best evaluation round of that mean."
)


class ReportError(FedReIDError, ValueError):
    """Nothing to report on: a missing folder, no results.json, no finished run, ..."""


@dataclass
class Run:
    """One finished run's figures (fractions in ``[0, 1]``)."""

    path: Path
    config: dict[str, Any]
    seed: Any
    rounds: list[int]
    """Evaluation rounds, ascending."""
    curves: dict[str, list[float]]
    """Metric -> mean over clients at each evaluation round."""
    clients: dict[str, dict[str, float]]
    """Client -> metric -> last evaluated value."""
    summary: dict[str, float]
    """``final_rank1``, ``best_rank1``, ``final_mAP``, ``best_mAP``."""


@dataclass
class Group:
    """Runs sharing a recipe (:func:`fedreid.recipe.recipe`, up to the ignored keys)."""

    config: dict[str, Any]
    """The shared recipe, as dotted keys."""
    runs: list[Run]
    description: dict[str, Any] = field(default_factory=dict)
    """The config keys that differ between groups, with this group's values."""

    @property
    def label(self) -> str:
        if not self.description:
            return "all runs"
        return ", ".join(f"{k}={_show(v)}" for k, v in self.description.items())

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]


@dataclass
class Report:
    inputs: list[Path]
    groups: list[Group]
    left_out: dict[str, int]
    """Runs not reported, by reason (their status, ``unreadable``, ``no rank-1``)."""
    differing_keys: list[str]


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences ``a - b`` of a metric between two groups."""

    metric: str
    seeds: list[Any]
    differences: list[float]
    mean: float
    sd: float
    """Sample standard deviation (n - 1); NaN with fewer than two seeds."""
    exceeds_sd: bool
    """``|mean| > sd`` (False when the sd is undefined)."""


# -- statistics -----------------------------------------------------------------------------


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); NaN where undefined (n = 0, or sd at n = 1).

    Examples:
        >>> mean_sd([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = statistics.fmean(vals)
    return mean, statistics.stdev(vals, mean) if len(vals) > 1 else math.nan


@dataclass(frozen=True)
class Interval:
    """Mean, sample sd and two-sided Student-t confidence interval of paired differences."""

    mean: float
    sd: float
    n: int
    low: float
    high: float


def t_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """The ``level`` t-interval of the mean of ``values`` (per-seed paired differences).

    Infinite bounds with fewer than two values (no spread to judge by).

    Examples:
        >>> t = t_interval([1.0, 2.0, 3.0])
        >>> (t.mean, t.sd, round(t.low, 3), round(t.high, 3))
        (2.0, 1.0, -0.484, 4.484)
    """
    from scipy.stats import t as student_t

    vals = [float(v) for v in values]
    mean, sd = mean_sd(vals)
    if len(vals) < 2:
        return Interval(mean, sd, len(vals), -math.inf, math.inf)
    half = float(student_t.ppf(0.5 + level / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))
    return Interval(mean, sd, len(vals), mean - half, mean + half)


VERDICTS = ("reproduces", "does not", "inconclusive")


def verdict(interval: Interval, claimed: str = "higher") -> str:
    """``reproduces`` when the interval lies on the claimed side of 0 (``claimed`` is
    ``higher`` or ``lower``), ``does not`` when it lies on the other side, else
    ``inconclusive`` (the interval contains 0, or is undefined).

    Examples:
        >>> verdict(Interval(2.0, 1.0, 3, 0.5, 3.5))
        'reproduces'
        >>> verdict(Interval(2.0, 1.0, 3, 0.5, 3.5), claimed="lower")
        'does not'
    """
    if claimed not in ("higher", "lower"):
        raise ValueError(f"claimed must be 'higher' or 'lower', not {claimed!r}")
    low, high = (interval.low, interval.high)
    if claimed == "lower":
        low, high = -high, -low
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > 0:
        return "reproduces"
    if high < 0:
        return "does not"
    return "inconclusive"


def paired_differences(a: Group, b: Group, metric: str = "final_rank1") -> PairedDifference:
    """Seed-by-seed differences ``a - b`` of a run figure, their mean and sample sd.

    Only seeds present in both groups count; a seed run more than once in a group counts
    with the mean of its runs.

    Args:
        a, b: the groups to compare.
        metric: one of ``final_rank1``, ``best_rank1``, ``final_mAP``, ``best_mAP``.

    Returns:
        The differences (seeds ascending), their mean and sd, and whether ``|mean| > sd``.

    Raises:
        ReportError: on an unknown metric or when the groups share no seed.
    """
    if metric not in SUMMARY_KEYS:
        raise ReportError(f"unknown metric {metric!r}; choose from {', '.join(SUMMARY_KEYS)}")

    def by_seed(group: Group) -> dict[Any, float]:
        values: dict[Any, list[float]] = {}
        for run in group.runs:
            values.setdefault(_seed_key(run.seed), []).append(run.summary[metric])
        return {seed: statistics.fmean(v) for seed, v in values.items()}

    va, vb = by_seed(a), by_seed(b)
    seeds = sorted(set(va) & set(vb), key=_sort_key)
    if not seeds:
        raise ReportError(f"groups {a.label!r} and {b.label!r} share no seed")
    diffs = [va[s] - vb[s] for s in seeds]
    mean, sd = mean_sd(diffs)
    return PairedDifference(metric, seeds, diffs, mean, sd, bool(abs(mean) > sd))


def _seed_key(seed: Any) -> Any:
    return json.dumps(seed) if isinstance(seed, dict | list) else seed


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))


# -- loading --------------------------------------------------------------------------------


def find_results(dirs: Sequence[Path]) -> list[Path]:
    """Every ``results.json`` under the folders (recursively), each once, in path order.

    Raises:
        ReportError: when a folder does not exist or none holds a results.json.
    """
    found: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.name == "results.json":
            found[d.resolve()] = None
            continue
        if not d.is_dir():
            raise ReportError(f"no such folder: {d}")
        for path in sorted(d.rglob("results.json")):
            if path.is_file():
                found[path.resolve()] = None
    if not found:
        raise ReportError(f"no results.json under {', '.join(str(d) for d in dirs)}")
    return sorted(found)


def load_run(path: Path) -> Run | str:
    """A finished run's figures, or the reason it is left out (its status, ...)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "unreadable"
    if not isinstance(payload, dict):
        return "unreadable"
    status = payload.get("status")
    if status != "finished":
        return str(status or "no status")
    try:
        return _figures(Path(path), payload)
    except (AttributeError, KeyError, TypeError, ValueError):  # a malformed entry
        return "unreadable"


def _figures(path: Path, payload: dict[str, Any]) -> Run | str:
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        raise TypeError("config is not a mapping")
    # Per evaluation round, each client's metrics.
    evals: list[tuple[int, dict[str, dict[str, float]]]] = []
    for entry in sorted(payload.get("rounds") or [], key=lambda r: r.get("round", 0)):
        clients = {
            name: m
            for name, m in (entry.get("clients") or {}).items()
            if isinstance(m, dict) and "rank1" in m
        }
        if clients:
            evals.append((int(entry["round"]), clients))
    if not evals:
        return "no rank-1"
    curves = {
        metric: [
            statistics.fmean(float(m[metric]) for m in clients.values() if metric in m)
            if any(metric in m for m in clients.values())
            else math.nan
            for _, clients in evals
        ]
        for metric in METRICS
    }
    last: dict[str, dict[str, float]] = {}
    for _, clients in evals:
        for name, m in clients.items():
            last.setdefault(name, {}).update({k: float(m[k]) for k in METRICS if k in m})
    summary = {}
    for metric in METRICS:
        finals = [v[metric] for v in last.values() if metric in v]
        summary[f"final_{metric}"] = statistics.fmean(finals) if finals else math.nan
        valid = [x for x in curves[metric] if not math.isnan(x)]
        summary[f"best_{metric}"] = max(valid) if valid else math.nan
    return Run(
        path=path,
        config=config,
        seed=config.get("seed"),
        rounds=[r for r, _ in evals],
        curves=curves,
        clients=dict(sorted(last.items())),
        summary=summary,
    )


_ABSENT = "(absent)"


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], list[str]]:
    """Group runs by config minus :data:`IGNORED_KEYS`; describe groups by differing keys.

    Returns:
        The groups (ordered by their differing values) and the differing keys.
    """
    groups: dict[str, Group] = {}
    for run in runs:
        setup = recipe(run.config, free=IGNORED_KEYS)
        key = json.dumps(setup, sort_keys=True, default=str)
        groups.setdefault(key, Group(config=setup, runs=[])).runs.append(run)
    flats = [g.config for g in groups.values()]
    keys = sorted({k for f in flats for k in f})
    differing = [
        k for k in keys if len({json.dumps(f.get(k, _ABSENT), default=str) for f in flats}) > 1
    ]
    for group, flat in zip(groups.values(), flats, strict=True):
        group.description = {k: flat.get(k, _ABSENT) for k in differing}
        group.runs.sort(key=lambda r: (_sort_key(r.seed), str(r.path)))
    ordered = sorted(
        groups.values(), key=lambda g: [_sort_key(_show(v)) for v in g.description.values()]
    )
    return ordered, differing


def build_report(dirs: Sequence[Path]) -> Report:
    """Find, load and group the runs under ``dirs``.

    Raises:
        ReportError: on a missing folder, no results.json or no finished run.
    """
    paths = find_results(dirs)
    runs: list[Run] = []
    left_out: Counter[str] = Counter()
    for path in paths:
        loaded = load_run(path)
        if isinstance(loaded, Run):
            runs.append(loaded)
        else:
            left_out[loaded] += 1
    if not runs:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(left_out.items()))
        raise ReportError(
            f"no finished run with rank-1 evaluations among {len(paths)} results.json ({reasons})"
        )
    groups, differing = group_runs(runs)
    return Report([Path(d) for d in dirs], groups, dict(sorted(left_out.items())), differing)


# -- figures --------------------------------------------------------------------------------


def group_summary(group: Group) -> dict[str, tuple[float, float]]:
    """``final_rank1``, ``best_rank1``, ``final_mAP``, ``best_mAP``: (mean, sd) over runs."""
    return {key: mean_sd(run.summary[key] for run in group.runs) for key in SUMMARY_KEYS}


def client_summary(group: Group) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Client -> metric -> (mean, sd, number of runs) of the client's final value."""
    names = sorted({name for run in group.runs for name in run.clients})
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name in names:
        out[name] = {}
        for metric in METRICS:
            vals = [
                run.clients[name][metric]
                for run in group.runs
                if metric in run.clients.get(name, {})
            ]
            out[name][metric] = (*mean_sd(vals), len(vals))
    return out


def convergence(
    group: Group, metric: str = "rank1"
) -> tuple[list[int], list[float], list[float], list[int]]:
    """Per evaluation round (any run's): mean and sd over runs of the run's client mean."""
    per_round: dict[int, list[float]] = {}
    for run in group.runs:
        for rnd, value in zip(run.rounds, run.curves[metric], strict=True):
            if not math.isnan(value):
                per_round.setdefault(rnd, []).append(value)
    rounds = sorted(per_round)
    stats = [mean_sd(per_round[r]) for r in rounds]
    return (
        rounds,
        [m for m, _ in stats],
        [s for _, s in stats],
        [len(per_round[r]) for r in rounds],
    )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _pct(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(sd):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def _seeds(group: Group) -> str:
    return ", ".join("?" if s is None else _show(s) for s in group.seeds)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def group_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the group table (strings, values in %)."""
    header = ["group", "runs", "seeds"] + [
        f"{which} {METRIC_LABELS[m]} (%)" for m in METRICS for which in ("final", "best")
    ]
    rows = []
    for group in report.groups:
        summary = group_summary(group)
        rows.append(
            [group.label, str(len(group.runs)), _seeds(group)]
            + [_pct(*summary[f"{w}_{m}"]) for m in METRICS for w in ("final", "best")]
        )
    return header, rows


def client_rows(report: Report, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a per-client table of the final ``metric`` (%), groups as columns."""
    summaries = [client_summary(g) for g in report.groups]
    names = sorted({name for s in summaries for name in s})
    header = ["client"] + [g.label for g in report.groups]
    rows = [
        [name] + [_pct(*s[name][metric][:2]) if name in s else "-" for s in summaries]
        for name in names
    ]
    return header, rows


def _left_out_line(report: Report) -> str:
    kept = sum(len(g.runs) for g in report.groups)
    line = f"{kept} finished run(s) in {len(report.groups)} group(s)"
    if report.left_out:
        total = sum(report.left_out.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in report.left_out.items())
        line += f"; left out {total} run(s) ({reasons})"
    return line


def markdown(report: Report) -> str:
    """``report.md``: the group table and the per-client tables."""

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        def esc(cell: str) -> str:
            return cell.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        return lines

    out = ["# Runs over seeds", ""]
    out.append(f"Inputs: {', '.join(f'`{p}`' for p in report.inputs)}. {_left_out_line(report)}.")
    if report.differing_keys:
        out.append(f"Groups differ in: {', '.join(f'`{k}`' for k in report.differing_keys)}.")
    out += ["", *table(*group_rows(report)), "", CAPTION, ""]
    for metric in METRICS:
        out += [f"## Final {METRIC_LABELS[metric]} per client (%)", ""]
        out += [*table(*client_rows(report, metric)), ""]
        out += ["Mean ± sample standard deviation over seeds of each client's last evaluation.", ""]
    out += ["![convergence](convergence.png)", ""]
    return "\n".join(out)


def to_json(report: Report) -> dict[str, Any]:
    """``report.json``: everything as fractions in ``[0, 1]``; an undefined sd is ``null``."""
    groups = []
    for group in report.groups:
        summary = group_summary(group)
        rounds, mean, sd, n = convergence(group)
        groups.append(
            {
                "label": group.label,
                "description": group.description,
                "config": group.config,
                "num_runs": len(group.runs),
                "seeds": group.seeds,
                **{k: {"mean": _num(m), "sd": _num(s)} for k, (m, s) in summary.items()},
                "clients": {
                    name: {
                        metric: {"mean": _num(m), "sd": _num(s), "n": k}
                        for metric, (m, s, k) in metrics.items()
                    }
                    for name, metrics in client_summary(group).items()
                },
                "convergence_rank1": {
                    "rounds": rounds,
                    "mean": [_num(x) for x in mean],
                    "sd": [_num(x) for x in sd],
                    "n": n,
                },
                "runs": [
                    {
                        "path": str(run.path),
                        "seed": run.seed,
                        **{k: _num(v) for k, v in run.summary.items()},
                    }
                    for run in group.runs
                ],
            }
        )
    return {
        "inputs": [str(p) for p in report.inputs],
        "caption": CAPTION,
        "num_runs": sum(len(g.runs) for g in report.groups),
        "left_out": report.left_out,
        "differing_keys": report.differing_keys,
        "groups": groups,
    }


def plot_convergence(report: Report, path: Path) -> Path:
    """``convergence.png``: mean rank-1 (%) per round, shaded ± sd over seeds, per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    for group in report.groups:
        rounds, mean, sd, _ = convergence(group)
        label = f"{group.label} (n={len(group.runs)})"
        (line,) = ax.plot(rounds, [100 * m for m in mean], marker="o", ms=3, label=label)
        band = [0.0 if math.isnan(s) else s for s in sd]  # one run: no band
        low = [100 * (m - s) for m, s in zip(mean, band, strict=True)]
        high = [100 * (m + s) for m, s in zip(mean, band, strict=True)]
        ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("mean rank-1 over clients (%)")
    ax.set_title("Convergence: mean ± sd over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``convergence.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(report))
    js = out_dir / "report.json"
    js.write_text(json.dumps(to_json(report), indent=1))
    return [md, js, plot_convergence(report, out_dir / "convergence.png")]


def print_report(report: Report) -> None:
    """The tables on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze into 80 columns
        console = Console(width=200)
    console.print(_left_out_line(report))

    def show(title: str, header: list[str], rows: list[list[str]], caption: str) -> None:
        table = Table(title=title, caption=caption)
        for i, h in enumerate(header):
            if i == 0:
                table.add_column(h, justify="left", overflow="fold")
            else:
                table.add_column(h, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)

    show("Runs over seeds", *group_rows(report), CAPTION)
    for metric in METRICS:
        show(
            f"Final {METRIC_LABELS[metric]} per client (%)",
            *client_rows(report, metric),
            "mean ± sample sd over seeds",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.report",
        description="Aggregate finished runs over seeds: tables (mean ± sd), per-client "
        "tables and a convergence plot.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders to search")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the first DIR)"
    )
    args = parser.parse_args(argv)
    try:
        report = build_report(args.dirs)
        out = args.out if args.out is not None else args.dirs[0]
        if out.is_file():
            out = out.parent
        written = write_report(report, out)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
