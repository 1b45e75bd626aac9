"""Training-step time of supermask ReID models versus the dense model, measured side by side.

One SGD step (forward, cross-entropy, backward, update) on the same batch for: the dense
ReIDNet, its sign supermask (HideNseek) at ``--density``, and its binary {0, 1} supermask
(FedMask-style, all weights). Steps are interleaved (dense, sign, binary, dense, ...) so machine
noise hits all three alike; the medians and the ratios to dense are printed. Target: <= 1.3x.

The pruning mask is random at the requested density unless ``--synflow`` is given: its
pattern does not change the cost (the masked layers run dense kernels on w0*mask*sign(s)).

Usage:
    python bench/bench_supermask.py [--arch resnet18] [--batch 32] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from fedreid.models.reid import ReIDNet
from fedreid.models.supermask import convert_to_supermask, count_surviving
from fedreid.models.synflow import prunable_layers, synflow_masks


def random_masks(model: nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Bernoulli(density) masks for the prunable layers (cost-equivalent to SynFlow's)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{name}.weight": torch.rand(mod.weight.shape, generator=gen) < density
        for name, mod in prunable_layers(model).items()
    }


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A closure doing one SGD step of ``model`` on ``(x, y)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--classes", type=int, default=751)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--synflow", action="store_true", help="real SynFlow mask (slower)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = ReIDNet(num_classes=args.classes, arch=args.arch)
    if args.synflow:
        masks = synflow_masks(dense, (3, args.height, args.width), args.density)
    else:
        masks = random_masks(dense, args.density)
    sign = convert_to_supermask(copy.deepcopy(dense), masks, mode="sign")
    binary = convert_to_supermask(copy.deepcopy(dense), None, mode="binary")
    x = torch.randn(args.batch, 3, args.height, args.width)
    y = torch.randint(0, args.classes, (args.batch,))
    steps = {
        "dense": make_step(dense, x, y),
        "sign": make_step(sign, x, y),
        "binary": make_step(binary, x, y),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.repeats):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(
        f"{args.arch} batch {args.batch}x3x{args.height}x{args.width}, {args.threads} threads, "
        f"sign density {count_surviving(sign) / sum(m.numel() for m in masks.values()):.3f}, "
        f"{args.repeats} interleaved repeats (median)"
    )
    base = statistics.median(times["dense"])
    base_min = min(times["dense"])
    base_cpu = statistics.median(cpu["dense"])
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        print(
            f"  {name:<7} wall median {med * 1000:7.1f} ms/step ({args.batch / med:6.1f} img/s) "
            f"ratio {med / base:4.2f}x | wall min {min(ts) * 1000:7.1f} ms "
            f"ratio {min(ts) / base_min:4.2f}x | cpu median {med_cpu * 1000:7.1f} ms "
            f"ratio {med_cpu / base_cpu:4.2f}x"
        )
    print("  ratios are to dense; cpu = process CPU time (less sensitive to other load)")


if __name__ == "__main__":
    main()
