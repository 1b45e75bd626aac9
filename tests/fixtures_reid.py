"""Tiny on-disk ReID datasets with each dataset's real folder and file naming, for tests.

Every builder writes a handful of 8x4 images (JPEG, PNG or BMP by suffix, encoded once and
copied) under ``root`` in the dataset's conventional subfolder, and returns that dataset
folder. Pass ``root`` (the parent data folder) or the returned folder to the readers in
:mod:`fedreid.data.readers`. The constants next to each builder give the expected counts, so
other tests can reuse both.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from PIL import Image

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


@cache
def _image_bytes(suffix: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 60, 30)).save(buf, format=_FORMATS[suffix.lower()])
    return buf.getvalue()


def write_image(path: Path) -> Path:
    """Write a tiny valid image at ``path`` (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(path.suffix))
    return path


def _market_pid(pid: int) -> str:
    return "-1" if pid == -1 else f"{pid:04d}"


# --------------------------------------------------------------------------------------------
# Market-1501 layout datasets
# --------------------------------------------------------------------------------------------

MARKET_TRAIN = [(2, 1), (2, 3), (7, 2), (7, 6), (11, 1), (11, 4), (-1, 1)]
MARKET_QUERY = [(20, 1), (21, 2)]
MARKET_GALLERY = [(20, 2), (20, 5), (21, 3), (0, 4), (-1, 6)]
"""(pid, camera-on-disk) per image: 3 train ids / 6 train images (junk dropped); 2 queries;
4 gallery images (one distractor pid 0 kept, junk dropped)."""


def _market_layout(base: Path, fmt: str) -> Path:
    for folder, entries in (
        ("bounding_box_train", MARKET_TRAIN),
        ("query", MARKET_QUERY),
        ("bounding_box_test", MARKET_GALLERY),
    ):
        for i, (pid, cam) in enumerate(entries):
            write_image(base / folder / fmt.format(pid=_market_pid(pid), cam=cam, i=i))
    return base


def build_market1501(root: Path, sub: str = "market1501/Market-1501-v15.09.15") -> Path:
    """Market-1501: ``PPPP_cCsS_FFFFFF_BB.jpg`` under ``root/sub``."""
    return _market_layout(root / sub, "{pid}_c{cam}s1_{i:06d}_00.jpg")


def build_duke(root: Path, sub: str = "dukemtmc-reid/DukeMTMC-reID") -> Path:
    """DukeMTMC-reID: ``PPPP_cC_fFFFFFFF.jpg`` (same ids and cameras as Market's fixture)."""
    return _market_layout(root / sub, "{pid}_c{cam}_f{i:07d}.jpg")


def build_cuhk03_np(root: Path, variant: str = "detected", sub: str = "cuhk03-np") -> Path:
    """CUHK03-NP: ``cuhk03-np/<variant>/...`` with ``PPPP_cC_N.png``; cameras 1..2 only."""
    base = root / sub / variant
    for folder, entries in (
        ("bounding_box_train", [(1, 1), (1, 2), (3, 1), (3, 2)]),
        ("query", [(5, 1), (6, 2)]),
        ("bounding_box_test", [(5, 2), (6, 1), (8, 2)]),
    ):
        for i, (pid, cam) in enumerate(entries):
            write_image(base / folder / f"{pid:04d}_c{cam}_{i + 1}.png")
    return base


# --------------------------------------------------------------------------------------------
# MSMT17
# --------------------------------------------------------------------------------------------

MSMT_TRAIN = [(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
MSMT_VAL = [(0, 7), (2, 8)]
MSMT_QUERY = [(0, 9), (1, 10)]
MSMT_GALLERY = [(0, 11), (1, 12), (2, 15)]


def build_msmt17(root: Path, version: str = "MSMT17_V1") -> Path:
    """MSMT17: ``msmt17/<version>/{train,test}/PPPP/PPPP_NNN_CC_0303morning_FFFF_0.jpg``
    plus the four list files (``relative/path pid``). V2 uses ``mask_{train,test}_v2``."""
    base = root / "msmt17" / version
    train_dir, test_dir = (
        ("train", "test") if version == "MSMT17_V1" else ("mask_train_v2", "mask_test_v2")
    )
    counter = 0
    for list_name, folder, entries in (
        ("list_train.txt", train_dir, MSMT_TRAIN),
        ("list_val.txt", train_dir, MSMT_VAL),
        ("list_query.txt", test_dir, MSMT_QUERY),
        ("list_gallery.txt", test_dir, MSMT_GALLERY),
    ):
        lines = []
        for pid, cam in entries:
            counter += 1
            rel = f"{pid:04d}/{pid:04d}_{counter:03d}_{cam:02d}_0303morning_{counter:04d}_0.jpg"
            write_image(base / folder / rel)
            lines.append(f"{rel} {pid}")
        (base / list_name).write_text("\n".join(lines) + "\n")
    return base


# --------------------------------------------------------------------------------------------
# CUHK01, CUHK02
# --------------------------------------------------------------------------------------------

CUHK01_IDS = 7


def build_cuhk01(root: Path, n_ids: int = CUHK01_IDS) -> Path:
    """CUHK01: ``cuhk01/campus/PPPPNNN.png``, 4 images per id (1-2 view A, 3-4 view B)."""
    base = root / "cuhk01"
    for pid in range(1, n_ids + 1):
        for index in range(1, 5):
            write_image(base / "campus" / f"{pid:04d}{index:03d}.png")
    return base


CUHK02_IDS_PER_PAIR = 3


def build_cuhk02(root: Path, pairs: int = 5, ids: int = CUHK02_IDS_PER_PAIR) -> Path:
    """CUHK02: ``cuhk02/Dataset/P{k}/cam{1,2}/PPPP_NN.png``; pid numbers repeat across pairs,
    2 images per id and camera."""
    base = root / "cuhk02" / "Dataset"
    for k in range(1, pairs + 1):
        for view in (1, 2):
            for pid in range(1, ids + 1):
                for n in range(2):
                    write_image(base / f"P{k}" / f"cam{view}" / f"{pid:04d}_{view}{n}.png")
    return base


# --------------------------------------------------------------------------------------------
# VIPeR, PRID2011
# --------------------------------------------------------------------------------------------

VIPER_IDS = 8


def build_viper(root: Path, n_ids: int = VIPER_IDS) -> Path:
    """VIPeR: ``viper/VIPeR/cam_{a,b}/PPP_AAA.bmp``, one image per id and camera."""
    base = root / "viper" / "VIPeR"
    for pid in range(n_ids):
        write_image(base / "cam_a" / f"{pid:03d}_{(pid * 45) % 360}.bmp")
        write_image(base / "cam_b" / f"{pid:03d}_{(pid * 45 + 90) % 360}.bmp")
    return base


PRID_BOTH, PRID_ONLY_A, PRID_ONLY_B = 6, 2, 3
"""Ids 1..6 in both cameras, 7..8 only in cam_a, 9..11 only in cam_b."""


def build_prid(root: Path, mode: str = "single_shot", frames: int = 2) -> Path:
    """PRID2011: ``prid2011/prid_2011/<mode>/cam_{a,b}/person_NNNN.png`` (single_shot) or
    ``.../person_NNNN/NNNN.png`` (multi_shot, ``frames`` per track)."""
    base = root / "prid2011" / "prid_2011" / mode
    ids_a = list(range(1, PRID_BOTH + PRID_ONLY_A + 1))
    ids_b = list(range(1, PRID_BOTH + 1)) + list(
        range(PRID_BOTH + PRID_ONLY_A + 1, PRID_BOTH + PRID_ONLY_A + PRID_ONLY_B + 1)
    )
    for cam, ids in (("cam_a", ids_a), ("cam_b", ids_b)):
        for pid in ids:
            if mode == "single_shot":
                write_image(base / cam / f"person_{pid:04d}.png")
            else:
                for f in range(1, frames + 1):
                    write_image(base / cam / f"person_{pid:04d}" / f"{f:04d}.png")
    return base


# --------------------------------------------------------------------------------------------
# 3DPeS, i-LIDS
# --------------------------------------------------------------------------------------------

PES3D_IMAGES = {1: [1, 2, 2], 2: [3, 3], 3: [1, 8], 4: [2, 10, 10], 5: [5, 6], 6: [8], 7: [1, 3]}
"""pid -> camera token of each image (3DPeS's cameras are numbered 1..8; 10 tests sorting)."""


def build_3dpes(root: Path) -> Path:
    """3DPeS: ``3dpes/RGB/<pid>_<camera>_FRAME_<n>_RGB.bmp``."""
    base = root / "3dpes"
    frame = 0
    for pid, cams in PES3D_IMAGES.items():
        for cam in cams:
            frame += 7
            write_image(base / "RGB" / f"{pid}_{cam}_FRAME_{frame}_RGB.bmp")
    return base


ILIDS_IMAGES = {1: 4, 2: 3, 3: 2, 4: 4, 5: 2, 6: 3, 7: 1, 8: 2}
"""pid -> number of images."""


def build_ilids(root: Path) -> Path:
    """i-LIDS: ``ilids/i-LIDS_Pedestrian/Persons/PPPPNNN.jpg``."""
    base = root / "ilids" / "i-LIDS_Pedestrian"
    for pid, count in ILIDS_IMAGES.items():
        for index in range(1, count + 1):
            write_image(base / "Persons" / f"{pid:04d}{index:03d}.jpg")
    return base


# --------------------------------------------------------------------------------------------
# FedReID pytorch/ ImageFolder layout
# --------------------------------------------------------------------------------------------


def build_fedreid(root: Path, name: str = "Market", style: str = "market") -> Path:
    """FedReID: ``<name>/pytorch/{train_all,train,val,query,gallery}/<pid>/<file>``.

    ``style="market"``: Market names (``0002_c1s1_000451_03.jpg``), gallery with ``0000``
    distractors and ``-1`` junk folders. ``style="openreid"``: the small datasets' names
    (``cam_<K>_<pid>_<n>.bmp``, 0-based cameras) under folders ``0``, ``1``, ...
    Train: 3 ids x 2 images; query: 2; gallery: 3 (+1 junk in market style).
    """
    base = root / name / "pytorch"
    if style == "market":
        splits = {
            "train_all": [
                ("0002", 1),
                ("0002", 2),
                ("0007", 3),
                ("0007", 4),
                ("0011", 5),
                ("0011", 6),
            ],
            "query": [("0020", 1), ("0021", 2)],
            "gallery": [("0020", 3), ("0021", 4), ("0000", 5), ("-1", 6)],
        }
        fmt = "{pid}_c{cam}s1_{i:06d}_00.jpg"
    else:
        splits = {
            "train_all": [("0", 0), ("0", 1), ("1", 0), ("1", 1), ("2", 0), ("2", 1)],
            "query": [("3", 0), ("4", 0)],
            "gallery": [("3", 1), ("4", 1), ("5", 1)],
        }
        fmt = "cam_{cam}_{pid:0>5}_{i:05d}.bmp"
    for split, entries in splits.items():
        for i, (pid, cam) in enumerate(entries):
            write_image(base / split / pid / fmt.format(pid=pid, cam=cam, i=i))
    # train/ and val/ exist in the real layout and must be ignored
    write_image(base / "val" / splits["train_all"][0][0] / "ignored_c1.jpg")
    return base.parent
