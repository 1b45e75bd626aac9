"""Matplotlib figures of a run: metrics per client per round and a final per-client bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(rounds: list[dict[str, Any]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in rounds:
        for name, m in r["clients"].items():
            if key in m:
                xs, ys = out.setdefault(name, ([], []))
                xs.append(r["round"])
                ys.append(100 * m[key])
    return out


def plot_run(payload: dict[str, Any], output_dir: Path) -> list[Path]:
    """Write ``curves.png`` (rank-1 and mAP per client per round) and ``final.png``."""
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in zip(axes, ("rank1", "mAP"), ("rank-1 (%)", "mAP (%)"), strict=True):
        for name, (xs, ys) in sorted(_series(payload["rounds"], key).items()):
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(output_dir / "curves.png", dpi=110)
    plt.close(fig)
    written.append(output_dir / "curves.png")

    final = payload.get("final") or {}
    if final:
        names = sorted(final)
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        width = 0.2
        keys = [
            k
            for k in ("rank1", "mAP", "local_rank1", "local_mAP")
            if any(k in final[n] for n in names)
        ]
        for i, key in enumerate(keys):
            ax.bar(
                [j + i * width for j in range(len(names))],
                [100 * final[n].get(key, 0.0) for n in names],
                width,
                label=key,
            )
        ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("%")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(output_dir / "final.png", dpi=110)
        plt.close(fig)
        written.append(output_dir / "final.png")
    return written
