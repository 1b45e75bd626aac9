"""The ``fedreid`` command (also ``python -m fedreid``): use what a run trained.

::

    fedreid eval RUN_DIR [--data-root DIR] [--datasets a,b] [--rerank]
    fedreid extract RUN_DIR IMAGES_DIR --out FEATS.npz
    fedreid export RUN_DIR --format onnx|torchscript --out FILE
    fedreid visrank RUN_DIR --dataset NAME --out DIR [--topk 10] [--num-queries N]
    fedreid report DIR [DIR ...]

Every subcommand has ``--help``. Bad input (a missing folder, a folder that is not a finished
run, an unknown dataset, ...) ends with one ``error: ...`` line on stderr and exit status 2.
The model, its input size and preprocessing come from the run folder
(:mod:`fedreid.runfolder`); features and ranking are those of the run's own evaluation
(:mod:`fedreid.inference`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedreid.errors import FedReIDError

log = logging.getLogger("fedreid")


class Parser(argparse.ArgumentParser):
    """argparse with one ``error: ...`` line (and exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of dataset names")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a finished run folder (results.json + global_model.pt)"
    )
    p.add_argument(
        "--client",
        default=None,
        metavar="NAME",
        help="use this client's model (needed for runs with per-client BatchNorm statistics: "
        "bn_policy=local, hidenseek, and for strategy=local)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: the run's train.device)"
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="torch CPU threads (default: the run's train.threads, as its clients used)",
    )
    if data:
        p.add_argument(
            "--data-root",
            default=None,
            metavar="DIR",
            help="data folder (default: the run's data.root)",
        )
        p.add_argument(
            "--source",
            choices=("synthetic", "real"),
            default=None,
            help="how datasets are read: synthetic = Market-layout folders under the root, "
            "real = the readers by name (default: the run's data.source)",
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> Parser:
    parser = Parser(
        prog="fedreid",
        description="Use a trained fedreid run: evaluate, extract features, export, visualise "
        "rankings, report over runs. Training: run_simulation.py (hydra) or flwr run.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser(
        "eval",
        help="rank-1/5/10, mAP, mINP of the run's model on query/gallery sets",
        description="Evaluate the run's model (its architecture, image size, preprocessing, "
        "batch size and amp setting) on each dataset's query/gallery. Without --datasets: the "
        "run's own clients (reproducing its final figures) and its held-out domains "
        "(data.holdout) as unseen. Prints a table and writes RUN_DIR/eval/<name>.json.",
    )
    _common(p)
    p.add_argument(
        "--datasets",
        type=_names,
        default=None,
        metavar="A,B",
        help="datasets to evaluate: the run's client names or any dataset under the data root",
    )
    p.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)"
    )

    p = sub.add_parser(
        "extract",
        help="features of every image in a folder (no labels needed)",
        description="Flip-averaged, L2-normalised features of every jpg/png/bmp image under "
        "IMAGES_DIR (recursive), saved with their relative file names to an .npz "
        "(arrays: features [N, D] float32, names [N] str, height, width).",
    )
    _common(p, data=False)
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="FEATS.npz", help="output file")

    p = sub.add_parser(
        "export",
        help="the retrieval model (image -> embedding) as ONNX or TorchScript",
        description="Export image -> embedding: ReIDNet.features in eval mode, flip-averaged "
        "and L2-normalised (exactly the features eval uses; --no-flip: one pass). Input "
        "float32 [N, 3, H, W], ImageNet-normalised RGB at the run's size. Checks parity with "
        "PyTorch (onnxruntime / torch.jit, max abs difference <= 1e-4) and writes FILE.json "
        "describing input and output.",
    )
    _common(p, data=False)
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="file format")
    p.add_argument("--out", required=True, metavar="FILE", help="output file")
    p.add_argument("--no-flip", action="store_true", help="no flip averaging (half the compute)")

    p = sub.add_parser(
        "visrank",
        help="PNG grids: each query and its top-k gallery images",
        description="One PNG per query: the query, then its top-k gallery images (green "
        "border: same identity, red: another); gallery images of the query's identity and "
        "camera are excluded, as in the evaluation protocol.",
    )
    _common(p)
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="a client name or a dataset under the data root",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--topk", type=_positive, default=10, help="gallery images per query (10)")
    p.add_argument(
        "--num-queries",
        type=_positive,
        default=10,
        metavar="N",
        help="queries drawn, spread evenly over the query list (10)",
    )
    p.add_argument("--rerank", action="store_true", help="rank by k-reciprocal re-ranked distances")

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(
            name, help=help_text, description=f"See `fedreid {name} --help`.", add_help=False
        )
    return parser


# -- commands ---------------------------------------------------------------------------------
def _open(args: argparse.Namespace) -> Any:
    from fedreid.inference import resolve_device
    from fedreid.runfolder import RunFolder

    run = RunFolder.open(args.run_dir)
    return run, resolve_device(run.cfg, args.device)


def _threads(args: argparse.Namespace, run: Any) -> int:
    return args.threads or max(1, run.cfg.train.threads)


def _eval_name(datasets: Sequence[str] | None, rerank: bool) -> str:
    name = "+".join(datasets) if datasets else "run"
    name = re.sub(r"[^A-Za-z0-9+._-]", "_", name)[:80]
    return f"{name}_rerank" if rerank else name


def cmd_eval(args: argparse.Namespace) -> int:
    from fedreid.inference import data_config, eval_table, eval_targets, evaluate_run, torch_threads

    run, device = _open(args)
    data = data_config(run, args.data_root, args.source)
    targets, notes = eval_targets(run, args.datasets, data, client=args.client)
    with torch_threads(_threads(args, run)):
        rows = evaluate_run(run, targets, device, rerank=args.rerank, progress=not args.no_progress)
    out = run.path / "eval" / f"{_eval_name(args.datasets, args.rerank)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "run": str(run.path),
        "model": run.describe(),
        "data_root": str(data.root),
        "source": data.source,
        "rerank": {"k1": 20, "k2": 6, "lambda": 0.3} if args.rerank else None,
        "device": str(device),
        "datasets": rows,
        "run_final": {k: {m: v.get(m) for m in ("rank1", "mAP")} for k, v in run.final.items()},
        "notes": notes,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(json.dumps(payload, indent=1))
    print(f"{run.path.name}: {run.describe()}{', re-ranked' if args.rerank else ''}")
    print(eval_table(rows, run.final))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import numpy as np

    from fedreid.config import resolve_path
    from fedreid.inference import extract_folder, place, torch_threads

    run, device = _open(args)
    folder = resolve_path(args.images_dir)
    model = place(run.model(args.client), run.cfg, device)
    with torch_threads(_threads(args, run)):
        feats, names = extract_folder(model, folder, run.cfg, device, progress=not args.no_progress)
    out = resolve_path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # numpy would append it anyway
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=feats, names=names, height=run.cfg.data.height, width=run.cfg.data.width)
    print(f"{len(names)} images -> features {feats.shape[0]}x{feats.shape[1]} float32: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedreid.config import resolve_path
    from fedreid.export import export

    run, _ = _open(args)
    out = resolve_path(args.out)
    source = {"run": str(run.path), "model": run.describe(), "client": args.client}
    sidecar = export(
        run.model(args.client), run.cfg, args.format, out, flip=not args.no_flip, source=source
    )
    diff = sidecar["parity"]["max_abs_diff"]
    shape = "x".join(str(s) for s in sidecar["input"]["shape"])
    print(f"{args.format}: {out} (input images {shape}, output {sidecar['output']['shape'][1]}-d)")
    images = sidecar["parity"]["images"]
    print(f"parity with PyTorch: max |difference| = {diff:.2e} on {images} images")
    print(f"described in {out}.json")
    return 0


def cmd_visrank(args: argparse.Namespace) -> int:
    from fedreid.config import resolve_path
    from fedreid.evaluation.ranking import cosine_distance, ranked_indices
    from fedreid.inference import Bar, data_config, eval_targets, features, place, torch_threads
    from fedreid.visrank import draw_ranking, pick_queries

    run, device = _open(args)
    data = data_config(run, args.data_root, args.source)
    (target,), _ = eval_targets(run, [args.dataset], data, client=args.client)
    model = place(run.model(target.client), run.cfg, device)
    ds = target.dataset
    with torch_threads(_threads(args, run)), Bar(not args.no_progress) as bar:
        q, q_pids, q_cams = features(model, ds.query, run.cfg, device, bar, f"{ds.name} query")
        g, g_pids, g_cams = features(model, ds.gallery, run.cfg, device, bar, f"{ds.name} gallery")
        if args.rerank:
            from fedreid.evaluation.rerank import rerank

            dist = rerank(q, g)
        else:
            dist = cosine_distance(q, g)
    indices, matches = ranked_indices(dist, q_pids, g_pids, q_cams, g_cams, topk=args.topk)
    out = resolve_path(args.out)
    h, w = run.cfg.data.height, run.cfg.data.width
    size = (max(32, round(128 * w / h)), 128)
    written = []
    for i in pick_queries(len(ds.query), args.num_queries):
        stem = Path(ds.query[i][0]).stem
        written.append(
            draw_ranking(
                ds.query[i],
                ds.gallery,
                indices[i].tolist(),
                matches[i].tolist(),
                out / f"{ds.name}_{i:04d}_{stem}.png",
                size=size,
            )
        )
    hits = sum(bool(matches[i, 0]) for i in pick_queries(len(ds.query), args.num_queries))
    print(f"{len(written)} rankings of {ds.name} ({hits} with a true match at rank 1) -> {out}")
    return 0


COMMANDS = {"eval": cmd_eval, "extract": cmd_extract, "export": cmd_export, "visrank": cmd_visrank}

DELEGATED = {
    "report": ("fedreid.report", "mean ± sd over seeds of any runs (fedreid.report)"),
    "claims": (
        "fedreid.claims",
        "the FedReID paper's claims over a study's seeds (fedreid.claims)",
    ),
}
"""Subcommands handled by a module's own ``main(argv)`` (their parser, their --help)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedreid`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        original = argparse.ArgumentParser.error
        argparse.ArgumentParser.error = Parser.error  # its usage errors: one line too
        try:
            return module.main(argv[1:])
        finally:
            argparse.ArgumentParser.error = original
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable output, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
