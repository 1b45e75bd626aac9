"""Pretrain the ReID backbone centrally on a labelled pool that no client has (``model.init``).

Why: federated runs otherwise start from random weights (or ImageNet weights, which need a
download); a backbone pretrained on people and cameras outside the federation is the usual
starting point of federated ReID. Without ``--data-root`` the synthetic pretraining pool
(``fedreid.data.synthetic.POOL``: 240 identities on 8 cameras of its own, about 1,900
training images) is generated under ``data/synthetic/pretrain`` if missing. Training is the
clients' own recipe (:mod:`fedreid.training`: softmax identity loss, SGD with Nesterov
momentum); the file holds the shared part only (backbone + bottleneck, no classifier head)
and a metadata dict, and loads with ``torch.load(..., weights_only=True)``.

Examples:
    python -m fedreid.pretrain --out outputs/pretrain/resnet18_64x32.pt
    python run_simulation.py model.init=outputs/pretrain/resnet18_64x32.pt data.height=64 \\
        data.width=32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedreid.cli import Parser
from fedreid.cli import _positive as _positive_int
from fedreid.config import AMP_SETTINGS, Config, validate
from fedreid.data.types import Item
from fedreid.errors import DatasetError, FedReIDError
from fedreid.models.backbone_init import FORMAT
from fedreid.models.reid import ARCHS

DEFAULT_POOL_ROOT = Path("data/synthetic/pretrain")
"""Where the synthetic pool is generated when no ``--data-root`` is given (cwd-relative)."""


def pool_items(data_root: Path | None, pool_seed: int, progress: bool) -> tuple[list[Item], str]:
    """The labelled training images (pids relabelled 0..N-1) and a name for the metadata.

    Without ``data_root`` the synthetic pool is generated (or reused); otherwise ``data_root``
    is a synthetic pool root (holding ``pretrain/``) or any Market-1501-layout folder whose
    ``bounding_box_train/`` is used.
    """
    from fedreid.data.market import read_market_split
    from fedreid.data.synthetic import POOL, POOL_DOMAIN, generate
    from fedreid.data.types import relabel

    if data_root is None:
        root = generate(DEFAULT_POOL_ROOT, POOL, seed=pool_seed, progress=progress)
        folder, name = root / POOL_DOMAIN, f"synthetic:{POOL.name}:seed{pool_seed}"
    else:
        if not data_root.is_dir():
            raise DatasetError(f"--data-root: folder not found: {data_root}")
        folder = data_root / POOL_DOMAIN if (data_root / POOL_DOMAIN).is_dir() else data_root
        name = str(folder.resolve())
    items = relabel(read_market_split(folder / "bounding_box_train", keep_distractors=False))
    if len({pid for _, pid, _ in items}) < 2:
        raise DatasetError(f"{folder / 'bounding_box_train'}: fewer than 2 identities")
    return items, name


def check_writable(out: Path) -> Path:
    """``out`` as an absolute path whose folder exists and takes files (before any training)."""
    out = out.expanduser().absolute()
    if out.is_dir():
        raise DatasetError(f"--out {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.write-test-{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DatasetError(f"cannot write --out {out} ({err.strerror or err})") from err
    return out


def pretrain(cfg: Config, items: list[Item], epochs: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a ReIDNet with a head over the pool's identities for ``epochs`` epochs; returns
    its shared part (backbone + bottleneck, on the CPU) and the last epoch's metrics."""
    from fedreid.models.builder import reid_model
    from fedreid.models.reid import shared_state
    from fedreid.protocol import round_seed
    from fedreid.training import make_optimizer, resolve_device, train_epochs, train_loader

    device = resolve_device(cfg.train.device)
    num_pids = len({pid for _, pid, _ in items})
    torch.manual_seed(cfg.seed)
    model = reid_model(cfg.model, num_pids).to(device)
    if cfg.train.channels_last:  # the clients' memory format (train_epochs feeds NHWC then)
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.train)
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        loader = train_loader(items, cfg.data, seed=round_seed(cfg.seed, epoch))
        metrics = train_epochs(model, loader, optimizer, cfg.train, device)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {metrics['train_loss']:.3f}  "
            f"acc {100 * metrics['train_acc']:.1f}%  {metrics['train_time_s']:.1f} s",
            flush=True,
        )
    shared = {k: v.cpu().contiguous() for k, v in shared_state(model).items()}
    return shared, metrics


def save_backbone(out: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``torch.save`` of ``{"format", "state_dict", "meta"}``, atomically (temp file, rename)."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help``); usage errors end with one ``error:`` line, exit 2."""
    p = Parser(
        prog="python -m fedreid.pretrain",
        description="Pretrain the ReID backbone centrally on a labelled pool no client has; "
        "the file is what model.init takes.",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="labelled data: a synthetic pool root (holding pretrain/) or a Market-1501-layout "
        f"folder (bounding_box_train/); default: generate the pool under {DEFAULT_POOL_ROOT}",
    )
    p.add_argument("--pool-seed", type=int, default=0, help="generator seed of the pool")
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
    p.add_argument("--height", type=_positive_int, default=64, help="input height (pixels)")
    p.add_argument("--width", type=_positive_int, default=32, help="input width (pixels)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (backbone + head)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument(
        "--max-batches", type=int, default=0, help="cap batches per epoch (0 = all; tests)"
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--amp", default="off", choices=AMP_SETTINGS, help="bf16 autocast")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--channels-last",
        default="on" if Config().train.channels_last else "off",
        choices=("on", "off"),
        help="NHWC memory format (default: as train.channels_last)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: outputs/pretrain/<arch>_<height>x<width>.pt)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar while generating")
    return p


def config_for(args: argparse.Namespace) -> Config:
    """The training settings as a validated :class:`Config` (the clients' recipe)."""
    cfg = Config()
    cfg.model.arch = args.arch
    cfg.data.height, cfg.data.width, cfg.data.batch_size = args.height, args.width, args.batch_size
    cfg.train.lr_backbone = cfg.train.lr_head = args.lr
    cfg.train.amp, cfg.train.device = args.amp, args.device
    cfg.train.channels_last = args.channels_last == "on"
    cfg.train.max_batches, cfg.train.local_epochs = max(0, args.max_batches), 1
    cfg.seed = args.seed
    validate(cfg)  # lr, batch size, image size: one line each
    return cfg


def run(args: argparse.Namespace) -> int:
    """Generate or read the pool, pretrain, save; prints the wall time."""
    cfg = config_for(args)
    out = check_writable(
        args.out or Path(f"outputs/pretrain/{args.arch}_{args.height}x{args.width}.pt")
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    items, pool = pool_items(args.data_root, args.pool_seed, progress=not args.quiet)
    data_s = time.perf_counter() - start
    num_pids = len({pid for _, pid, _ in items})
    print(
        f"pool {pool}: {len(items)} images, {num_pids} identities "
        f"({data_s:.1f} s to generate/read)",
        flush=True,
    )
    start = time.perf_counter()
    state, metrics = pretrain(cfg, items, args.epochs)
    wall = time.perf_counter() - start
    meta = {
        "arch": args.arch,
        "height": args.height,
        "width": args.width,
        "epochs": args.epochs,
        "max_batches": cfg.train.max_batches,
        "pool": pool,
        "pool_seed": args.pool_seed,
        "images": len(items),
        "identities": num_pids,
        "images_seen": int(metrics.get("train_images", 0)) * args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "amp": cfg.train.amp,
        "channels_last": cfg.train.channels_last,
        "last_stride": cfg.model.last_stride,
        "embed_dim": cfg.model.embed_dim,
        "train_loss": float(metrics.get("train_loss", float("nan"))),
        "train_acc": float(metrics.get("train_acc", float("nan"))),
        "wall_time_s": round(wall, 2),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_backbone(out, state, meta)
    print(
        f"pretraining wall time: {wall:.1f} s ({args.arch}, {args.height}x{args.width}, "
        f"{args.epochs} epochs over {len(items)} images, {torch.get_num_threads()} threads)"
    )
    print(f"wrote {out}; start a run from it with model.init={out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one ``error:`` line and exit 2 on bad input; 0 when the file is written."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that vanished
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
