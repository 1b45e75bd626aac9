"""The in-memory description of a ReID dataset: lists of ``(path, pid, camid)`` per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Item = tuple[str, int, int]
"""One image: its file path, person id and camera id."""


@dataclass
class ReIDDataset:
    """A ReID dataset split into train / query / gallery.

    Train pids are relabelled to ``0..num_train_pids-1``; query and gallery keep the
    original pids (0 = distractor in Market-1501 conventions), as ranking needs only equality.

    Args:
        name: short name used in logs and results (for example ``"market1501"``).
        root: the folder the dataset was read from.
        train, query, gallery: lists of ``(path, pid, camid)``.
    """

    name: str
    root: Path
    train: list[Item] = field(default_factory=list)
    query: list[Item] = field(default_factory=list)
    gallery: list[Item] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the size of this client's classifier head)."""
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of cameras seen in the training split."""
        return len({cam for _, _, cam in self.train})

    def summary(self) -> dict[str, int]:
        """Counts for the per-client table: identities, images, cameras, query, gallery."""
        cams = {c for split in (self.train, self.query, self.gallery) for _, _, c in split}
        return {
            "train_ids": self.num_train_pids,
            "train_images": len(self.train),
            "cameras": len(cams),
            "query": len(self.query),
            "gallery": len(self.gallery),
        }


def _decode(path: str) -> str | None:
    """None if the image decodes completely, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # the whole file: a truncated JPEG passes verify() but fails here
            if img.width < 1 or img.height < 1:
                return "empty image"
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def verify_images(dataset: ReIDDataset) -> None:
    """Decode every image completely (two threads: PIL releases the GIL while decoding), so a
    corrupt or truncated file fails here, at start, with one line naming it, instead of
    failing one client in every round."""
    from concurrent.futures import ThreadPoolExecutor

    from fedreid.errors import DatasetError

    paths = [p for split in (dataset.train, dataset.query, dataset.gallery) for p, _, _ in split]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for path, reason in zip(paths, pool.map(_decode, paths, chunksize=64), strict=True):
            if reason is not None:
                raise DatasetError(f"{dataset.name}: corrupt or unreadable image {path} ({reason})")


def unmatched_queries(dataset: ReIDDataset) -> int:
    """Queries without a valid gallery match (same identity seen by another camera): the
    evaluation protocol skips them, so they are counted and reported at start."""
    seen: dict[int, set[int]] = {}
    for _, pid, cam in dataset.gallery:
        seen.setdefault(pid, set()).add(cam)
    return sum(1 for _, pid, cam in dataset.query if not (seen.get(pid, set()) - {cam}))


def relabel(items: list[Item]) -> list[Item]:
    """Map the pids of ``items`` to ``0..N-1`` in sorted order of the original pids."""
    mapping = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, mapping[pid], cam) for path, pid, cam in items]
