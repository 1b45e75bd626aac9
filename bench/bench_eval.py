"""Benchmark: vectorised ranking evaluation vs the per-query loop, on a Market-1501-sized problem.

Builds a random problem with Market-1501's test-set shape (3,368 queries x 15,913 gallery
items, 512-d features, 751 identities, 6 cameras, 2,798 distractors with pid 0), with features
clustered by identity so the metrics are not trivial, then times side by side in one run:

- ``evaluate_ranking`` (everything included: distance matrix, ranks, metrics), median and
  minimum of several repeats, for three feature qualities: a trained-like model (true matches
  near the top: mAP about 0.67), a weak one (mAP about 0.18) and an untrained-like one (true
  matches spread over the whole ranking, the worst case), with the matmul alone for scale;
- ``evaluate_ranking_loop`` (the numpy per-query stable-argsort reference) on a subset of
  queries, extrapolated to all queries (it is linear in the number of queries);

and checks that the two give the same metrics on that subset. torchreid's Cython evaluator
cannot be installed here; its time is the figure quoted in the issue (about 2.9 s on this
machine class) and is printed as such, not measured.

Usage::

    python bench/bench_eval.py                 # 2 threads, as on the development machine
    python bench/bench_eval.py --loop-queries 3368 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fedreid.evaluation import cosine_distance, evaluate_ranking, evaluate_ranking_loop

TORCHREID_CYTHON_QUOTED_S = 2.9
"""torchreid's Cython ``evaluate_rank`` on this problem size, quoted in the issue (not measured)."""


def make_problem(
    seed: int = 0,
    num_query: int = 3368,
    num_gallery: int = 15913,
    num_ids: int = 751,
    num_distractors: int = 2798,
    num_cams: int = 6,
    dim: int = 512,
    noise: float = 0.09,
) -> dict[str, torch.Tensor]:
    """A random Market-1501-shaped query/gallery problem with identity-clustered features.

    Each identity has a random unit centre; each camera adds a shared offset (so the same
    camera looks alike, as in real data); each image adds isotropic noise with per-dimension
    scale ``noise``. Distractors are pure noise around random centres. Features are
    L2-normalised. Larger ``noise`` means a worse model.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=gen), dim=1)
    cam_offsets = 0.5 * torch.nn.functional.normalize(
        torch.randn(num_cams, dim, generator=gen), dim=1
    )

    def sample(pids: torch.Tensor, cams: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        x = centre + cam_offsets[cams] + noise * torch.randn(len(pids), dim, generator=gen)
        return torch.nn.functional.normalize(x, dim=1)

    # Gallery: every identity at least once, the rest spread unevenly; plus distractors.
    num_id_images = num_gallery - num_distractors
    extra = torch.multinomial(
        torch.rand(num_ids, generator=gen) + 0.2,
        num_id_images - num_ids,
        replacement=True,
        generator=gen,
    )
    g_idx = torch.cat([torch.arange(num_ids), extra])
    g_pids = g_idx + 1
    g_cams = torch.randint(0, num_cams, (num_id_images,), generator=gen)
    g_feats = sample(g_pids, g_cams, centres[g_idx])
    d_cams = torch.randint(0, num_cams, (num_distractors,), generator=gen)
    d_centres = torch.nn.functional.normalize(
        torch.randn(num_distractors, dim, generator=gen), dim=1
    )
    d_feats = sample(torch.zeros(num_distractors, dtype=torch.long), d_cams, d_centres)
    perm = torch.randperm(num_gallery, generator=gen)
    gallery = torch.cat([g_feats, d_feats])[perm]
    gallery_pids = torch.cat([g_pids, torch.zeros(num_distractors, dtype=torch.long)])[perm]
    gallery_cams = torch.cat([g_cams, d_cams])[perm]

    # Queries: every identity at least once, the rest spread evenly.
    q_idx = torch.cat(
        [torch.arange(num_ids), torch.randint(0, num_ids, (num_query - num_ids,), generator=gen)]
    )
    q_cams = torch.randint(0, num_cams, (num_query,), generator=gen)
    query = sample(q_idx + 1, q_cams, centres[q_idx])
    return {
        "query_feats": query,
        "gallery_feats": gallery,
        "query_pids": q_idx + 1,
        "gallery_pids": gallery_pids,
        "query_camids": q_cams,
        "gallery_camids": gallery_cams,
    }


def subset(problem: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` queries of a problem, with the whole gallery."""
    return {k: (v[:n] if k.startswith("query") else v) for k, v in problem.items()}


def time_runs(fn, repeats: int) -> tuple[float, float, object]:
    """Median and minimum wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def fmt(metrics: dict[str, float | int]) -> str:
    """One-line metrics summary."""
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


def main() -> None:
    """Run the benchmark and print times, ratios and the agreement check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--loop-queries",
        type=int,
        default=400,
        help="queries the loop reference is timed on (then extrapolated to all)",
    )
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    cases = {
        "trained-like model (noise 0.09)": 0.09,
        "weak model (noise 0.12)": 0.12,
        "untrained-like model (noise 0.2)": 0.2,
    }
    for name, noise in cases.items():
        problem = make_problem(noise=noise)
        nq, ng = len(problem["query_feats"]), len(problem["gallery_feats"])
        dim = problem["query_feats"].shape[1]
        print(f"\n== {name}: {nq} queries x {ng} gallery, {dim}-d ==")
        q, g = problem["query_feats"], problem["gallery_feats"]
        mm_med, mm_min, _ = time_runs(
            lambda q=q, g=g: [
                cosine_distance(q[i : i + args.chunk_size], g)
                for i in range(0, len(q), args.chunk_size)
            ],
            args.repeats,
        )
        vec_med, vec_min, vec = time_runs(
            lambda p=problem: evaluate_ranking(**p, chunk_size=args.chunk_size), args.repeats
        )
        dense_med, dense_min, dense = time_runs(
            lambda p=problem: evaluate_ranking(**p, chunk_size=args.chunk_size, method="dense"),
            args.repeats,
        )
        assert all(abs(vec[k] - dense[k]) <= 1e-9 for k in vec), (vec, dense)
        print(f"  metrics: {fmt(vec)}")
        print(f"distance matrix alone (matmul):       median {mm_med:.3f} s  min {mm_min:.3f} s")
        print(f"vectorised evaluate_ranking (auto):   median {vec_med:.3f} s  min {vec_min:.3f} s")
        print(
            f"vectorised, method='dense':           median {dense_med:.3f} s  min {dense_min:.3f} s"
        )

        n_loop = min(args.loop_queries, nq)
        small = subset(problem, n_loop)
        start = time.perf_counter()
        loop = evaluate_ranking_loop(**small)
        loop_s = (time.perf_counter() - start) * nq / n_loop
        note = "measured" if n_loop == nq else f"extrapolated from {n_loop} queries"
        print(f"loop reference evaluate_ranking_loop: {loop_s:.3f} s ({note})")
        print(
            f"torchreid Cython evaluator:           {TORCHREID_CYTHON_QUOTED_S:.3f} s "
            "(figure quoted in the issue, not measured: torchreid is not installable here)"
        )
        print(f"speed-up vs loop (median):      {loop_s / vec_med:6.1f}x")
        print(
            f"speed-up vs torchreid (median): {TORCHREID_CYTHON_QUOTED_S / vec_med:6.1f}x "
            "(against the quoted figure)"
        )
        check = evaluate_ranking(**small, chunk_size=args.chunk_size)
        diff = max(abs(check[k] - loop[k]) for k in loop)
        status = "OK" if diff <= 1e-9 else "MISMATCH"
        print(f"agreement on {n_loop} queries: max |vectorised - loop| = {diff:.1e} [{status}]")


if __name__ == "__main__":
    main()
