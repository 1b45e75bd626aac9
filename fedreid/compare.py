"""Compare local training, FedPav, +CDW, +KD and +both on one benchmark: the paper's table.

Runs every method sequentially through ``fedreid.simulation.simulate`` on the same composed
benchmark and seeds (each run in ``<out>/<method>/``), then writes into ``<out>``:

* ``table.md`` / ``table.csv``: per client (largest training set first) and their mean, the
  final and best rank-1 and mAP of each method, plus the "FedPav Local" models (each client's
  model after local training, before aggregation: the ``local_rank1``/``local_mAP`` keys of the
  ``fedpav`` and ``fedpav_cdw`` runs);
* ``convergence.png``: rank-1 per evaluated round, one line per method, one panel per client
  plus their mean;
* ``comparison.json``: the methods and overrides used (what ``--report-only`` reads back).

Why one command: the paper's findings are *comparisons* (federated vs alone, with and without
CDW/KD), which only mean something when every run shares data, seeds, rounds and recipe.

Examples::

    python -m fedreid.compare --out outputs/compare data=tiny num_rounds=2 train.max_batches=2
    python -m fedreid.compare --out outputs/compare num_rounds=10 eval_every=1 strategy.kd_every=2
    python -m fedreid.compare --report-only outputs/compare    # rebuild table and plot only

Overrides are hydra-style and apply to every run; ``strategy=`` and ``output_dir=`` are set per
run by this command, and ``eval_local=every`` unless given (the Local columns report the best
evaluated round too). A finished run with the same setup is reused (``--rerun`` repeats it);
a stopped one, or a shorter one when ``num_rounds`` grows, continues from its checkpoint, so an
interrupted comparison goes on where it stopped and a short one can be extended.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedreid.config import Config
from fedreid.errors import ConfigError, FedReIDError
from fedreid.recipe import differences

log = logging.getLogger("fedreid")

METHODS = ("local", "fedpav", "fedpav_cdw", "fedpav_kd", "fedpav_cdw_kd")
LABELS = {
    "local": "Local training",
    "fedpav": "FedPav",
    "fedpav_cdw": "FedPav+CDW",
    "fedpav_kd": "FedPav+KD",
    "fedpav_cdw_kd": "FedPav+CDW+KD",
}
LOCAL_COLUMNS = {"fedpav": "FedPav Local", "fedpav_cdw": "FedPav+CDW Local"}
"""Runs whose before-aggregation ("local_") metrics get their own column."""

MEAN = "mean"


@dataclass(frozen=True)
class Column:
    """One column of the table: a run and which metrics of it (global or ``local_``)."""

    method: str
    label: str
    prefix: str = ""


@dataclass
class Cell:
    """A client's final and best rank-1 and mAP (fractions) for one column."""

    final_rank1: float = math.nan
    best_rank1: float = math.nan
    final_mAP: float = math.nan
    best_mAP: float = math.nan
    evaluations: int = 0


# -- running ----------------------------------------------------------------------------------
def _simulate():
    """:func:`fedreid.simulation.simulate` (imported late: it pulls in Flower and Ray)."""
    from fedreid.simulation import simulate

    return simulate


def run_status(run_dir: Path) -> str:
    """``finished``, ``running`` (stopped or still going) or ``missing``."""
    payload = read_results(run_dir)
    return "missing" if payload is None else str(payload.get("status", "running"))


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """``results.json`` of a run folder, None when absent or unreadable."""
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


RUN_LENGTH_KEYS = ("num_rounds", "resume", "overwrite", "output_dir", "state_dir")
"""Config keys that may differ between a run and its continuation."""


def plan_run(run_dir: Path, cfg: Config, rerun: bool) -> str:
    """``reuse``, ``resume`` or ``fresh`` for one method's run folder.

    A finished run with the same setup and at least the requested rounds is reused; one with
    the same setup, a checkpoint and fewer rounds (stopped, or a shorter comparison being
    extended) is continued; an empty folder, or a run of the same setup that cannot be
    continued, starts again.

    Raises:
        ConfigError: the folder holds a run with another setup, and ``rerun`` is off: nothing
            already saved is replaced unless asked (``--rerun``).
    """
    prev = None if rerun else read_results(run_dir)
    if prev is None:
        return "fresh"
    if diff := differences(prev.get("config", {}), cfg.to_dict(), free=RUN_LENGTH_KEYS):
        raise ConfigError(
            f"{run_dir} holds a run with another setup ({'; '.join(diff[:3])}); pass --rerun "
            "to replace it, or choose another --out"
        )
    done = max((int(r["round"]) for r in prev.get("rounds", [])), default=0)
    if prev.get("status") == "finished" and done >= cfg.num_rounds:
        return "reuse"
    return "resume" if (run_dir / "checkpoint.pt").is_file() and done > 0 else "fresh"


def check_overrides(overrides: list[str]) -> None:
    """Reject overrides that this command sets per run."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in ("strategy", "strategy.name", "output_dir"):
            raise ConfigError(f"override {o!r}: compare sets strategy and output_dir per run")


def data_fingerprint(root: str) -> str:
    """A short hash of the dataset's ``manifest.json`` ("" when there is none, e.g. real data).

    The synthetic generator rewrites its set when its preset changes; runs compared on
    different data would be meaningless, so each run's fingerprint is kept and checked.
    """
    from fedreid.config import resolve_path

    path = resolve_path(root) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def run_all(
    out: Path,
    overrides: list[str],
    methods: list[str],
    rerun: bool = False,
) -> dict[str, str]:
    """Run each method into ``out/<method>`` one after the other; returns method -> status."""
    from fedreid.config import compose

    check_overrides(overrides)
    if not any(o.split("=", 1)[0] == "eval_local" for o in overrides):
        overrides = ["eval_local=every", *overrides]  # the tables' "best" of the Local columns
    planned = []  # every folder is checked before anything runs
    for method in methods:
        cfg = compose([*overrides, f"strategy={method}"])
        cfg.output_dir = str((out / method).resolve())
        planned.append((method, cfg, plan_run(out / method, cfg, rerun)))
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "comparison.json"
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta = {"methods": methods, "overrides": overrides, "data": old.get("data", {})}
    meta_path.write_text(json.dumps(meta, indent=1))
    simulate = _simulate()
    status: dict[str, str] = {}
    for i, (method, cfg, plan) in enumerate(planned, 1):
        run_dir = out / method
        if plan == "reuse":
            log.info("[%d/%d] %s: reusing the finished run in %s", i, len(methods), method, run_dir)
            status[method] = "reused"
            continue
        cfg.resume = plan == "resume"
        cfg.overwrite = plan == "fresh"  # an earlier, different run of ours is started again
        if cfg.resume:
            log.info("[%d/%d] %s: continuing the run in %s", i, len(methods), method, run_dir)
        log.info("[%d/%d] %s -> %s", i, len(methods), method, run_dir)
        start = time.perf_counter()
        try:
            simulate(cfg)
        except FedReIDError as err:
            log.error("%s failed: %s", method, err)
            status[method] = "failed"
            continue
        status[method] = "finished"
        meta["data"][method] = data_fingerprint(cfg.data.root)
        meta_path.write_text(json.dumps(meta, indent=1))
        log.info(
            "[%d/%d] %s finished in %.0fs", i, len(methods), method, time.perf_counter() - start
        )
    return status


def data_mismatch(out: Path, methods: list[str]) -> str:
    """A warning when the runs were made on different data (per ``comparison.json``)."""
    meta_path = out / "comparison.json"
    data = json.loads(meta_path.read_text()).get("data", {}) if meta_path.is_file() else {}
    prints = {m: data.get(m, "?") for m in methods}
    if len(set(prints.values())) <= 1:
        return ""
    listed = ", ".join(f"{m}={p}" for m, p in prints.items())
    return f"the runs used different data (manifest fingerprints {listed}); rerun with --rerun"


# -- reading results ----------------------------------------------------------------------------
def load_runs(out: Path, methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ``results.json`` payloads of the methods' subfolders that have one."""
    runs = {}
    for method in methods or METHODS:
        path = out / method / "results.json"
        if path.is_file():
            runs[method] = json.loads(path.read_text())
    return runs


def columns(runs: dict[str, dict[str, Any]]) -> list[Column]:
    """Method columns in :data:`METHODS` order, each FedPav(+CDW) Local after its run."""
    cols = []
    for method in [m for m in METHODS if m in runs] + [m for m in runs if m not in METHODS]:
        cols.append(Column(method, LABELS.get(method, method)))
        if method in LOCAL_COLUMNS and series(runs[method], "local_rank1"):
            cols.append(Column(method, LOCAL_COLUMNS[method], "local_"))
    return cols


def series(payload: dict[str, Any], key: str) -> dict[str, list[tuple[int, float]]]:
    """``{client: [(round, value), ...]}`` of one metric, in round order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in sorted(payload.get("rounds", []), key=lambda r: r["round"]):
        for name, metrics in entry.get("clients", {}).items():
            if key in metrics:
                out.setdefault(name, []).append((int(entry["round"]), float(metrics[key])))
    return out


def client_order(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Clients by training-set size, largest first (the paper's order); ties by name."""
    sizes: dict[str, float] = {}
    for payload in runs.values():
        for name, points in series(payload, "num_examples").items():
            sizes[name] = max(sizes.get(name, 0.0), points[-1][1])
        for entry in payload.get("rounds", []):
            for name in entry.get("clients", {}):
                sizes.setdefault(name, 0.0)
    return sorted(sizes, key=lambda n: (-sizes[n], n))


def cells(payload: dict[str, Any], prefix: str) -> dict[str, Cell]:
    """Final and best rank-1/mAP per client for one column."""
    r1 = series(payload, f"{prefix}rank1")
    ap = series(payload, f"{prefix}mAP")
    out = {}
    for name, points in r1.items():
        maps = ap.get(name, [])
        out[name] = Cell(
            final_rank1=points[-1][1],
            best_rank1=max(v for _, v in points),
            final_mAP=maps[-1][1] if maps else math.nan,
            best_mAP=max((v for _, v in maps), default=math.nan),
            evaluations=len(points),
        )
    return out


def table(
    runs: dict[str, dict[str, Any]],
) -> tuple[list[str], list[Column], dict[tuple[str, str], Cell]]:
    """Rows (clients + ``mean``), columns, and ``{(client, column label): Cell}``."""
    cols = columns(runs)
    names = client_order(runs)
    grid: dict[tuple[str, str], Cell] = {}
    for col in cols:
        per_client = cells(runs[col.method], col.prefix)
        for name in names:
            if name in per_client:
                grid[(name, col.label)] = per_client[name]
        present = [per_client[n] for n in names if n in per_client]
        if present and len(present) == len(names):
            grid[(MEAN, col.label)] = Cell(
                *(
                    statistics.fmean(getattr(c, f) for c in present)
                    for f in ("final_rank1", "best_rank1", "final_mAP", "best_mAP")
                ),
                evaluations=min(c.evaluations for c in present),
            )
    return [*names, MEAN], cols, grid


def fluctuation(payload: dict[str, Any], prefix: str = "") -> tuple[float, int]:
    """Mean absolute rank-1 change between consecutive evaluations (points), and the drops.

    Averaged over clients; a drop is an evaluation whose rank-1 is below the previous one.
    """
    changes, drops = [], 0
    for points in series(payload, f"{prefix}rank1").values():
        values = [v for _, v in points]
        for a, b in zip(values, values[1:], strict=False):
            changes.append(abs(b - a))
            drops += b < a
    return (100 * statistics.fmean(changes) if changes else math.nan), drops


def run_facts(payload: dict[str, Any]) -> dict[str, float]:
    """Rounds, wall time, KD count and mean KD time of one run."""
    rounds = payload.get("rounds", [])
    kd = [r["server"]["kd_time_s"] for r in rounds if "kd_time_s" in r.get("server", {})]
    return {
        "rounds": float(max((r["round"] for r in rounds), default=0)),
        "wall_s": float(max((r.get("elapsed_s", 0.0) for r in rounds), default=0.0)),
        "kd_runs": float(len(kd)),
        "kd_mean_s": statistics.fmean(kd) if kd else math.nan,
    }


# -- writing ------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def write_tables(
    out: Path, runs: dict[str, dict[str, Any]], warning: str = ""
) -> tuple[Path, Path]:
    """``table.md`` (readable) and ``table.csv`` (one row per client and column)."""
    rows, cols, grid = table(runs)
    meta_path = out / "comparison.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    lines = ["# Method comparison", ""]
    if warning:
        lines += [f"**Warning: {warning}.**", ""]
    if meta.get("overrides") is not None:
        lines += [f"Overrides (every run): `{' '.join(meta['overrides']) or '(none)'}`", ""]
    lines += [
        "Values in %, **final** (best over evaluated rounds). Clients by training-set "
        "size, largest first; `mean` is the unweighted mean over clients. "
        '"Local" columns: each client\'s model after local training, before '
        "aggregation.",
        "",
    ]
    empty = Cell()
    for metric, title in (("rank1", "Rank-1"), ("mAP", "mAP")):
        lines += [
            f"## {title}",
            "",
            "| client | " + " | ".join(c.label for c in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for name in rows:
            cellstr = []
            for c in cols:
                cell = grid.get((name, c.label), empty)
                final, best = getattr(cell, f"final_{metric}"), getattr(cell, f"best_{metric}")
                cellstr.append(f"{_pct(final)} ({_pct(best)})")
            label = f"**{name}**" if name == MEAN else name
            lines.append(f"| {label} | " + " | ".join(cellstr) + " |")
        lines.append("")
    lines += [
        "## Convergence and cost",
        "",
        "| method | status | evaluations | mean abs. rank-1 change between evaluations "
        "(points) | rank-1 drops | rounds | wall time | distillations | mean KD time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cols:
        fl, drops = fluctuation(runs[c.method], c.prefix)
        facts = run_facts(runs[c.method])
        evals = grid.get((MEAN, c.label), empty).evaluations
        kd = "–" if math.isnan(facts["kd_mean_s"]) else f"{facts['kd_mean_s']:.1f} s"
        flstr = "–" if math.isnan(fl) else f"{fl:.2f}"
        status = runs[c.method].get("status", "?")
        lines.append(
            f"| {c.label} | {status} | {evals} | {flstr} | {drops} | {facts['rounds']:.0f} | "
            f"{facts['wall_s'] / 60:.1f} min | {facts['kd_runs']:.0f} | {kd} |"
        )
    lines.append("")
    md = out / "table.md"
    md.write_text("\n".join(lines))

    csv_path = out / "table.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "client",
                "method",
                "column",
                "final_rank1",
                "best_rank1",
                "final_mAP",
                "best_mAP",
                "evaluations",
            ]
        )
        for name in rows:
            for c in cols:
                cell = grid.get((name, c.label))
                if cell is None:
                    continue
                writer.writerow(
                    [
                        name,
                        c.method,
                        c.label,
                        *(
                            f"{getattr(cell, f):.4f}"
                            for f in ("final_rank1", "best_rank1", "final_mAP", "best_mAP")
                        ),
                        cell.evaluations,
                    ]
                )
    return md, csv_path


def plot_convergence(out: Path, runs: dict[str, dict[str, Any]]) -> Path:
    """``convergence.png``: rank-1 per round, a line per column, a panel per client + mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(runs)
    names = client_order(runs)
    panels = [*names, MEAN]
    ncols = min(5, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False, sharex=True
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    method_colour = {
        m: colours[i % len(colours)] for i, m in enumerate(dict.fromkeys(c.method for c in cols))
    }
    for ax, panel in zip(axes.flat, panels, strict=False):
        for c in cols:
            data = series(runs[c.method], f"{c.prefix}rank1")
            if panel == MEAN:
                by_round: dict[int, list[float]] = {}
                for points in data.values():
                    for rnd, v in points:
                        by_round.setdefault(rnd, []).append(v)
                pts = [
                    (r, statistics.fmean(v))
                    for r, v in sorted(by_round.items())
                    if len(v) == len(names)
                ]
            else:
                pts = data.get(panel, [])
            if not pts:
                continue
            style = {"ls": "--", "lw": 1.0, "alpha": 0.8} if c.prefix else {"lw": 1.6}
            ax.plot(
                [p[0] for p in pts],
                [100 * p[1] for p in pts],
                marker="o",
                ms=2.5,
                color=method_colour[c.method],
                label=c.label,
                **style,
            )
        ax.set_title(
            panel if panel != MEAN else "mean over clients",
            fontweight="bold" if panel == MEAN else None,
            fontsize=10,
        )
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("rank-1 (%)")
    handles, labels = axes.flat[len(panels) - 1].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(7, len(labels)),
        fontsize=9,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / "convergence.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, methods: list[str] | None = None) -> list[Path]:
    """Rebuild ``table.md``, ``table.csv`` and ``convergence.png`` from the runs in ``out``."""
    runs = load_runs(out, methods)
    if not runs:
        raise FedReIDError(f"no runs (<method>/results.json) under {out}")
    unfinished = [m for m, p in runs.items() if p.get("status") != "finished"]
    if unfinished:
        log.warning(
            "runs not finished (reported up to their last round): %s", ", ".join(unfinished)
        )
    mismatch = data_mismatch(out, list(runs))
    if mismatch:
        log.warning("%s", mismatch)
    md, csv_path = write_tables(out, runs, warning=mismatch)
    return [md, csv_path, plot_convergence(out, runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.compare",
        description="Run local training, FedPav, +CDW, +KD and +both on the same benchmark and "
        "write the per-client table and convergence plots.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/compare"),
        help="comparison folder (one subfolder per method)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument("--rerun", action="store_true", help="repeat finished runs too")
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="only rebuild the table and plot from the runs in DIR",
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if args.report_only is not None:
            written = report(args.report_only)
        else:
            status = run_all(args.out, list(args.overrides), methods, rerun=args.rerun)
            written = report(args.out, methods)
            failed = [m for m, s in status.items() if s == "failed"]
            if failed:
                print(f"error: run(s) failed: {', '.join(failed)}", file=sys.stderr)
                for p in written:
                    print(p)
                return 1
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
