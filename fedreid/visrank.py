"""Ranked-result pictures (torchreid's visrank): a query, then its top-k gallery images.

The ranking is :func:`fedreid.evaluation.ranking.ranked_indices` on the same distances
``fedreid eval`` uses (cosine, or k-reciprocal re-ranked): gallery images of the query's identity
*and* camera are excluded, as in the evaluation protocol. Green border: the same identity
(a true match); red: another identity or a distractor. The query has a grey border.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from fedreid.data.types import Item

GREEN, RED, GREY, WHITE, BLACK = (
    (0, 170, 0),
    (220, 0, 0),
    (128, 128, 128),
    (255, 255, 255),
    (0, 0, 0),
)
BORDER = 4
GAP = 6
LABEL_H = 14


def pick_queries(num_query: int, num: int) -> list[int]:
    """``num`` query indices spread evenly over the query list (all when ``num`` >= it)."""
    if num <= 0 or num >= num_query:
        return list(range(num_query))
    return sorted({int(round(x)) for x in np.linspace(0, num_query - 1, num)})


def _cell(
    path: str, size: tuple[int, int], colour: tuple[int, int, int], label: str
) -> Image.Image:
    """One image at ``size`` (w, h) with a coloured border and a label above it."""
    w, h = size
    with Image.open(path) as img:
        pic = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    pic = ImageOps.expand(pic, border=BORDER, fill=colour)
    cell = Image.new("RGB", (pic.width, pic.height + LABEL_H), WHITE)
    cell.paste(pic, (0, LABEL_H))
    ImageDraw.Draw(cell).text((1, 1), label, fill=BLACK)
    return cell


def draw_ranking(
    query: Item,
    gallery: Sequence[Item],
    indices: Sequence[int],
    matches: Sequence[bool],
    out: Path,
    size: tuple[int, int] = (64, 128),
) -> Path:
    """Write ``out``: the query, a gap, then ``gallery[indices]`` left to right (rank 1 first).

    Args:
        query: the query item ``(path, pid, camid)``.
        gallery: the gallery items.
        indices: ranked gallery indices (``-1`` = no more valid items, skipped).
        matches: per index, whether it is a true match (same pid).
        out: the PNG to write.
        size: each picture's ``(width, height)`` in pixels.
    """
    cells = [_cell(query[0], size, GREY, f"query {query[1]}")]
    for rank, (idx, hit) in enumerate(zip(indices, matches, strict=True), start=1):
        if idx < 0:
            break
        cells.append(
            _cell(gallery[idx][0], size, GREEN if hit else RED, f"{rank}: {gallery[idx][1]}")
        )
    cw, ch = cells[0].size
    width = cw * len(cells) + GAP * (len(cells) - 1) + GAP * 2  # a wider gap after the query
    canvas = Image.new("RGB", (width, ch), WHITE)
    x = 0
    for i, cell in enumerate(cells):
        canvas.paste(cell, (x, 0))
        x += cw + (GAP * 3 if i == 0 else GAP)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
