"""Reader for any folder in the Market-1501 layout (and the synthetic benchmark, which uses it).

Layout::

    root/bounding_box_train/PPPP_cCsS_FFFFFF_BB.jpg
    root/query/...
    root/bounding_box_test/...

``PPPP`` is the person id (-1 = junk, dropped; 0 = distractor, kept in the gallery),
``C`` the camera (1-based on disk, 0-based in memory).
"""

from __future__ import annotations

import re
from pathlib import Path

from fedreid.data.types import Item, ReIDDataset, relabel
from fedreid.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def list_images(folder: Path) -> list[Path]:
    """Sorted image files directly inside ``folder``; raises if the folder is missing or empty."""
    if not folder.is_dir():
        raise DatasetError(f"missing folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no images in {folder}")
    return files


def parse_market_name(path: Path) -> tuple[int, int]:
    """Return ``(pid, camid)`` from a Market-1501 file name; camid is 0-based."""
    match = _MARKET_NAME.match(path.name)
    if match is None:
        raise DatasetError(f"unparsable file name (expected PPPP_cC...): {path}")
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1:
        raise DatasetError(f"camera id must be >= 1 in file name: {path}")
    return pid, cam - 1


def read_market_split(folder: Path, *, keep_distractors: bool) -> list[Item]:
    """Read one split folder; junk (pid -1) is always dropped, distractors (pid 0) optionally."""
    items: list[Item] = []
    for path in list_images(folder):
        pid, cam = parse_market_name(path)
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        items.append((str(path), pid, cam))
    if not items:
        raise DatasetError(f"no labelled images in {folder}")
    return items


def load_market(root: str | Path, name: str | None = None) -> ReIDDataset:
    """Read a Market-1501-layout folder into a :class:`ReIDDataset`.

    Args:
        root: the dataset folder holding ``bounding_box_train/``, ``query/`` and
            ``bounding_box_test/``.
        name: name for logs; defaults to the folder name.

    Examples:
        >>> ds = load_market("data/synthetic/default/market")  # doctest: +SKIP
        >>> len(ds.train), ds.num_train_pids  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    train = read_market_split(root / "bounding_box_train", keep_distractors=False)
    query = read_market_split(root / "query", keep_distractors=False)
    gallery = read_market_split(root / "bounding_box_test", keep_distractors=True)
    return ReIDDataset(
        name=name or root.name, root=root, train=relabel(train), query=query, gallery=gallery
    )
