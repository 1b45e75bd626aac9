"""The optimizer step alone: torch's fused SGD kernel vs the per-tensor loop, side by side.

The clients' SGD (momentum 0.9, Nesterov, weight decay 5e-4, the reference's settings) over a
ReIDNet's parameters, one torch thread, the same gradients for both variants, alternating
steps; prints the median step time of each, their ratio, and how far the two models drift
apart (float rounding only: the same update).

    .venv/bin/python bench/bench_sgd.py                 # ResNet-18, 751 identities
    .venv/bin/python bench/bench_sgd.py --arch resnet50 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedreid.models.reid import ReIDNet  # noqa: E402

SETTINGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--classes", type=int, default=751)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = ReIDNet(args.classes, arch=args.arch)
    models = {"per-tensor": copy.deepcopy(base), "fused": copy.deepcopy(base)}
    optimizers = {
        "per-tensor": torch.optim.SGD(models["per-tensor"].parameters(), foreach=False, **SETTINGS),
        "fused": torch.optim.SGD(models["fused"].parameters(), fused=True, **SETTINGS),
    }
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) * 0.01 for p in base.parameters()]
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.steps + 2):
        for name, opt in optimizers.items():
            for p, g in zip(models[name].parameters(), grads, strict=True):
                p.grad = g.clone()
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v[2:]) for k, v in times.items()}
    n = sum(p.numel() for p in base.parameters())
    print(f"{args.arch}, {n / 1e6:.1f} M parameters, {args.steps} steps, 1 thread")
    for name, t in median.items():
        print(f"  {name:10s} {t * 1000:7.1f} ms per step")
    print(f"  per-tensor / fused: {median['per-tensor'] / median['fused']:.2f}x")
    ref = dict(models["per-tensor"].named_parameters())
    with torch.no_grad():
        fused = models["fused"].named_parameters()
        drift = max(float((p - ref[k]).abs().max()) for k, p in fused)
    print(f"  largest parameter difference after {args.steps + 2} steps: {drift:.2e}")


if __name__ == "__main__":
    main()
