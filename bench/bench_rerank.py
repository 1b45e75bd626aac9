"""Benchmark: k-reciprocal re-ranking (``fedreid.evaluation.rerank``) time and memory.

Times :func:`~fedreid.evaluation.rerank.rerank` (k1=20, k2=6, lambda=0.3) on random 512-d unit
features at two sizes: a small one (500 queries x 2,500 gallery) and Market-1501's test set
(3,368 queries x 15,913 gallery, 19,281 images in all), with the blocked distance products
alone for scale. Memory is the peak resident set size above the level before the call,
sampled every 5 ms from ``/proc/self/statm`` (Linux), next to the estimate from the sizes.

``--clustered`` uses identity-clustered features with labels instead (``bench_eval``'s problem,
its "weak model" noise): more k-reciprocal neighbours, so more non-zeros in the encodings and
a slower Jaccard stage, and it prints mAP / rank-1 before and after re-ranking.

Usage::

    python bench/bench_rerank.py --quick     # small size only (a few seconds)
    python bench/bench_rerank.py             # small + Market-1501 size
    python bench/bench_rerank.py --repeats 3 --threads 1   # on a busy machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from fedreid.evaluation import evaluate_ranking
from fedreid.evaluation.rerank import _PAIR_BUDGET, rerank

SIZES = {"small": (500, 2500), "market1501": (3368, 15913)}


class PeakRSS:
    """Peak resident set size above the starting level while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.base


def estimate_bytes(
    num_query: int, num_gallery: int, chunk_size: int, k1: int = 20, k2: int = 6
) -> int:
    """Rough peak from the sizes: the result, the distance blocks, two ``[512, N]`` int32
    scratch tables, the encodings after query expansion (``k2 (k1 + 1)`` entries a row, 20
    bytes each, twice while deduplicated) and the Jaccard pairs (~16 bytes each, capped by the
    budget), assuming each query entry meets ``k2 (k1 + 1) G / N`` gallery entries."""
    n = num_query + num_gallery
    per_row = k2 * (k1 + 1)
    result = 4 * num_query * num_gallery
    scratch = 2 * 4 * min(chunk_size, 512) * (n + 1) + 3 * 4 * chunk_size**2
    encodings = 2 * 20 * n * per_row
    pairs = min(_PAIR_BUDGET, int(num_query * per_row * per_row * num_gallery / n))
    return result + scratch + encodings + 16 * pairs


def random_features(num: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(num, dim, generator=gen), dim=1)


def make_features(
    num_query: int, num_gallery: int, dim: int, clustered: bool
) -> dict[str, torch.Tensor]:
    """Query/gallery features (and, when clustered, the labels of a ReID problem)."""
    if clustered:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_eval import make_problem

        scale = num_gallery / 15913
        return make_problem(
            num_query=num_query,
            num_gallery=num_gallery,
            num_ids=max(10, min(num_query, int(751 * scale))),
            num_distractors=int(2798 * scale),
            dim=dim,
            noise=0.12,  # bench_eval's "weak model": re-ranking has room to help
        )
    gen = torch.Generator().manual_seed(0)
    return {
        "query_feats": random_features(num_query, dim, gen),
        "gallery_feats": random_features(num_gallery, dim, gen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small size only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="time the min of N calls")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--clustered", action="store_true", help="identity-clustered features")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"{'clustered' if args.clustered else 'random unit'} {args.dim}-d features, "
        f"chunk_size {args.chunk_size}"
    )
    sizes = ["small"] if args.quick else list(SIZES)
    for name in sizes:
        num_query, num_gallery = SIZES[name]
        problem = make_features(num_query, num_gallery, args.dim, args.clustered)
        q, g = problem["query_feats"], problem["gallery_feats"]
        feats = torch.cat([q, g])
        start = time.perf_counter()
        for lo in range(0, len(feats), 512):
            feats[lo : lo + 512] @ feats.T
        matmul_s = time.perf_counter() - start
        times = []
        with PeakRSS() as mem:
            for _ in range(args.repeats):
                start = time.perf_counter()
                dist = rerank(q, g, chunk_size=args.chunk_size)
                times.append(time.perf_counter() - start)
        seconds = min(times)
        spread = f" (min of {len(times)}, median {statistics.median(times):.2f} s)"
        assert dist.shape == (num_query, num_gallery) and bool(torch.isfinite(dist).all())
        est = estimate_bytes(num_query, num_gallery, args.chunk_size)
        print(
            f"{name}: {num_query} x {num_gallery} ({len(feats)} images): rerank {seconds:.2f} s"
            f"{spread if len(times) > 1 else ''} "
            f"(the full distance products alone {matmul_s:.2f} s); peak memory "
            f"+{mem.extra_bytes / 2**20:.0f} MiB measured (RSS), ~{est / 2**20:.0f} MiB estimated"
        )
        if args.clustered:
            labels = {k: v for k, v in problem.items() if not k.endswith("feats")}
            before = evaluate_ranking(**problem)
            after = evaluate_ranking(None, None, **labels, distmat=dist)
            print(
                f"  mAP {before['mAP']:.4f} -> {after['mAP']:.4f} re-ranked, rank-1 "
                f"{before['rank1']:.4f} -> {after['rank1']:.4f}"
            )
        del dist, feats


if __name__ == "__main__":
    main()
