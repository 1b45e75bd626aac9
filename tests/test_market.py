"""The Market-1501 reader: relabelling, junk/distractors, and one-line errors naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedreid.data import ImageDataset, build_transforms, load_market
from fedreid.errors import DatasetError


def test_reader_counts_and_relabelling(market_root: Path) -> None:
    ds = load_market(market_root)
    assert len(ds.train) == 6 * 2 * 2
    assert sorted({pid for _, pid, _ in ds.train}) == list(range(6))
    assert {cam for _, _, cam in ds.train} == {0, 1}
    assert len(ds.query) == 6
    assert any(pid == 0 for _, pid, _ in ds.gallery), "distractors stay in the gallery"
    assert ds.summary()["train_ids"] == 6


def test_junk_dropped(market_root: Path) -> None:
    src = next((market_root / "bounding_box_test").iterdir())
    src.rename(src.with_name("-1_c1s1_000000_00.jpg"))
    ds = load_market(market_root)
    assert all(pid != -1 for _, pid, _ in ds.gallery)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found.*nowhere"):
        load_market(tmp_path / "nowhere")


def test_missing_split(market_root: Path) -> None:
    for f in (market_root / "query").iterdir():
        f.unlink()
    (market_root / "query").rmdir()
    with pytest.raises(DatasetError, match="missing folder.*query"):
        load_market(market_root)


def test_empty_split(market_root: Path) -> None:
    for f in (market_root / "bounding_box_train").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="no images in .*bounding_box_train"):
        load_market(market_root)


def test_unparsable_name(market_root: Path) -> None:
    (market_root / "query" / "person.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="unparsable file name.*person.jpg"):
        load_market(market_root)


def test_corrupt_image(market_root: Path) -> None:
    bad = market_root / "bounding_box_train" / "0001_c1s1_000999_00.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = load_market(market_root)
    idx = next(i for i, (p, _, _) in enumerate(ds.train) if p.endswith("000999_00.jpg"))
    loader = ImageDataset(ds.train, build_transforms(32, 16, train=True))
    with pytest.raises(DatasetError, match="corrupt image.*000999_00.jpg"):
        loader[idx]


def test_transforms_shape(market_root: Path) -> None:
    ds = load_market(market_root)
    img, pid, cam = ImageDataset(ds.train, build_transforms(64, 32, train=True))[0]
    assert tuple(img.shape) == (3, 64, 32)
    assert isinstance(pid, int) and isinstance(cam, int)
