"""GPU benchmark: one client's training step (fp32 vs AMP + channels_last) and evaluation.

Measured side by side in one run, on synthetic random tensors (no dataset, ``pretrained=False``):

1. **Training throughput** (images/s) of the client's own training loop,
   :func:`fedreid.training.train_epochs` (what ``ReIDClient.fit`` runs), on the reference
   network (ResNet-50, 256x128, batch 32, 751 identities = Market-1501's classifier), in four
   variants: ``fp32``, ``channels_last``, ``amp`` (bf16 autocast where supported, else fp16)
   and ``amp+channels_last``. Batches are pinned CPU tensors copied in each step, as from a
   ``DataLoader(pin_memory=True)``. After a warm-up, the variants are timed in interleaved
   rounds (``torch.cuda.synchronize`` around each timed block); the median round is reported
   and the ratio ``amp+channels_last / fp32`` printed.
2. **Feature extraction throughput** (images/s) of :func:`fedreid.evaluation.extract_features`
   (flip-averaged, so two forward passes per image) in fp32 and under bf16 autocast +
   channels_last (what evaluation would gain from the training flags).
3. **Ranking time** of :func:`fedreid.evaluation.evaluate_ranking` on a Market-1501-sized
   random problem (3,368 queries x 15,913 gallery x 512-d, identity-clustered features) on
   the GPU, for a trained-like and a random (worst-case) model, with the CPU time of the same
   call on the same machine for comparison.

Without a GPU it prints ``no GPU: ...`` and runs a small CPU smoke test (ResNet-18, 64x32,
batch 8, a small ranking problem) so the script itself can be tested anywhere.

Usage::

    python bench/bench_gpu.py                       # everything, sizes picked by device
    python bench/bench_gpu.py --steps 50 --rounds 5 --json results.json
    python bench/bench_gpu.py --device cpu          # the smoke test even where a GPU exists
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedreid.config import TrainConfig  # noqa: E402
from fedreid.evaluation import evaluate_ranking, extract_features  # noqa: E402
from fedreid.models.reid import ReIDNet  # noqa: E402
from fedreid.training import make_optimizer, train_epochs  # noqa: E402

GPU_DEFAULTS = {
    "arch": "resnet50",
    "height": 256,
    "width": 128,
    "batch": 32,
    "warmup": 10,
    "steps": 30,
    "rounds": 3,
    "eval_batch": 128,
    "eval_batches": 20,
    "num_query": 3368,
    "num_gallery": 15913,
    "repeats": 5,
}
"""The reference setting: ResNet-50 at 256x128, batch 32; Market-1501's test-set shape."""

CPU_DEFAULTS = {
    "arch": "resnet18",
    "height": 64,
    "width": 32,
    "batch": 8,
    "warmup": 1,
    "steps": 2,
    "rounds": 1,
    "eval_batch": 16,
    "eval_batches": 2,
    "num_query": 300,
    "num_gallery": 1500,
    "repeats": 1,
}
"""Smoke-test sizes for machines without a GPU (seconds on two cores)."""

VARIANTS = {
    "fp32": {"amp": False, "channels_last": False},
    "channels_last": {"amp": False, "channels_last": True},
    "amp": {"amp": True, "channels_last": False},
    "amp+channels_last": {"amp": True, "channels_last": True},
}
NUM_CLASSES = 751
DIM = 512


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on CPU), so wall time covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype :func:`fedreid.training.autocast` uses on this device (None: off)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_model(arch: str, device: torch.device, channels_last: bool) -> ReIDNet:
    """The client's model as ``ReIDClient.build_model`` prepares it (same seed every time)."""
    torch.manual_seed(0)
    model = ReIDNet(NUM_CLASSES, arch=arch, pretrained=False).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batches(n: int, batch: int, height: int, width: int, pin: bool) -> list[tuple]:
    """``n`` random ``(images, pids, camids)`` CPU batches, pinned when copying to a GPU."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        images = torch.randn(batch, 3, height, width, generator=gen)
        pids = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        cams = torch.zeros(batch, dtype=torch.long)
        if pin:
            images, pids = images.pin_memory(), pids.pin_memory()
        batches.append((images, pids, cams))
    return batches


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of ``train_epochs`` per variant: median over interleaved timed rounds."""
    pool = make_batches(4, args.batch, args.height, args.width, pin=device.type == "cuda")

    def loader(steps: int) -> list[tuple]:
        return [pool[i % len(pool)] for i in range(steps)]

    setups = {}
    for name, flags in VARIANTS.items():
        train = TrainConfig(max_batches=0, device=str(device), **flags)
        model = build_model(args.arch, device, flags["channels_last"])
        optimizer = make_optimizer(model, train)
        train_epochs(model, loader(args.warmup), optimizer, train, device)  # warm-up
        setups[name] = (model, optimizer, train)
    sync(device)

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (model, optimizer, train) in setups.items():
            batches = loader(args.steps)
            sync(device)
            start = time.perf_counter()
            train_epochs(model, batches, optimizer, train, device)
            sync(device)
            times[name].append(time.perf_counter() - start)
    images = args.steps * args.batch
    result = {
        name: {
            "images_per_s": images / statistics.median(ts),
            "step_ms": 1000 * statistics.median(ts) / args.steps,
            "rounds_s": ts,
        }
        for name, ts in times.items()
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del setups
    return result


def bench_extraction(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of flip-averaged feature extraction: fp32 vs autocast + channels_last."""
    batches = make_batches(
        args.eval_batches, args.eval_batch, args.height, args.width, pin=device.type == "cuda"
    )
    dtype = amp_dtype(device)
    out: dict[str, Any] = {}
    for name, fast in (("fp32", False), ("amp+channels_last", True)):
        model = build_model(args.arch, device, channels_last=fast)

        def run(model: ReIDNet = model, fast: bool = fast) -> None:
            ctx = (
                torch.autocast(device_type="cuda", dtype=dtype)
                if fast and dtype is not None
                else nullcontext()
            )
            with ctx:
                extract_features(model, batches, device=device)

        seconds = median_time(run, device, args.repeats)
        out[name] = {"images_per_s": len(batches) * args.eval_batch / seconds}
        del model
    return out


def make_ranking_problem(
    num_query: int, num_gallery: int, device: torch.device, noise: float | None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A Market-shaped random problem: 751 identities, 6 cameras, about 18% distractors.

    ``noise`` is the per-dimension spread around each identity's unit centre (0.06 looks like
    a trained model); ``None`` gives pure random features (an untrained model, the slow case
    for ranking since true matches spread over the whole gallery).
    """
    gen = torch.Generator().manual_seed(seed)
    num_ids = min(NUM_CLASSES, max(2, num_query // 4))
    q_pids = torch.cat(
        [torch.arange(num_ids), torch.randint(0, num_ids, (num_query,), generator=gen)]
    )
    q_pids = q_pids[:num_query] + 1
    num_distractors = int(0.176 * num_gallery)
    g_pids = torch.cat(
        [
            torch.arange(num_ids).repeat_interleave(2) + 1,
            torch.randint(1, num_ids + 1, (num_gallery,), generator=gen),
        ]
    )[: num_gallery - num_distractors]
    g_pids = torch.cat([g_pids, torch.zeros(num_distractors, dtype=torch.long)])
    q_cams = torch.randint(0, 6, (num_query,), generator=gen)
    g_cams = torch.randint(0, 6, (num_gallery,), generator=gen)
    centres = torch.nn.functional.normalize(torch.randn(num_ids + 1, DIM, generator=gen), dim=1)

    def feats(pids: torch.Tensor) -> torch.Tensor:
        x = torch.randn(len(pids), DIM, generator=gen)
        if noise is not None:  # identity clusters; distractors (pid 0) stay random
            x = torch.where((pids > 0)[:, None], centres[pids] + noise * x, x)
        return torch.nn.functional.normalize(x, dim=1).to(device)

    return {
        "query_feats": feats(q_pids),
        "gallery_feats": feats(g_pids),
        "query_pids": q_pids.to(device),
        "gallery_pids": g_pids.to(device),
        "query_camids": q_cams.to(device),
        "gallery_camids": g_cams.to(device),
    }


def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up, GPU synchronised."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ranking(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds per ``evaluate_ranking`` call on the device (and on the CPU for comparison)."""
    out: dict[str, Any] = {}
    for case, noise in (("trained-like", 0.06), ("random", None)):
        problem = make_ranking_problem(args.num_query, args.num_gallery, device, noise)
        seconds = median_time(lambda p=problem: evaluate_ranking(**p), device, args.repeats)
        metrics = evaluate_ranking(**problem)
        entry = {"seconds": seconds, "rank1": metrics["rank1"], "mAP": metrics["mAP"]}
        if device.type == "cuda" and args.cpu_ranking:
            cpu_problem = {k: v.cpu() for k, v in problem.items()}
            cpu_s = median_time(lambda p=cpu_problem: evaluate_ranking(**p), torch.device("cpu"), 1)
            entry["cpu_seconds"] = cpu_s
            entry["cpu_metrics_equal"] = evaluate_ranking(**cpu_problem) == metrics
        out[case] = entry
        del problem
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; unset sizes take the GPU or CPU defaults after the device is known."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda when present), cuda or cpu")
    for key, value in GPU_DEFAULTS.items():
        p.add_argument(
            f"--{key.replace('_', '-')}",
            type=type(value),
            default=None,
            help=f"default {value} on GPU, {CPU_DEFAULTS[key]} on CPU",
        )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument(
        "--no-cpu-ranking",
        dest="cpu_ranking",
        action="store_false",
        help="skip the CPU timing of the ranking problem on GPU machines",
    )
    p.add_argument(
        "--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark"
    )
    p.add_argument("--json", default="", help="also write the results to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three benchmarks, print them with the ratios; returns the results."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(
            f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cudnn {torch.backends.cudnn.version()}, autocast dtype {amp_dtype(device)}"
        )
        print(
            f"TF32: cudnn conv {torch.backends.cudnn.allow_tf32}, "
            f"matmul {torch.backends.cuda.matmul.allow_tf32}; "
            f"cudnn.benchmark {args.cudnn_benchmark}"
        )
    else:
        name = "cpu"
        why = "CUDA not available" if not torch.cuda.is_available() else "--device cpu"
        print(
            f"no GPU: {why}; CPU smoke test with small sizes ({torch.get_num_threads()} "
            "threads). The figures below are not GPU figures."
        )
    print(
        f"model {args.arch} {args.height}x{args.width}, batch {args.batch}, "
        f"{args.steps} timed steps x {args.rounds} rounds after {args.warmup} warm-up"
    )

    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "args": vars(args)}
    train = bench_training(args, device)
    results["training"] = train
    print("\n== training: train_epochs (forward, loss, backward, SGD step) ==")
    for variant in VARIANTS:
        r = train[variant]
        print(f"{variant:>18}: {r['images_per_s']:9.1f} images/s  ({r['step_ms']:.1f} ms/step)")
    ratio = train["amp+channels_last"]["images_per_s"] / train["fp32"]["images_per_s"]
    results["training_ratio"] = ratio
    print(
        f"speed-up amp+channels_last vs fp32: {ratio:.2f}x"
        + ("  (amp is a no-op on CPU)" if device.type != "cuda" else "")
    )
    if "peak_memory_gib" in train:
        print(f"peak GPU memory: {train['peak_memory_gib']:.2f} GiB")

    extraction = bench_extraction(args, device)
    results["extraction"] = extraction
    print(f"\n== feature extraction: extract_features, flip-averaged, batch {args.eval_batch} ==")
    for variant, r in extraction.items():
        print(f"{variant:>18}: {r['images_per_s']:9.1f} images/s")
    ext_ratio = extraction["amp+channels_last"]["images_per_s"] / extraction["fp32"]["images_per_s"]
    results["extraction_ratio"] = ext_ratio
    print(f"speed-up amp+channels_last vs fp32: {ext_ratio:.2f}x")

    ranking = bench_ranking(args, device)
    results["ranking"] = ranking
    print(
        f"\n== ranking: evaluate_ranking, {args.num_query} x {args.num_gallery} x {DIM} "
        f"on {device.type} (median of {args.repeats}) =="
    )
    for case, r in ranking.items():
        line = f"{case:>18}: {r['seconds']:.4f} s  (rank1 {r['rank1']:.3f}, mAP {r['mAP']:.3f})"
        if "cpu_seconds" in r:
            line += (
                f"; CPU {r['cpu_seconds']:.3f} s ({torch.get_num_threads()} threads) = "
                f"{r['cpu_seconds'] / r['seconds']:.1f}x, same metrics: "
                f"{r['cpu_metrics_equal']}"
            )
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
