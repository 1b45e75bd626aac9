"""How hard is the synthetic benchmark? Colour-histogram baselines, per domain.

Why: if colour statistics solved the problem, the benchmark would not test ReID at all.
Each image becomes a joint HSV colour histogram (8x8x8 bins), square-rooted (Hellinger, so
the largest bin, usually background, does not swamp the rest) and L2-normalised; query and
gallery are ranked by cosine distance under the Market-1501 protocol
(:func:`fedreid.evaluation.evaluate_ranking`). Two variants are printed side by side:

* ``whole``: one histogram of the whole image;
* ``centre``: the middle half of the columns (where the person stands), one histogram per
  horizontal third (head/torso/legs), the classic stronger hand-made ReID colour feature.

"chance" is the rank-1 of a random ranking, about 1 / (number of test identities).

Usage::

    python bench/difficulty.py --root data/synthetic/default --preset default --seed 0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedreid.data import load_market
from fedreid.data.synthetic import PRESETS, domain_names, generate
from fedreid.data.types import Item
from fedreid.evaluation import evaluate_ranking

VARIANTS = {"whole": {"centre": 1.0, "stripes": 1}, "centre": {"centre": 0.5, "stripes": 3}}


def colour_histogram(
    path: str, *, bins: int = 8, centre: float = 1.0, stripes: int = 1, power: float = 0.5
) -> np.ndarray:
    """Joint ``bins**3`` HSV histogram per horizontal stripe, ``** power``, L2-normalised.

    Args:
        path: image file.
        bins: bins per channel.
        centre: fraction of the columns kept, centred (1.0 = the whole width).
        stripes: horizontal bands, one histogram each, concatenated.
        power: 0.5 is the Hellinger map; 1.0 keeps raw counts.
    """
    with Image.open(path) as img:
        arr = np.asarray(img.convert("HSV"), dtype=np.int64)
    margin = round(arr.shape[1] * (1.0 - centre) / 2)
    if margin:
        arr = arr[:, margin:-margin]
    q = arr * bins // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    parts = [
        np.bincount(band.ravel(), minlength=bins**3).astype(np.float32)
        for band in np.array_split(codes, stripes, axis=0)
    ]
    feat = np.concatenate(parts) ** power
    return feat / max(float(np.linalg.norm(feat)), 1e-12)


def split_tensors(
    items: Sequence[Item], **options: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histogram features ``[N, D]`` float32 and pids, camids ``[N]`` int64 of a split."""
    feats = np.stack([colour_histogram(path, **options) for path, _, _ in items])
    pids = torch.tensor([pid for _, pid, _ in items], dtype=torch.int64)
    cams = torch.tensor([cam for _, _, cam in items], dtype=torch.int64)
    return torch.from_numpy(feats), pids, cams


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the preset if needed, then print rank-1 / mAP of both baselines per domain."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="synthetic benchmark folder")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = generate(args.root, args.preset, args.seed, progress=True)
    print(f"benchmark ready in {time.perf_counter() - start:.1f} s: {root}\n")
    head = f"{'domain':<14}{'ids':>5}{'query':>7}{'gallery':>9}{'chance':>8}"
    cols = "".join(f"{f'{v} r1':>11}{f'{v} mAP':>11}" for v in VARIANTS)
    print(head + cols)
    print("-" * len(head + cols))
    scores: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for name in domain_names(args.preset):
        ds = load_market(root / name)
        n_ids = len({pid for _, pid, _ in ds.query})
        row = f"{name:<14}{n_ids:>5}{len(ds.query):>7}{len(ds.gallery):>9}{1 / n_ids:>8.1%}"
        for variant, options in VARIANTS.items():
            qf, qp, qc = split_tensors(ds.query, **options)
            gf, gp, gc = split_tensors(ds.gallery, **options)
            res = evaluate_ranking(qf, gf, qp, gp, qc, gc)
            scores[variant].append((res["rank1"], res["mAP"]))
            row += f"{res['rank1']:>11.1%}{res['mAP']:>11.1%}"
        print(row)
    print("-" * len(head + cols))
    avg = "".join(
        f"{np.mean([r for r, _ in s]):>11.1%}{np.mean([m for _, m in s]):>11.1%}"
        for s in scores.values()
    )
    print(f"{'average':<{len(head)}}{avg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
