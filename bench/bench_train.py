"""CPU benchmark: float32 vs bf16 autocast, training step and evaluation pass, per core.

Measured side by side in one run, on random tensors (no dataset, ``pretrained=False``), for
ResNet-18 and ResNet-50 (:class:`fedreid.models.reid.ReIDNet`, 751 identities = Market-1501's
classifier) at 128x64 (this project's default) and 256x128 (the paper's size), batch 32:

- **training step**: the client's own loop, :func:`fedreid.training.train_epochs` with
  ``train.amp="off"`` (float32) and ``"on"`` (bf16 autocast), the reference SGD recipe
  (:func:`fedreid.training.make_optimizer`); one step = forward, float32 loss, backward,
  SGD update. Per-step times come from its ``on_batch`` callback.
- **evaluation pass**: :func:`fedreid.evaluation.extract_features` with ``amp="off"`` and
  ``amp="on"``, flip-averaged as in evaluation (two forward passes per image), one batch
  per timed call.

Each variant runs a few warm-up steps, then the two variants alternate in ``--rounds`` blocks
of ``--steps`` steps (so a change in machine load hits both); the median step time gives
images/s, divided by ``--threads`` for images/s per core. The ratio column is bf16 / float32
throughput (> 1: bf16 is faster). The header states the CPU, its BF16 flags, what
``train.amp=auto`` picks on it and the load average before and after.

Usage::

    python bench/bench_train.py --quick                 # about 2 minutes on one core
    python bench/bench_train.py                         # 3 warm-up + 3 x 10 steps per cell
    python bench/bench_train.py --archs resnet50 --sizes 256x128 --steps 20 --json out.json
    python bench/bench_train.py --quick --memory-format both   # + channels_last, side by side
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedreid.config import TrainConfig  # noqa: E402
from fedreid.evaluation import extract_features  # noqa: E402
from fedreid.models.reid import ReIDNet  # noqa: E402
from fedreid.training import (  # noqa: E402
    _cpu_bf16_evidence,
    amp_dtype,
    cpu_supports_bf16,
    make_optimizer,
    train_epochs,
)

NUM_CLASSES = 751
VARIANTS = {"fp32": "off", "bf16": "on"}
# --memory-format both: the channels_last twins, timed in the same alternating blocks
CL_VARIANTS = {"fp32_cl": "off", "bf16_cl": "on"}
CPU = torch.device("cpu")


def parse_size(text: str) -> tuple[int, int]:
    """``"128x64"`` -> ``(128, 64)`` (height x width)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1/5/15-minute load averages, or "n/a"."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def make_batches(n: int, batch: int, height: int, width: int) -> list[tuple]:
    """``n`` random ``(images, pids, camids)`` batches."""
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, 3, height, width, generator=gen),
            torch.randint(0, NUM_CLASSES, (batch,), generator=gen),
            torch.zeros(batch, dtype=torch.long),
        )
        for _ in range(n)
    ]


def build(arch: str, channels_last: bool) -> ReIDNet:
    """The client's model, same seed for every variant."""
    torch.manual_seed(0)
    model = ReIDNet(NUM_CLASSES, arch=arch, pretrained=False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Trainer:
    """One variant's model, optimizer and recipe; :meth:`steps` returns per-step seconds."""

    def __init__(self, arch: str, amp: str, channels_last: bool) -> None:
        self.model = build(arch, channels_last)
        self.train = TrainConfig(amp=amp, channels_last=channels_last, max_batches=0)
        self.optimizer = make_optimizer(self.model, self.train)

    def steps(self, batches: list[tuple]) -> list[float]:
        stamps = [time.perf_counter()]
        train_epochs(
            self.model,
            batches,
            self.optimizer,
            self.train,
            CPU,
            on_batch=lambda step, total: stamps.append(time.perf_counter()),
        )
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


class Extractor:
    """One variant's model in evaluation; :meth:`steps` returns per-batch seconds."""

    def __init__(self, arch: str, amp: str, channels_last: bool) -> None:
        self.model = build(arch, channels_last)
        self.amp = amp
        self.channels_last = channels_last

    def steps(self, batches: list[tuple]) -> list[float]:
        times = []
        for batch in batches:
            if self.channels_last:
                batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
            start = time.perf_counter()
            extract_features(self.model, [batch], device=CPU, amp=self.amp)
            times.append(time.perf_counter() - start)
        return times


def bench_cell(args: argparse.Namespace, kind: str, arch: str, size: tuple[int, int]) -> dict:
    """Median images/s per core of fp32 and bf16 for one (phase, arch, size) cell."""
    make = Trainer if kind == "train" else Extractor
    runners = {name: make(arch, amp, args.channels_last) for name, amp in VARIANTS.items()}
    if args.memory_format == "both":
        runners |= {name: make(arch, amp, True) for name, amp in CL_VARIANTS.items()}
    warm = make_batches(args.warmup, args.batch, *size)
    timed = make_batches(args.steps, args.batch, *size)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.steps(warm)
    for _ in range(args.rounds):
        for name, runner in runners.items():
            times[name].extend(runner.steps(timed))
    out: dict[str, Any] = {"phase": kind, "arch": arch, "size": f"{size[0]}x{size[1]}"}
    for name, ts in times.items():
        median = statistics.median(ts)
        out[name] = {
            "median_step_s": median,
            "images_per_s_per_core": args.batch / median / args.threads,
            "steps": len(ts),
        }
    out["bf16_over_fp32"] = (
        out["bf16"]["images_per_s_per_core"] / out["fp32"]["images_per_s_per_core"]
    )
    if "bf16_cl" in out:
        for amp in ("fp32", "bf16"):
            out[f"{amp}_cl_over_nchw"] = (
                out[f"{amp}_cl"]["images_per_s_per_core"] / out[amp]["images_per_s_per_core"]
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="128x64,256x128", help="HxW list")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (per core)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating fp32/bf16 blocks")
    parser.add_argument("--phases", default="train,eval", help="train, eval or both")
    parser.add_argument("--channels-last", action="store_true", help="channels_last tensors")
    parser.add_argument(
        "--memory-format",
        choices=("one", "both"),
        default="one",
        help="both: also time channels_last twins of fp32 and bf16 side by side",
    )
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 1 round of 3 steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps, args.rounds = 1, 3, 1
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    auto = amp_dtype("auto", CPU)
    header = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "evidence": _cpu_bf16_evidence(),
        "amp_auto_picks": str(auto).replace("torch.", "") if auto else "float32",
        "threads": args.threads,
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "channels_last": args.channels_last,
        "load_before": load(),
    }
    for key, value in header.items():
        print(f"# {key}: {value}")
    print(
        "# images/s per core, median step; eval = flip-averaged extract_features "
        "(2 forward passes per image)"
    )
    both = args.memory_format == "both"
    extra = f" {'fp32_cl':>8} {'bf16_cl':>8} {'cl/nchw fp32':>12} {'cl/nchw bf16':>12}"
    print(
        f"{'phase':<6} {'arch':<9} {'size':<8} {'fp32':>8} {'bf16':>8} {'bf16/fp32':>9}"
        + (extra if both else "")
    )
    rows = []
    start = time.perf_counter()
    for arch in archs:
        for size in sizes:
            for phase in phases:
                row = bench_cell(args, phase, arch, size)
                rows.append(row)
                print(
                    f"{phase:<6} {arch:<9} {row['size']:<8} "
                    f"{row['fp32']['images_per_s_per_core']:>8.2f} "
                    f"{row['bf16']['images_per_s_per_core']:>8.2f} "
                    f"{row['bf16_over_fp32']:>8.2f}x"
                    + (
                        f" {row['fp32_cl']['images_per_s_per_core']:>8.2f}"
                        f" {row['bf16_cl']['images_per_s_per_core']:>8.2f}"
                        f" {row['fp32_cl_over_nchw']:>11.2f}x {row['bf16_cl_over_nchw']:>11.2f}x"
                        if both
                        else ""
                    ),
                    flush=True,
                )
    header["load_after"] = load()
    header["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"# load_after: {header['load_after']}  wall: {header['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
