"""Local (single-domain) training: the baseline FedReID compares against, from the command line.

Examples:
    python -m fedreid.local --root data/synthetic/default --dataset market1501 --epochs 10
    python -m fedreid.local --root /data/reid --dataset market1501 --source real --arch resnet50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fedreid.config import Config
from fedreid.data.scenarios import load_named
from fedreid.errors import FedReIDError
from fedreid.evaluation import evaluate_model
from fedreid.models.builder import reid_model
from fedreid.protocol import round_seed
from fedreid.training import make_optimizer, resolve_device, train_epochs, train_loader


def train_local(cfg: Config, root: Path, dataset: str, epochs: int, console: Console) -> dict:
    """Train one model on one dataset for ``epochs`` epochs and rank its query/gallery."""
    ds = load_named(dataset, root, cfg.data.source)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    model = reid_model(cfg.model, ds.num_train_pids, pretrained=cfg.model.pretrained).to(device)
    optimizer = make_optimizer(model, cfg.train)
    console.print(f"{dataset}: {ds.summary()}")
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("epoch", total=epochs, loss=float("nan"))
        for epoch in range(epochs):
            loader = train_loader(ds.train, cfg.data, seed=round_seed(cfg.seed, epoch))
            metrics = train_epochs(model, loader, optimizer, cfg.train, device)
            progress.update(
                task,
                advance=1,
                loss=metrics["train_loss"],
                description=f"epoch {epoch + 1}/{epochs}",
            )
    res = evaluate_model(
        model,
        ds.query,
        ds.gallery,
        cfg.data.height,
        cfg.data.width,
        batch_size=cfg.data.eval_batch_size,
        device=device,
        amp=cfg.train.amp,
    )
    res["train_s"] = time.perf_counter() - start
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root (synthetic root or real data)")
    parser.add_argument("--dataset", required=True, help="domain / dataset name")
    parser.add_argument("--source", default="synthetic", choices=["synthetic", "real"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr-backbone", type=float, default=0.005)
    parser.add_argument("--lr-head", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = Config()
    cfg.data.source, cfg.data.height, cfg.data.width = args.source, args.height, args.width
    cfg.model.arch, cfg.model.pretrained = args.arch, args.pretrained
    cfg.train.lr_backbone, cfg.train.lr_head = args.lr_backbone, args.lr_head
    cfg.train.device, cfg.seed = args.device, args.seed
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    try:
        res = train_local(cfg, Path(args.root), args.dataset, args.epochs, console)
    except FedReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    console.print(
        f"[bold]{args.dataset}[/]: rank-1 {100 * res['rank1']:.1f}%  "
        f"mAP {100 * res['mAP']:.1f}%  mINP {100 * res['mINP']:.1f}%  "
        f"({res['train_s']:.0f}s training)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
