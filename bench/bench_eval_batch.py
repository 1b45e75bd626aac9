"""Benchmark: evaluation batch size (``data.eval_batch_size``) against feature-extraction speed.

Evaluation runs the ReID network in eval mode (running BatchNorm statistics), so the batch
size changes only the speed, never a feature. This times :func:`extract_features` (image and
mirror, the clients' path) on the same random 128x64 images for each batch size, in
alternating blocks so that a noisy machine slows every size alike, with the clients' default
of one torch thread, channels_last and the default ``train.amp=auto``. It prints images per
second (median over blocks) and each size's speed relative to the first one.

Usage::

    python bench/bench_eval_batch.py                       # 32, 64, 128 on ResNet-18
    python bench/bench_eval_batch.py --sizes 128 32 --threads 2 --blocks 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedreid.config import ModelConfig  # noqa: E402
from fedreid.evaluation.features import extract_features  # noqa: E402
from fedreid.models.builder import reid_model  # noqa: E402


def batches(images: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    """``images`` cut into loader-like ``(images, pids, camids)`` batches."""
    zeros = torch.zeros(len(images), dtype=torch.long)
    return [
        (images[i : i + size], zeros[i : i + size], zeros[i : i + size])
        for i in range(0, len(images), size)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = reid_model(ModelConfig(arch=args.arch), num_classes=10).eval()
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(args.images, 3, 128, 64).contiguous(memory_format=torch.channels_last)
    loaders = {size: batches(images, size) for size in args.sizes}
    extract_features(model, loaders[args.sizes[0]][:1], amp=args.amp)  # warm-up
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.blocks):
        for size in args.sizes:
            start = time.perf_counter()
            extract_features(model, loaders[size], amp=args.amp)
            rates[size].append(args.images / (time.perf_counter() - start))
    base = statistics.median(rates[args.sizes[0]])
    print(
        f"{args.arch} 128x64, {args.images} images (+ mirrors), {args.threads} thread(s), "
        f"amp={args.amp}, channels_last, median of {args.blocks} alternating blocks"
    )
    print(f"{'eval batch':>10s} {'images/s':>9s} {'vs ' + str(args.sizes[0]):>8s}")
    for size in args.sizes:
        rate = statistics.median(rates[size])
        print(f"{size:>10d} {rate:>9.1f} {rate / base:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
