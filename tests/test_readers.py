"""Tests of the real-dataset readers on tiny fixtures with each dataset's real naming."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedreid.data.market import load_market
from fedreid.data.readers import (
    DATASETS,
    available_datasets,
    load_dataset,
    load_public_images,
    register_dataset,
)
from fedreid.data.types import ReIDDataset
from fedreid.errors import DatasetError

try:  # tests/ as a package (rootdir on sys.path) or as a plain folder (pytest's default)
    from tests import fixtures_reid as fx
except ImportError:  # pragma: no cover - depends on how pytest was started
    import fixtures_reid as fx  # type: ignore[no-redef]


def _check_common(ds: ReIDDataset) -> None:
    """The contract every reader keeps."""
    train_pids = sorted({pid for _, pid, _ in ds.train})
    assert train_pids == list(range(len(train_pids)))  # relabelled 0..N-1
    for split in (ds.train, ds.query, ds.gallery):
        assert split, "every split is non-empty"
        for path, pid, cam in split:
            assert Path(path).is_file()
            assert pid != -1
            assert cam >= 0


def _one_line(err: pytest.ExceptionInfo[DatasetError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_has_torchreid_keys_and_extras() -> None:
    keys = set(available_datasets())
    expected = {
        "market1501",
        "dukemtmcreid",
        "cuhk03",
        "cuhk03_labeled",
        "cuhk03_detected",
        "msmt17",
        "cuhk01",
        "cuhk02",
        "viper",
        "prid",
        "ilids",
        "3dpes",
        "fedreid",
        "market",
        "synthetic",
    }
    assert expected <= keys
    assert available_datasets() == sorted(keys)


def test_register_dataset_adds_and_refuses_duplicates(tmp_path: Path) -> None:
    @register_dataset("unit_test_dummy")
    def _reader(root: Path, *, seed: int = 0) -> ReIDDataset:
        return load_market(root, name="dummy")

    try:
        base = fx.build_market1501(tmp_path, sub="m")
        assert load_dataset("UNIT_TEST_DUMMY", base).name == "dummy"
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("unit_test_dummy")(_reader)
    finally:
        DATASETS.pop("unit_test_dummy", None)


def test_unknown_dataset_and_option(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nope'") as err:
        load_dataset("nope", tmp_path)
    assert "market1501" in _one_line(err)
    with pytest.raises(DatasetError, match="unknown option") as err:
        load_dataset("viper", tmp_path, variant="labeled")
    _one_line(err)


# --------------------------------------------------------------------------------------------
# Market-1501 layout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub", ["market1501/Market-1501-v15.09.15", "market1501", "Market-1501-v15.09.15", "Market"]
)
def test_market1501_counts_and_subfolders(tmp_path: Path, sub: str) -> None:
    base = fx.build_market1501(tmp_path, sub=sub)
    ds = load_dataset("market1501", tmp_path)
    assert ds.name == "market1501" and ds.root == base
    _check_common(ds)
    assert (len(ds.train), ds.num_train_pids) == (6, 3)
    assert len(ds.query) == 2 and len(ds.gallery) == 4
    assert {c for _, _, c in ds.train} == {0, 1, 2, 3, 5}  # cameras 1,2,3,4,6 on disk
    assert sorted(p for _, p, _ in ds.gallery) == [0, 20, 20, 21]  # distractor kept
    assert load_dataset("market1501", base).summary() == ds.summary()  # dataset folder itself


def test_market_generic_aliases_match_load_market(tmp_path: Path) -> None:
    base = fx.build_market1501(tmp_path, sub="client_0")
    for key in ("market", "synthetic"):
        ds = load_dataset(key, base)
        ref = load_market(base)
        assert (ds.train, ds.query, ds.gallery) == (ref.train, ref.query, ref.gallery)


def test_duke(tmp_path: Path) -> None:
    fx.build_duke(tmp_path)
    ds = load_dataset("dukemtmcreid", tmp_path)
    _check_common(ds)
    assert ds.summary() == {
        "train_ids": 3,
        "train_images": 6,
        "cameras": 6,
        "query": 2,
        "gallery": 4,
    }


@pytest.mark.parametrize(
    ("key", "options", "variant"),
    [
        ("cuhk03", {}, "detected"),
        ("cuhk03", {"variant": "labeled"}, "labeled"),
        ("cuhk03_labeled", {}, "labeled"),
        ("cuhk03_detected", {}, "detected"),
    ],
)
def test_cuhk03_np_variants(tmp_path: Path, key: str, options: dict, variant: str) -> None:
    fx.build_cuhk03_np(tmp_path, "detected")
    fx.build_cuhk03_np(tmp_path, "labeled")
    ds = load_dataset(key, tmp_path, **options)
    _check_common(ds)
    assert ds.root == tmp_path / "cuhk03-np" / variant
    assert ds.name == ("cuhk03" if variant == "detected" else "cuhk03_labeled")
    assert (len(ds.train), ds.num_train_pids, len(ds.query), len(ds.gallery)) == (4, 2, 2, 3)
    assert {c for split in (ds.train, ds.query, ds.gallery) for _, _, c in split} == {0, 1}


def test_cuhk03_bad_variant_and_fedreid_folder_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="variant"):
        load_dataset("cuhk03", tmp_path, variant="both")
    fx.build_cuhk03_np(tmp_path, "detected", sub="x")
    shutil.move(tmp_path / "x" / "detected", tmp_path / "cuhk03-np-detected")
    assert load_dataset("cuhk03", tmp_path).root == tmp_path / "cuhk03-np-detected"


# --------------------------------------------------------------------------------------------
# MSMT17
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_lists(tmp_path: Path, version: str) -> None:
    base = fx.build_msmt17(tmp_path, version)
    ds = load_dataset("msmt17", tmp_path)
    _check_common(ds)
    assert ds.root == base
    assert len(ds.train) == len(fx.MSMT_TRAIN) + len(fx.MSMT_VAL)  # train + val
    assert ds.num_train_pids == 3
    assert [c for _, _, c in ds.query] == [c - 1 for _, c in fx.MSMT_QUERY]
    assert [p for _, p, _ in ds.gallery] == [p for p, _ in fx.MSMT_GALLERY]
    assert {c for _, _, c in ds.gallery} == {10, 11, 14}
    only_train = load_dataset("msmt17", tmp_path, combine_val=False)
    assert len(only_train.train) == len(fx.MSMT_TRAIN)


def test_msmt17_missing_list_and_malformed_line(tmp_path: Path) -> None:
    base = fx.build_msmt17(tmp_path)
    (base / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match="missing list file") as err:
        load_dataset("msmt17", tmp_path)
    assert str(base / "list_val.txt") in _one_line(err)
    (base / "list_val.txt").write_text("0000/0000_001_01_x.jpg\n")
    with pytest.raises(DatasetError, match="malformed line 1"):
        load_dataset("msmt17", tmp_path)
    (base / "list_val.txt").write_text("0000/notmsmt.jpg 0\n")
    with pytest.raises(DatasetError, match="unparsable file name"):
        load_dataset("msmt17", tmp_path)


# --------------------------------------------------------------------------------------------
# Seeded splits: CUHK01, VIPeR, PRID2011, 3DPeS, i-LIDS
# --------------------------------------------------------------------------------------------


def _orig_train_ids(ds: ReIDDataset, parse) -> set[int]:
    return {parse(Path(p).name) for p, _, _ in ds.train}


def _test_ids(ds: ReIDDataset) -> set[int]:
    return {pid for _, pid, _ in ds.query} | {pid for _, pid, _ in ds.gallery}


def _assert_seeded(key: str, root: Path, **options: object) -> None:
    """Same seed: same split; some other seed: a different one."""
    a = load_dataset(key, root, seed=0, **options)
    b = load_dataset(key, root, seed=0, **options)
    assert (a.train, a.query, a.gallery) == (b.train, b.query, b.gallery)
    others = [load_dataset(key, root, seed=s, **options) for s in range(1, 6)]
    assert any((o.train, o.query) != (a.train, a.query) for o in others)


def test_cuhk01_split(tmp_path: Path) -> None:
    fx.build_cuhk01(tmp_path)
    ds = load_dataset("cuhk01", tmp_path, seed=3)
    _check_common(ds)
    n_train = fx.CUHK01_IDS // 2
    assert (ds.num_train_pids, len(ds.train)) == (n_train, 4 * n_train)
    n_test = fx.CUHK01_IDS - n_train
    assert len(ds.query) == len(ds.gallery) == 2 * n_test
    assert {c for _, _, c in ds.query} == {0} and {c for _, _, c in ds.gallery} == {1}
    train_ids = _orig_train_ids(ds, lambda n: int(n[:4]))
    assert not train_ids & _test_ids(ds)
    assert train_ids | _test_ids(ds) == set(range(1, fx.CUHK01_IDS + 1))
    _assert_seeded("cuhk01", tmp_path)


def test_viper_split(tmp_path: Path) -> None:
    fx.build_viper(tmp_path)
    ds = load_dataset("viper", tmp_path, seed=1)
    _check_common(ds)
    half = fx.VIPER_IDS // 2
    assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (
        half,
        2 * half,
        half,
        half,
    )
    assert {c for _, _, c in ds.query} == {0} and {c for _, _, c in ds.gallery} == {1}
    assert sorted(p for _, p, _ in ds.query) == sorted(p for _, p, _ in ds.gallery)
    assert not _orig_train_ids(ds, lambda n: int(n.split("_")[0])) & _test_ids(ds)
    _assert_seeded("viper", tmp_path)


def test_viper_mismatched_cameras(tmp_path: Path) -> None:
    base = fx.build_viper(tmp_path)
    next((base / "cam_b").iterdir()).unlink()
    with pytest.raises(DatasetError, match="different identities") as err:
        load_dataset("viper", tmp_path)
    assert str(base) in _one_line(err)


@pytest.mark.parametrize("mode", ["single_shot", "multi_shot"])
def test_prid_split(tmp_path: Path, mode: str) -> None:
    frames = 1 if mode == "single_shot" else 2
    fx.build_prid(tmp_path, mode, frames=frames)
    ds = load_dataset("prid", tmp_path, seed=2, mode=mode)
    _check_common(ds)
    half = fx.PRID_BOTH // 2
    assert ds.num_train_pids == half and len(ds.train) == 2 * half * frames
    assert len(ds.query) == half * frames
    assert len(ds.gallery) == (half + fx.PRID_ONLY_B) * frames
    assert {c for _, _, c in ds.query} == {0} and {c for _, _, c in ds.gallery} == {1}
    query_ids = {p for _, p, _ in ds.query}
    only_b = set(range(fx.PRID_BOTH + fx.PRID_ONLY_A + 1, 12))
    assert {p for _, p, _ in ds.gallery} == query_ids | only_b
    assert query_ids <= set(range(1, fx.PRID_BOTH + 1))

    def parse(name: str) -> int:
        return int(name.split("_")[1].split(".")[0])

    train_ids = {
        parse(Path(p).name if mode == "single_shot" else Path(p).parent.name)
        for p, _, _ in ds.train
    }
    assert not train_ids & _test_ids(ds)
    _assert_seeded("prid", tmp_path, mode=mode)


def test_prid_bad_mode_and_missing_camera(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="mode"):
        load_dataset("prid", tmp_path, mode="video")
    base = fx.build_prid(tmp_path)
    shutil.rmtree(base / "cam_b")
    with pytest.raises(DatasetError, match="missing folder") as err:
        load_dataset("prid2011", tmp_path)
    assert str(base / "cam_b") in _one_line(err)


def test_3dpes_split(tmp_path: Path) -> None:
    fx.build_3dpes(tmp_path)
    ds = load_dataset("3dpes", tmp_path, seed=0)
    _check_common(ds)
    n_ids = len(fx.PES3D_IMAGES)
    assert ds.num_train_pids == n_ids // 2
    n_images = sum(map(len, fx.PES3D_IMAGES.values()))
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == n_images  # every image used once
    assert not _orig_train_ids(ds, lambda n: int(n.split("_")[0])) & _test_ids(ds)
    assert {p for _, p, _ in ds.query} <= {p for _, p, _ in ds.gallery}
    # camera tokens 1,2,3,5,6,8,10 -> 0..6 in numeric order
    every = ds.train + ds.query + ds.gallery
    cams = {(Path(p).name.split("_")[1], c) for p, _, c in every}
    assert cams == {(t, i) for i, t in enumerate(["1", "2", "3", "5", "6", "8", "10"])}
    _assert_seeded("3dpes", tmp_path)


def test_ilids_split(tmp_path: Path) -> None:
    fx.build_ilids(tmp_path)
    ds = load_dataset("ilids", tmp_path, seed=4)
    _check_common(ds)
    n_ids = len(fx.ILIDS_IMAGES)
    assert ds.num_train_pids == n_ids // 2
    test_ids = _test_ids(ds)
    assert not _orig_train_ids(ds, lambda n: int(n[:4])) & test_ids
    multi = {p for p in test_ids if fx.ILIDS_IMAGES[p] >= 2}
    assert sorted(p for _, p, _ in ds.query) == sorted(multi)  # one query per test id
    for path, _pid, cam in ds.query + ds.gallery + ds.train:
        assert cam == int(Path(path).stem[4:]) - 1  # image index stands in for the camera
    q = {pid: cam for _, pid, cam in ds.query}
    assert all(q[pid] != cam for _, pid, cam in ds.gallery if pid in q)
    _assert_seeded("ilids", tmp_path)


def test_unparsable_name_in_seeded_dataset(tmp_path: Path) -> None:
    base = fx.build_cuhk01(tmp_path)
    bad = fx.write_image(base / "campus" / "photo.png")
    with pytest.raises(DatasetError, match="unparsable file name") as err:
        load_dataset("cuhk01", tmp_path)
    assert str(bad) in _one_line(err)


# --------------------------------------------------------------------------------------------
# CUHK02 and public images
# --------------------------------------------------------------------------------------------


def test_cuhk02_protocol(tmp_path: Path) -> None:
    fx.build_cuhk02(tmp_path)
    ds = load_dataset("cuhk02", tmp_path)
    _check_common(ds)
    ids = fx.CUHK02_IDS_PER_PAIR
    assert ds.num_train_pids == 4 * ids  # same pid numbers in P1..P4 are different people
    assert len(ds.train) == 4 * ids * 2 * 2
    assert {c for _, _, c in ds.train} == set(range(8))
    assert {c for _, _, c in ds.query} == {8} and {c for _, _, c in ds.gallery} == {9}
    assert {p for _, p, _ in ds.query} == {p for _, p, _ in ds.gallery} == set(range(1, ids + 1))


def test_cuhk02_missing_test_pair(tmp_path: Path) -> None:
    base = fx.build_cuhk02(tmp_path, pairs=4)
    with pytest.raises(DatasetError, match="dataset layout not found") as err:
        load_dataset("cuhk02", tmp_path)
    assert str(base / "P5") in _one_line(err)


def test_load_public_images(tmp_path: Path) -> None:
    base = fx.build_cuhk02(tmp_path)
    fx.write_image(base / ".hidden" / "x.png")
    (base / "notes.txt").write_text("not an image")
    expected = 5 * 2 * fx.CUHK02_IDS_PER_PAIR * 2
    by_path = load_public_images(base)
    assert len(by_path) == expected and by_path == sorted(by_path)
    assert load_public_images("cuhk02", data_root=tmp_path) == by_path
    fx.build_fedreid(tmp_path, name="cuhk02")  # FedReID's pytorch/train_all wins if present
    assert len(load_public_images("cuhk02", data_root=tmp_path)) == 6
    with pytest.raises(DatasetError, match="not found") as err:
        load_public_images("cuhk02", data_root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cuhk02") in _one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images under"):
        load_public_images(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        load_public_images(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# FedReID pytorch/ layout
# --------------------------------------------------------------------------------------------


def test_fedreid_market_style(tmp_path: Path) -> None:
    base = fx.build_fedreid(tmp_path, name="Market", style="market")
    ds = load_dataset("fedreid", base)
    assert ds.name == "Market" and ds.root == base / "pytorch"
    _check_common(ds)
    assert (len(ds.train), ds.num_train_pids, len(ds.query), len(ds.gallery)) == (6, 3, 2, 3)
    assert [c for _, _, c in ds.train] == [0, 1, 2, 3, 4, 5]
    assert sorted(p for _, p, _ in ds.gallery) == [0, 20, 21]  # junk dropped, distractor kept
    assert load_dataset("fedreid", base / "pytorch").summary() == ds.summary()


def test_fedreid_openreid_style(tmp_path: Path) -> None:
    base = fx.build_fedreid(tmp_path, name="viper", style="openreid")
    ds = load_dataset("fedreid", base)
    assert ds.name == "viper"
    assert (len(ds.train), ds.num_train_pids, len(ds.query), len(ds.gallery)) == (6, 3, 2, 3)
    assert [c for _, _, c in ds.train] == [0, 1, 0, 1, 0, 1]  # cam_K is already 0-based
    assert {c for _, _, c in ds.query} == {0} and {c for _, _, c in ds.gallery} == {1}
    assert sorted(p for _, p, _ in ds.query) == [3, 4]


def test_fedreid_bad_layouts(tmp_path: Path) -> None:
    base = fx.build_fedreid(tmp_path, name="Market")
    shutil.rmtree(base / "pytorch" / "query")
    with pytest.raises(DatasetError, match="missing folder") as err:
        load_dataset("fedreid", base)
    assert str(base / "pytorch" / "query") in _one_line(err)
    fx.write_image(base / "pytorch" / "query" / "person_a" / "0001_c1.jpg")
    with pytest.raises(DatasetError, match="not an integer pid"):
        load_dataset("fedreid", base)
    shutil.rmtree(base / "pytorch" / "query")
    fx.write_image(base / "pytorch" / "query" / "0001" / "nocamera.jpg")
    with pytest.raises(DatasetError, match="unparsable file name"):
        load_dataset("fedreid", base)


# --------------------------------------------------------------------------------------------
# Errors shared by all readers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(set(available_datasets()) - {"market", "synthetic"}))
def test_missing_root_names_path(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DatasetError) as err:
        load_dataset(key, missing)
    assert str(missing) in _one_line(err)


@pytest.mark.parametrize("key", sorted(set(available_datasets()) - {"market", "synthetic"}))
def test_empty_root_names_tried_paths(tmp_path: Path, key: str) -> None:
    with pytest.raises(DatasetError, match="dataset layout not found") as err:
        load_dataset(key, tmp_path)
    assert str(tmp_path) in _one_line(err)


def test_market_missing_query_names_folder(tmp_path: Path) -> None:
    base = fx.build_market1501(tmp_path)
    shutil.rmtree(base / "query")
    with pytest.raises(DatasetError, match="missing folder") as err:
        load_dataset("market1501", tmp_path)
    assert str(base / "query") in _one_line(err)


def test_no_images_names_folder(tmp_path: Path) -> None:
    base = tmp_path / "viper" / "VIPeR"
    (base / "cam_a").mkdir(parents=True)
    (base / "cam_b").mkdir()
    with pytest.raises(DatasetError, match="no images in") as err:
        load_dataset("viper", tmp_path)
    assert str(base / "cam_a") in _one_line(err)
