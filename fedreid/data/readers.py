"""Readers for the real person re-identification datasets, behind one name registry.

Every reader turns a dataset as it ships (or as torchreid / the FedReID code lay it out) into
the same :class:`~fedreid.data.types.ReIDDataset` as the core Market-1501 reader:

- ``train`` pids relabelled to ``0..N-1`` (the size of the client's classifier head);
- ``query`` / ``gallery`` keep the dataset's own pids: ranking only needs pid equality, so
  evaluation must not give any pid a special meaning (Market-1501's distractors, pid 0, and
  gallery-only identities simply never match a query);
- camera ids 0-based; junk images (pid -1) dropped; Market-style distractors (pid 0) kept in
  the gallery only.

Datasets with an official query/gallery split use it. The small ones (CUHK01, VIPeR,
PRID2011, 3DPeS, i-LIDS) have none: they get a split drawn from ``seed`` (half the identities
train, half test, as torchreid does), documented on each reader. The same seed always gives
the same split, on any machine, because the draw uses :class:`random.Random` on sorted ids.

Names follow torchreid's keys where it has one (``market1501``, ``dukemtmcreid``, ``cuhk03``,
``msmt17``, ``cuhk01``, ``cuhk02``, ``viper``, ``prid``, ``ilids``), plus ``3dpes``, ``fedreid``
(the FedReID code's ``pytorch/`` ImageFolder layout) and the generic Market-layout aliases
``market`` / ``synthetic``. ``root`` may be the parent data folder (``root/<default subfolder>``,
as torchreid expects) or the dataset folder itself; each reader tries its conventional
subfolders in order and, if none fits, raises :class:`DatasetError` naming every path it tried.
See ``docs/datasets.md`` for the layouts side by side.
"""

from __future__ import annotations

import inspect
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fedreid.data.market import IMAGE_SUFFIXES, list_images, load_market
from fedreid.data.types import Item, ReIDDataset, relabel
from fedreid.errors import DatasetError

Reader = Callable[..., ReIDDataset]
"""A reader: ``reader(root: Path, *, seed: int, **options) -> ReIDDataset``."""

DATASETS: dict[str, Reader] = {}
"""The registry: dataset key -> reader. Add to it with :func:`register_dataset`."""

_PUBLIC_DIRS: dict[str, tuple[str, ...]] = {
    "cuhk02": ("cuhk02/pytorch/train_all", "cuhk02/Dataset", "CUHK02/Dataset", "cuhk02", "CUHK02"),
}
"""Where :func:`load_public_images` looks under the data root for a dataset given by name."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def register_dataset(name: str, *aliases: str) -> Callable[[Reader], Reader]:
    """Register a reader under ``name`` (and optional aliases); use as a decorator.

    The reader is called as ``reader(root, seed=seed, **options)`` and must return a
    :class:`ReIDDataset`. Keys are lower case; registering a key twice is a programming error.

    Args:
        name: the dataset key, for example ``"market1501"``.
        *aliases: further keys for the same reader.

    Examples:
        >>> @register_dataset("mydata")  # doctest: +SKIP
        ... def read_mydata(root, *, seed=0):
        ...     return load_market(root, name="mydata")
    """

    def decorator(reader: Reader) -> Reader:
        for key in (name, *aliases):
            key = key.lower()
            if key in DATASETS:
                raise ValueError(f"dataset key already registered: {key}")
            DATASETS[key] = reader
        return reader

    return decorator


def available_datasets() -> list[str]:
    """Sorted keys accepted by :func:`load_dataset`.

    Examples:
        >>> "market1501" in available_datasets()
        True
    """
    return sorted(DATASETS)


def load_dataset(name: str, root: str | Path, *, seed: int = 0, **options: object) -> ReIDDataset:
    """Read dataset ``name`` from ``root`` into a :class:`ReIDDataset`.

    Args:
        name: a key from :func:`available_datasets` (case-insensitive).
        root: the parent data folder holding the dataset under its conventional subfolder
            (``root/market1501/Market-1501-v15.09.15``), or the dataset folder itself.
        seed: draws the train/test identity split of datasets that ship without one
            (CUHK01, VIPeR, PRID2011, 3DPeS, i-LIDS); ignored by the others.
        **options: reader-specific options, for example ``variant="labeled"`` for ``cuhk03``,
            ``mode="multi_shot"`` for ``prid``, ``combine_val=False`` for ``msmt17``.

    Raises:
        DatasetError: unknown name or option, missing or wrongly laid-out folder, no images,
            unparsable file name; the message is one line naming the path.

    Examples:
        >>> ds = load_dataset("market1501", "data")  # doctest: +SKIP
        >>> ds.summary()  # doctest: +SKIP
        {'train_ids': 751, 'train_images': 12936, 'cameras': 6, 'query': 3368, 'gallery': 15913}
        >>> viper = load_dataset("viper", "data", seed=3)  # doctest: +SKIP
    """
    key = str(name).strip().lower()
    reader = DATASETS.get(key)
    if reader is None:
        raise DatasetError(
            f"unknown dataset {name!r}; available: {', '.join(available_datasets())}"
        )
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise DatasetError(f"{key}: unknown option(s) {', '.join(unknown)}; accepted: {allowed}")
    return reader(Path(root).expanduser(), seed=seed, **options)


def load_public_images(name_or_root: str | Path, *, data_root: str | Path = "data") -> list[str]:
    """List every image of an unlabeled / public dataset folder, recursively and sorted.

    Used for the server's distillation data (CUHK02 in the reference work), where labels and
    cameras do not matter. Hidden files and folders (names starting with ``.``) are skipped.

    Args:
        name_or_root: a folder to list, or a dataset key (for example ``"cuhk02"``) looked up
            under ``data_root``: ``<key>/pytorch/train_all`` (FedReID layout), then the
            dataset's conventional folders (``cuhk02/Dataset``), then ``<key>``.
        data_root: the parent data folder used when ``name_or_root`` is a dataset key.

    Raises:
        DatasetError: the folder is missing or holds no images.

    Examples:
        >>> paths = load_public_images("cuhk02", data_root="data")  # doctest: +SKIP
        >>> paths = load_public_images("data/cuhk02/Dataset")  # doctest: +SKIP
    """
    folder = Path(name_or_root).expanduser()
    key = str(name_or_root).strip().lower()
    if not folder.is_dir() and (key in DATASETS or key in _PUBLIC_DIRS):
        base = Path(data_root).expanduser()
        names = (f"{key}/pytorch/train_all", *_PUBLIC_DIRS.get(key, ()), key)
        tried = _unique(base / n for n in names)
        found = next((p for p in tried if p.is_dir()), None)
        if found is None:
            raise DatasetError(
                f"{key}: public image folder not found; tried: {'; '.join(map(str, tried))}"
            )
        folder = found
    elif not folder.is_dir():
        raise DatasetError(f"public image folder not found: {folder}")
    images = sorted(
        str(p)
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not images:
        raise DatasetError(f"no images under {folder}")
    return images


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _unique(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without repeats, first occurrence kept (``root/.`` equals ``root``)."""
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(p, None)
    return list(seen)


def find_dataset_dir(root: str | Path, candidates: Sequence[str], marker: str, *, key: str) -> Path:
    """Return the first ``root/candidate`` holding ``marker``; raise naming all tried paths.

    This is how a reader accepts either the parent data folder (torchreid's convention) or
    the dataset folder itself: ``"."`` among the candidates means ``root``.

    Args:
        root: the folder given by the user.
        candidates: subfolders of ``root`` to try, in order.
        marker: a file or folder that must exist inside the dataset folder.
        key: the dataset key, for the error message.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{key}: data folder not found: {root}")
    tried = _unique(root / c for c in candidates)
    for folder in tried:
        if (folder / marker).exists():
            return folder
    raise DatasetError(
        f"{key}: dataset layout not found; none of these exist: "
        + "; ".join(str(f / marker) for f in tried)
    )


def _split_identities(pids: Iterable[int], seed: int, *, key: str) -> tuple[list[int], list[int]]:
    """Seeded half/half split of identities: ``len // 2`` train ids, the rest test ids."""
    ordered = sorted(set(pids))
    if len(ordered) < 2:
        raise DatasetError(f"{key}: need at least 2 identities to split, found {len(ordered)}")
    rng = random.Random(seed)
    rng.shuffle(ordered)
    half = len(ordered) // 2
    return sorted(ordered[:half]), sorted(ordered[half:])


def _match(pattern: re.Pattern[str], path: Path, expected: str) -> re.Match[str]:
    """Match ``pattern`` against the file name or raise a one-line error naming the file."""
    m = pattern.match(path.name)
    if m is None:
        raise DatasetError(f"unparsable file name (expected {expected}): {path}")
    return m


def _check_nonempty(items: list[Item], what: str, folder: Path) -> list[Item]:
    if not items:
        raise DatasetError(f"no {what} images in {folder}")
    return items


# --------------------------------------------------------------------------------------------
# Market-1501 layout: Market-1501, DukeMTMC-reID, CUHK03-NP, and the generic aliases
# --------------------------------------------------------------------------------------------


@register_dataset("market1501")
def read_market1501(root: Path, *, seed: int = 0) -> ReIDDataset:
    """Market-1501 (key ``market1501``): 1,501 identities, 6 cameras.

    Layout (first match wins): ``root/market1501/Market-1501-v15.09.15/``,
    ``root/market1501/``, ``root/Market-1501-v15.09.15/``, ``root/Market-1501/``,
    ``root/Market/`` (FedReID's name) or ``root`` itself, holding ``bounding_box_train/``,
    ``query/`` and ``bounding_box_test/``. Names ``PPPP_cCsS_FFFFFF_BB.jpg``: pid ``PPPP``
    (-1 junk, dropped; 0 distractor, gallery only), camera ``C`` 1..6 on disk, 0..5 here.
    Split: the official one (751 train ids, 12,936 images; 3,368 query; 15,913 gallery).

    Args:
        root: parent data folder or the dataset folder.
        seed: unused (official split).
    """
    base = find_dataset_dir(
        root,
        (
            "market1501/Market-1501-v15.09.15",
            "market1501",
            "Market-1501-v15.09.15",
            "Market-1501",
            "Market",
            ".",
        ),
        "bounding_box_train",
        key="market1501",
    )
    return load_market(base, name="market1501")


@register_dataset("dukemtmcreid", "dukemtmc")
def read_dukemtmcreid(root: Path, *, seed: int = 0) -> ReIDDataset:
    """DukeMTMC-reID (key ``dukemtmcreid``): 1,404 identities + distractors, 8 cameras.

    Layout: ``root/dukemtmc-reid/DukeMTMC-reID/``, ``root/dukemtmc-reid/``,
    ``root/DukeMTMC-reID/`` or ``root`` itself, with the Market-1501 folders.
    Names ``PPPP_cC_fFFFFFFF.jpg``; camera ``C`` 1..8 on disk, 0..7 here.
    Split: the official one (702 train ids, 16,522 images; 2,228 query; 17,661 gallery).

    Args:
        root: parent data folder or the dataset folder.
        seed: unused (official split).
    """
    base = find_dataset_dir(
        root,
        ("dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid", "DukeMTMC-reID", "."),
        "bounding_box_train",
        key="dukemtmcreid",
    )
    return load_market(base, name="dukemtmcreid")


_CUHK03_VARIANTS = ("detected", "labeled")


@register_dataset("cuhk03", "cuhk03np", "cuhk03_np")
def read_cuhk03(root: Path, *, seed: int = 0, variant: str = "detected") -> ReIDDataset:
    """CUHK03-NP (key ``cuhk03``; ``cuhk03_labeled`` / ``cuhk03_detected`` fix the variant).

    The new protocol of Zhong et al. (CVPR 2017): 767 train / 700 test identities, 2 cameras,
    in the Market-1501 layout as released (``cuhk03-np/{detected,labeled}/``). Layout, first
    match wins: ``root/cuhk03-np/<variant>/``, ``root/cuhk03/cuhk03-np/<variant>/``,
    ``root/cuhk03/<variant>/``, ``root/cuhk03-np-<variant>/`` (FedReID's name),
    ``root/<variant>/`` or ``root`` itself, each with ``bounding_box_train/``, ``query/``,
    ``bounding_box_test/``. Names ``PPPP_cC_N.png``; camera ``C`` 1..2 on disk, 0..1 here.
    The classic 20-split protocol (``cuhk-03.mat``) is not read.

    Args:
        root: parent data folder or the variant folder.
        seed: unused (official split).
        variant: ``"detected"`` (7,365 train images) or ``"labeled"`` (7,368).
    """
    variant = str(variant).lower()
    if variant not in _CUHK03_VARIANTS:
        raise DatasetError(f"cuhk03: variant must be one of {_CUHK03_VARIANTS}, got {variant!r}")
    key = "cuhk03" if variant == "detected" else "cuhk03_labeled"
    base = find_dataset_dir(
        root,
        (
            f"cuhk03-np/{variant}",
            f"cuhk03/cuhk03-np/{variant}",
            f"cuhk03/{variant}",
            f"cuhk03-np-{variant}",
            variant,
            ".",
        ),
        "bounding_box_train",
        key=key,
    )
    return load_market(base, name=key)


@register_dataset("cuhk03_labeled")
def read_cuhk03_labeled(root: Path, *, seed: int = 0) -> ReIDDataset:
    """CUHK03-NP, hand-labelled boxes: :func:`read_cuhk03` with ``variant="labeled"``."""
    return read_cuhk03(root, seed=seed, variant="labeled")


@register_dataset("cuhk03_detected")
def read_cuhk03_detected(root: Path, *, seed: int = 0) -> ReIDDataset:
    """CUHK03-NP, detector boxes: :func:`read_cuhk03` with ``variant="detected"``."""
    return read_cuhk03(root, seed=seed, variant="detected")


@register_dataset("market", "synthetic")
def read_market_layout(root: Path, *, seed: int = 0) -> ReIDDataset:
    """Any folder in the Market-1501 layout, read as is (keys ``market``, ``synthetic``).

    ``root`` must itself hold ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``
    (no subfolder search): the synthetic benchmark's client folders, or a converted copy of
    another dataset (for example FedReID's MSMT17 in Market layout). Same naming and camera
    conventions as :func:`read_market1501`; the name is the folder's name.

    Args:
        root: the Market-layout folder.
        seed: unused.
    """
    return load_market(root)


# --------------------------------------------------------------------------------------------
# MSMT17 (list files)
# --------------------------------------------------------------------------------------------

_MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")


def _read_msmt_list(list_path: Path, image_dir: Path) -> list[Item]:
    """Read one MSMT17 list file (``relative/path.jpg pid`` per line)."""
    if not list_path.is_file():
        raise DatasetError(f"msmt17: missing list file: {list_path}")
    items: list[Item] = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"msmt17: malformed line {lineno} in {list_path}: {line.strip()!r}")
        path = image_dir / fields[0]
        cam = int(_match(_MSMT_NAME, path, "PPPP_NNN_CC_...jpg").group(3))
        if cam < 1:
            raise DatasetError(f"camera id must be >= 1 in file name: {path}")
        items.append((str(path), int(fields[1]), cam - 1))
    if not items:
        raise DatasetError(f"msmt17: empty list file: {list_path}")
    first = Path(items[0][0])
    if not first.is_file():  # one cheap check that the list and the image folder agree
        raise DatasetError(f"msmt17: image listed in {list_path.name} not found: {first}")
    return items


@register_dataset("msmt17")
def read_msmt17(root: Path, *, seed: int = 0, combine_val: bool = True) -> ReIDDataset:
    """MSMT17 (key ``msmt17``): 4,101 identities, 15 cameras; V1 or V2 (faces blurred).

    Layout: ``root/msmt17/MSMT17_V1/``, ``root/msmt17/MSMT17_V2/``, ``root/MSMT17_V1/``,
    ``root/MSMT17_V2/``, ``root/msmt17/``, ``root/MSMT17/`` or ``root`` itself, holding the
    image folders ``train/`` + ``test/`` (V2 may name them ``mask_train_v2/`` +
    ``mask_test_v2/``) and ``list_train.txt``, ``list_val.txt``, ``list_query.txt``,
    ``list_gallery.txt`` whose lines read ``0000/0000_000_01_0303morning_0015_0.jpg 0``
    (path relative to the image folder, then pid). Camera = the third ``_`` field of the file
    name, ``01..15`` on disk, 0..14 here. Pids come from the lists (0-based, so pid 0 is a
    real test identity here).

    Split: the official query (11,659) / gallery (82,161). Train = ``list_train`` +
    ``list_val`` (32,621 images, 1,041 ids), as commonly done and as in the FedReID
    benchmark; ``combine_val=False`` keeps ``list_train`` only (30,248 images), torchreid's
    default.

    Args:
        root: parent data folder or the ``MSMT17_V*`` folder.
        seed: unused (official split).
        combine_val: add the validation list to the training split.
    """
    base = find_dataset_dir(
        root,
        (
            "msmt17/MSMT17_V1",
            "msmt17/MSMT17_V2",
            "MSMT17_V1",
            "MSMT17_V2",
            "msmt17",
            "MSMT17",
            ".",
        ),
        "list_query.txt",
        key="msmt17",
    )

    def image_dir(names: tuple[str, ...]) -> Path:
        for n in names:
            if (base / n).is_dir():
                return base / n
        tried = " or ".join(str(base / n) for n in names)
        raise DatasetError(f"msmt17: missing image folder: {tried}")

    train_dir = image_dir(("train", "mask_train_v2"))
    test_dir = image_dir(("test", "mask_test_v2"))
    train = _read_msmt_list(base / "list_train.txt", train_dir)
    if combine_val:
        train += _read_msmt_list(base / "list_val.txt", train_dir)
    query = _read_msmt_list(base / "list_query.txt", test_dir)
    gallery = _read_msmt_list(base / "list_gallery.txt", test_dir)
    return ReIDDataset(name="msmt17", root=base, train=relabel(train), query=query, gallery=gallery)


# --------------------------------------------------------------------------------------------
# CUHK01, CUHK02
# --------------------------------------------------------------------------------------------

_CUHK01_NAME = re.compile(r"^(\d{4})(\d{3})\.\w+$")


@register_dataset("cuhk01")
def read_cuhk01(root: Path, *, seed: int = 0) -> ReIDDataset:
    """CUHK01 (key ``cuhk01``): 971 identities, 2 camera views, 4 images each (3,884).

    Layout: ``root/cuhk01/campus/``, ``root/CUHK01/campus/`` or ``root/campus/``. Names
    ``PPPPNNN.png``: pid ``PPPP`` (kept 1-based as on disk), image ``NNN`` 001..004; images
    1-2 are camera view A (camid 0), 3-4 view B (camid 1), as torchreid reads them.

    Split (seeded, torchreid's protocol): ``971 // 2 = 485`` identities train (all 4 images,
    1,940), the other 486 test: view A images are the query, view B images the gallery.

    Args:
        root: parent data folder or the ``cuhk01`` folder.
        seed: draws the train identities.
    """
    base = find_dataset_dir(root, ("cuhk01", "CUHK01", "."), "campus", key="cuhk01")
    by_pid: dict[int, list[Item]] = defaultdict(list)
    for path in list_images(base / "campus"):
        m = _match(_CUHK01_NAME, path, "PPPPNNN.png")
        pid, index = int(m.group(1)), int(m.group(2))
        if index < 1:
            raise DatasetError(f"image index must be >= 1 in file name: {path}")
        by_pid[pid].append((str(path), pid, (index - 1) // 2))
    train_ids, test_ids = _split_identities(by_pid, seed, key="cuhk01")
    train = [it for pid in train_ids for it in by_pid[pid]]
    test = [it for pid in test_ids for it in by_pid[pid]]
    query = [it for it in test if it[2] == 0]
    gallery = [it for it in test if it[2] != 0]
    campus = base / "campus"
    return ReIDDataset(
        name="cuhk01",
        root=base,
        train=relabel(train),
        query=_check_nonempty(query, "query (view A)", campus),
        gallery=_check_nonempty(gallery, "gallery (view B)", campus),
    )


_CUHK02_NAME = re.compile(r"^(\d+)_")
_CUHK02_PAIRS = ("P1", "P2", "P3", "P4", "P5")
_CUHK02_TEST_PAIR = "P5"


@register_dataset("cuhk02")
def read_cuhk02(root: Path, *, seed: int = 0) -> ReIDDataset:
    """CUHK02 (key ``cuhk02``): 1,816 identities in 5 camera-view pairs P1..P5.

    Mainly the server's public distillation data (see :func:`load_public_images`); this reader
    gives the labelled protocol. Layout: ``root/cuhk02/Dataset/``, ``root/CUHK02/Dataset/``,
    ``root/Dataset/`` or ``root`` itself, holding ``P1..P5/cam1/`` and ``P1..P5/cam2/``.
    Names ``PPPP_N.png``: pid = the digits before the first ``_``, unique only within a pair.
    Cameras: pair ``Pk`` view ``camV`` gets camid ``2*(k-1) + (V-1)``, so 0..9.

    Split (official, as torchreid): P1-P4 train (pids relabelled per pair, then jointly),
    P5 test with ``cam1`` as query and ``cam2`` as gallery (original pids).

    Args:
        root: parent data folder or the ``Dataset`` folder.
        seed: unused (fixed split).
    """
    base = find_dataset_dir(
        root, ("cuhk02/Dataset", "CUHK02/Dataset", "Dataset", "."), _CUHK02_TEST_PAIR, key="cuhk02"
    )
    train: list[Item] = []
    query: list[Item] = []
    gallery: list[Item] = []
    for k, pair in enumerate(_CUHK02_PAIRS):
        if pair != _CUHK02_TEST_PAIR and not (base / pair).is_dir():
            continue  # a partial copy: train on the pairs that are there
        for view in (1, 2):
            camid = 2 * k + view - 1
            for path in list_images(base / pair / f"cam{view}"):
                pid = int(_match(_CUHK02_NAME, path, "PPPP_N.png").group(1))
                if pair == _CUHK02_TEST_PAIR:
                    (query if view == 1 else gallery).append((str(path), pid, camid))
                else:  # same pid number in two pairs = two people: key by (pair, pid)
                    train.append((str(path), k * 1_000_000 + pid, camid))
    if not train:
        raise DatasetError(f"cuhk02: no training pair (P1..P4) found in {base}")
    return ReIDDataset(name="cuhk02", root=base, train=relabel(train), query=query, gallery=gallery)


# --------------------------------------------------------------------------------------------
# VIPeR, PRID2011
# --------------------------------------------------------------------------------------------

_VIPER_NAME = re.compile(r"^(\d+)_")


def _read_two_views(
    cam_a: Path, cam_b: Path, parse: Callable[[Path], int]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Images of two camera folders grouped by pid (one or more images per pid)."""
    views: list[dict[int, list[str]]] = []
    for folder in (cam_a, cam_b):
        by_pid: dict[int, list[str]] = defaultdict(list)
        for path in list_images(folder):
            by_pid[parse(path)].append(str(path))
        views.append(by_pid)
    return views[0], views[1]


@register_dataset("viper")
def read_viper(root: Path, *, seed: int = 0) -> ReIDDataset:
    """VIPeR (key ``viper``): 632 identities, one image in each of 2 cameras.

    Layout: ``root/viper/VIPeR/``, ``root/VIPeR/``, ``root/viper/`` or ``root`` itself, holding
    ``cam_a/`` and ``cam_b/``. Names ``PPP_AAA.bmp``: pid ``PPP`` (0-based on disk, kept),
    ``AAA`` the viewing angle. Camera: ``cam_a`` = 0, ``cam_b`` = 1. Both folders must hold
    the same identities.

    Split (seeded, torchreid's protocol): 316 identities train (both images, 632), the other
    316 test with the ``cam_a`` image as query and the ``cam_b`` image as gallery.

    Args:
        root: parent data folder or the ``VIPeR`` folder.
        seed: draws the train identities.
    """
    base = find_dataset_dir(root, ("viper/VIPeR", "VIPeR", "viper", "."), "cam_a", key="viper")

    def parse(path: Path) -> int:
        return int(_match(_VIPER_NAME, path, "PPP_AAA.bmp").group(1))

    view_a, view_b = _read_two_views(base / "cam_a", base / "cam_b", parse)
    if set(view_a) != set(view_b):
        odd = sorted(set(view_a) ^ set(view_b))[:5]
        raise DatasetError(
            f"viper: cam_a and cam_b hold different identities (e.g. {odd}) in {base}"
        )
    train_ids, test_ids = _split_identities(view_a, seed, key="viper")
    train = [(p, pid, 0) for pid in train_ids for p in view_a[pid]]
    train += [(p, pid, 1) for pid in train_ids for p in view_b[pid]]
    query = [(p, pid, 0) for pid in test_ids for p in view_a[pid]]
    gallery = [(p, pid, 1) for pid in test_ids for p in view_b[pid]]
    return ReIDDataset(name="viper", root=base, train=relabel(train), query=query, gallery=gallery)


_PRID_NAME = re.compile(r"^person_(\d+)(?:\.\w+)?$")
_PRID_MODES = ("single_shot", "multi_shot")


@register_dataset("prid", "prid2011")
def read_prid(root: Path, *, seed: int = 0, mode: str = "single_shot") -> ReIDDataset:
    """PRID2011 (key ``prid``): 385 people in camera A, 749 in camera B, 200 in both.

    Layout: ``root/prid2011/prid_2011/<mode>/``, ``root/prid_2011/<mode>/``,
    ``root/prid2011/<mode>/``, ``root/<mode>/`` or ``root`` itself, holding ``cam_a/`` and
    ``cam_b/``. ``single_shot``: ``cam_a/person_0001.png`` (one image per person and camera);
    ``multi_shot``: ``cam_a/person_0001/0001.png ...`` (a track per person and camera). Pid =
    the number after ``person_`` (1-based, kept); camera ``cam_a`` = 0, ``cam_b`` = 1.

    Split (seeded, torchreid's protocol): the identities seen by both cameras (1..200) are
    halved: 100 train (all their images, both cameras), 100 test with the ``cam_a`` images
    as query and the ``cam_b`` images as gallery. The people seen only by camera B
    (201..749) join the gallery as distractors under their own pids; the people seen only by
    camera A are not used.

    Args:
        root: parent data folder or the ``prid_2011`` mode folder.
        seed: draws the train identities.
        mode: ``"single_shot"`` (default, as torchreid) or ``"multi_shot"``.
    """
    mode = str(mode).lower()
    if mode not in _PRID_MODES:
        raise DatasetError(f"prid: mode must be one of {_PRID_MODES}, got {mode!r}")
    base = find_dataset_dir(
        root,
        (f"prid2011/prid_2011/{mode}", f"prid_2011/{mode}", f"prid2011/{mode}", mode, "."),
        "cam_a",
        key="prid",
    )

    def pid_of(path: Path, expected: str) -> int:
        target = path if mode == "single_shot" else path.parent
        m = _PRID_NAME.match(target.name)
        if m is None:
            raise DatasetError(f"unparsable {expected} name (expected person_NNNN): {target}")
        return int(m.group(1))

    views: list[dict[int, list[str]]] = []
    for cam in ("cam_a", "cam_b"):
        folder = base / cam
        if mode == "single_shot":
            paths = list_images(folder)
        else:
            if not folder.is_dir():
                raise DatasetError(f"missing folder: {folder}")
            tracks = sorted(p for p in folder.iterdir() if p.is_dir())
            if not tracks:
                raise DatasetError(f"no person_NNNN track folders in {folder}")
            paths = [img for track in tracks for img in list_images(track)]
        by_pid: dict[int, list[str]] = defaultdict(list)
        for path in paths:
            by_pid[pid_of(path, "file" if mode == "single_shot" else "track folder")].append(
                str(path)
            )
        views.append(by_pid)
    view_a, view_b = views
    shared = sorted(set(view_a) & set(view_b))
    train_ids, test_ids = _split_identities(shared, seed, key="prid")
    train = [(p, pid, 0) for pid in train_ids for p in view_a[pid]]
    train += [(p, pid, 1) for pid in train_ids for p in view_b[pid]]
    query = [(p, pid, 0) for pid in test_ids for p in view_a[pid]]
    gallery = [(p, pid, 1) for pid in test_ids for p in view_b[pid]]
    only_b = sorted(set(view_b) - set(view_a))
    gallery += [(p, pid, 1) for pid in only_b for p in view_b[pid]]
    return ReIDDataset(name="prid", root=base, train=relabel(train), query=query, gallery=gallery)


# --------------------------------------------------------------------------------------------
# 3DPeS, i-LIDS: multi-image identities, one query image per test identity
# --------------------------------------------------------------------------------------------

_PES3D_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_")


def _camera_sort_key(token: str) -> tuple[int, int, str]:
    """Order camera tokens numerically where they are numbers (``"2" < "10" < "2B"``)."""
    digits = re.match(r"\d+", token)
    return (0 if token.isdigit() else 1, int(digits.group()) if digits else 0, token)


def _query_gallery_per_identity(
    by_pid: dict[int, list[Item]], test_ids: list[int], rng: random.Random
) -> tuple[list[Item], list[Item]]:
    """One seeded-random image per test identity as query, all its others as gallery."""
    query: list[Item] = []
    gallery: list[Item] = []
    for pid in test_ids:
        items = sorted(by_pid[pid])
        if len(items) < 2:  # nothing to match: the image only serves as a distractor
            gallery += items
            continue
        q = rng.randrange(len(items))
        query.append(items[q])
        gallery += items[:q] + items[q + 1 :]
    return query, gallery


@register_dataset("3dpes", "pes3d")
def read_3dpes(root: Path, *, seed: int = 0) -> ReIDDataset:
    """3DPeS (key ``3dpes``): 192 identities, 8 outdoor cameras, 1,011 snapshots.

    Layout: ``root/3dpes/RGB/``, ``root/pes3d/RGB/``, ``root/3DPeS/RGB/`` or ``root/RGB/``.
    Names ``<pid>_<camera>_FRAME_<n>_RGB.bmp``: pid and camera are the first two ``_`` fields
    (pid kept as on disk). Camera tokens are mapped to camids 0..K-1 in sorted order
    (numeric where they are numbers).

    Split (seeded): half the identities (``n // 2``) train with all their images; for each
    test identity one seeded-random image is the query and all its other images the gallery
    (an identity with a single image goes to the gallery only). Queries whose identity has no
    gallery image from another camera are skipped by the Market-1501 evaluation protocol.

    Args:
        root: parent data folder or the ``3dpes`` folder.
        seed: draws the train identities and the query images.
    """
    base = find_dataset_dir(root, ("3dpes", "pes3d", "3DPeS", "."), "RGB", key="3dpes")
    parsed: list[tuple[str, int, str]] = []
    for path in list_images(base / "RGB"):
        m = _match(_PES3D_NAME, path, "<pid>_<camera>_FRAME_<n>_RGB.bmp")
        parsed.append((str(path), int(m.group(1)), m.group(2)))
    cams = {tok: i for i, tok in enumerate(sorted({c for _, _, c in parsed}, key=_camera_sort_key))}
    by_pid: dict[int, list[Item]] = defaultdict(list)
    for path, pid, tok in parsed:
        by_pid[pid].append((path, pid, cams[tok]))
    train_ids, test_ids = _split_identities(by_pid, seed, key="3dpes")
    rng = random.Random(f"3dpes-query-{seed}")
    query, gallery = _query_gallery_per_identity(by_pid, test_ids, rng)
    train = [it for pid in train_ids for it in by_pid[pid]]
    return ReIDDataset(
        name="3dpes",
        root=base,
        train=relabel(train),
        query=_check_nonempty(query, "query", base / "RGB"),
        gallery=gallery,
    )


_ILIDS_NAME = re.compile(r"^(\d{4})(\d{3})\.\w+$")


@register_dataset("ilids")
def read_ilids(root: Path, *, seed: int = 0) -> ReIDDataset:
    """QMUL i-LIDS pedestrians (key ``ilids``): 119 identities, 476 images.

    Layout: ``root/ilids/i-LIDS_Pedestrian/Persons/``, ``root/i-LIDS_Pedestrian/Persons/``,
    ``root/ilids/Persons/`` or ``root/Persons/``. Names ``PPPPNNN.jpg``: pid ``PPPP`` (kept),
    image index ``NNN`` (1-based). The dataset has no camera labels; as torchreid does, the
    image index stands in for the camera (camid = ``NNN - 1``), so a query never counts its
    own image as a match but every other image of the person is a valid one.

    Split (seeded, torchreid's protocol): ``int(n * 0.5)`` identities (59) train with all
    their images; for each test identity two seeded-random images, one query and one
    gallery; its remaining images are unused (an identity with one image is gallery only).

    Args:
        root: parent data folder or the ``i-LIDS_Pedestrian`` folder.
        seed: draws the train identities and the query/gallery images.
    """
    base = find_dataset_dir(
        root,
        ("ilids/i-LIDS_Pedestrian", "i-LIDS_Pedestrian", "ilids", "."),
        "Persons",
        key="ilids",
    )
    by_pid: dict[int, list[Item]] = defaultdict(list)
    for path in list_images(base / "Persons"):
        m = _match(_ILIDS_NAME, path, "PPPPNNN.jpg")
        pid, index = int(m.group(1)), int(m.group(2))
        if index < 1:
            raise DatasetError(f"image index must be >= 1 in file name: {path}")
        by_pid[pid].append((str(path), pid, index - 1))
    train_ids, test_ids = _split_identities(by_pid, seed, key="ilids")
    rng = random.Random(f"ilids-query-{seed}")
    query: list[Item] = []
    gallery: list[Item] = []
    for pid in test_ids:
        items = sorted(by_pid[pid])
        if len(items) < 2:
            gallery += items
            continue
        q, g = rng.sample(items, 2)
        query.append(q)
        gallery.append(g)
    train = [it for pid in train_ids for it in by_pid[pid]]
    return ReIDDataset(
        name="ilids",
        root=base,
        train=relabel(train),
        query=_check_nonempty(query, "query", base / "Persons"),
        gallery=gallery,
    )


# --------------------------------------------------------------------------------------------
# FedReID preprocessed layout (ImageFolder per split)
# --------------------------------------------------------------------------------------------

_FEDREID_SPLITS = (("train_all", "train"), ("query", "query"), ("gallery", "gallery"))
_OPENREID_CAM = re.compile(r"(?:^|_)cam_(\d+)_")
_MARKET_CAM = re.compile(r"(?:^|_)c(\d+)", re.IGNORECASE)


def parse_fedreid_camera(path: Path) -> int:
    """0-based camera of a file in the FedReID ``pytorch/`` layout.

    Two naming styles occur there: the small datasets (prepared the open-reid way) are named
    ``cam_<K>_<pid>_<n>.<ext>`` with ``K`` already 0-based; the large ones keep their original
    Market-style names (``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``) whose ``c<C>``
    is 1-based. ``cam_<K>_`` is looked for first, then a ``c<C>`` at the start or after ``_``.

    Args:
        path: the image file.
    """
    m = _OPENREID_CAM.search(path.name)
    if m is not None:
        return int(m.group(1))
    m = _MARKET_CAM.search(path.stem)
    if m is None:
        raise DatasetError(f"unparsable file name (expected cam_K_... or ..._cC...): {path}")
    cam = int(m.group(1))
    if cam < 1:
        raise DatasetError(f"camera id must be >= 1 in file name: {path}")
    return cam - 1


def _read_image_folder(folder: Path) -> list[Item]:
    """Read one ImageFolder split: every subfolder is a pid; junk (-1) is dropped."""
    if not folder.is_dir():
        raise DatasetError(f"missing folder: {folder}")
    items: list[Item] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not sub.name.lstrip("-").isdigit():
            raise DatasetError(f"class folder name is not an integer pid: {sub}")
        pid = int(sub.name)
        if pid == -1:
            continue
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), pid, parse_fedreid_camera(path)))
    if not items:
        raise DatasetError(f"no images in {folder}")
    return items


@register_dataset("fedreid")
def read_fedreid(root: Path, *, seed: int = 0) -> ReIDDataset:
    """Any dataset prepared by the FedReID reference code (key ``fedreid``).

    Layout: ``<dataset>/pytorch/{train_all,query,gallery}/<pid>/<image>`` (torchvision
    ImageFolders; ``train/`` and ``val/`` are ignored since ``train_all`` = both). ``root`` is
    the ``<dataset>`` folder or its ``pytorch/`` folder; the dataset's name is the
    ``<dataset>`` folder's name (``Market``, ``viper``, ...). Pid = the subfolder's name as an
    integer: ``-1`` (junk) is dropped; everything else is kept, including ``0``, which is a
    real person in the small datasets (their labels start at 0) and Market-1501's
    distractors in its gallery. Cameras: see :func:`parse_fedreid_camera` (``cam_K_...``
    0-based, else Market-style ``_cC`` 1-based).

    Split: the prepared one; train pids relabelled 0..N-1.

    Args:
        root: the ``<dataset>`` folder or its ``pytorch/`` folder.
        seed: unused (prepared split).
    """
    base = find_dataset_dir(root, ("pytorch", "."), "train_all", key="fedreid")
    splits = {out: _read_image_folder(base / folder) for folder, out in _FEDREID_SPLITS}
    resolved = base.resolve()
    name = resolved.parent.name if resolved.name == "pytorch" else resolved.name
    return ReIDDataset(
        name=name,
        root=base,
        train=relabel(splits["train"]),
        query=splits["query"],
        gallery=splits["gallery"],
    )
