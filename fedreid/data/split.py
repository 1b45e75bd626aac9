"""The split scenarios of the FedReID benchmark: one dataset divided among several clients.

The default scenario (``by_dataset``) gives each client a whole dataset. The paper also
studies two ways of dividing *one* dataset, which this module implements:

- **federated-by-camera** (``data.scenario=by_camera``): each client is one camera of the
  network and owns the training images that camera took. An identity seen by several cameras
  appears at several clients (each with its own classifier row), as a real camera network
  would see it.
- **federated-by-identity** (``data.scenario=by_identity``): the training identities are dealt
  into ``num_splits`` disjoint groups; each client owns every training image of its group.

Evaluation protocol: in both scenarios every client keeps the dataset's *full* query/gallery
split and is evaluated on it, as in the FedReID paper's camera and identity scenarios (the
test identities are disjoint from the training ones, so there is nothing to divide; and
ranking needs other cameras than the query's, which a single-camera test set would lack).
The clients' scores are therefore directly comparable with each other and with the
dataset's centralised score.

Training pids of each part are relabelled to ``0..N-1`` (the client's classifier size); query
and gallery keep the dataset's own pids and cameras.
"""

from __future__ import annotations

import random

from fedreid.data.types import ReIDDataset, relabel
from fedreid.errors import ConfigError, DatasetError

SPLIT_SCENARIOS = ("by_camera", "by_identity")


def camera_part(ds: ReIDDataset, camera: int) -> ReIDDataset:
    """The federated-by-camera client of ``ds`` that owns camera ``camera``.

    Keeps the training images taken by that camera, relabels their pids to ``0..N-1`` and keeps
    the dataset's full query/gallery for evaluation (see the module docstring).

    Args:
        ds: the whole dataset (training pids already relabelled, as every reader returns).
        camera: the 0-based camera id (``c1`` on disk is camera 0).

    Returns:
        A new :class:`ReIDDataset` (same name and root; the caller names the client).

    Raises:
        DatasetError: the camera took no training image.

    Examples:
        >>> ds = ReIDDataset("toy", Path("."), train=[("a", 0, 0), ("b", 1, 1), ("c", 1, 0)])
        >>> camera_part(ds, 0).train
        [('a', 0, 0), ('c', 1, 0)]
        >>> camera_part(ds, 1).train
        [('b', 0, 1)]
    """
    train = [item for item in ds.train if item[2] == camera]
    if not train:
        cams = ", ".join(str(c) for c in training_cameras(ds)) or "none"
        raise DatasetError(
            f"{ds.name}: camera {camera} took no training image (training cameras, 0-based: "
            f"{cams}) in {ds.root}"
        )
    return ReIDDataset(
        name=ds.name,
        root=ds.root,
        train=relabel(train),
        query=list(ds.query),
        gallery=list(ds.gallery),
    )


def identity_groups(pids: list[int] | set[int], num_parts: int, seed: int) -> list[list[int]]:
    """Deal identities into ``num_parts`` disjoint groups of near-equal size.

    The sorted pids are shuffled with :class:`random.Random` (``seed``) and cut into
    consecutive chunks whose sizes differ by at most one (the first ``len % num_parts`` groups
    get the extra identity). Each group is returned sorted. The same pids and seed give the
    same groups on every machine.

    Args:
        pids: the identities to deal.
        num_parts: number of groups, at least 1 and at most ``len(pids)``.
        seed: the shuffle seed.

    Raises:
        ConfigError: ``num_parts`` is below 1 or above the number of identities.

    Examples:
        >>> identity_groups(range(5), 2, seed=0) == identity_groups(range(5), 2, seed=0)
        True
        >>> sorted(len(g) for g in identity_groups(range(10), 3, seed=1))
        [3, 3, 4]
    """
    ordered = sorted(set(pids))
    if num_parts < 1:
        raise ConfigError(f"number of identity parts must be >= 1, got {num_parts}")
    if num_parts > len(ordered):
        raise ConfigError(f"cannot split {len(ordered)} training identities into {num_parts} parts")
    random.Random(seed).shuffle(ordered)
    size, extra = divmod(len(ordered), num_parts)
    groups, start = [], 0
    for k in range(num_parts):
        stop = start + size + (1 if k < extra else 0)
        groups.append(sorted(ordered[start:stop]))
        start = stop
    return groups


def identity_part(ds: ReIDDataset, part: int, num_parts: int, seed: int = 0) -> ReIDDataset:
    """The federated-by-identity client of ``ds`` that owns identity group ``part``.

    The training identities are dealt into ``num_parts`` disjoint groups by
    :func:`identity_groups`; this client keeps every training image of group ``part``
    (all its cameras), relabelled to ``0..N-1``, and the dataset's full query/gallery.

    Args:
        ds: the whole dataset.
        part: which group, ``0 <= part < num_parts``.
        num_parts: number of clients the identities are dealt to.
        seed: the shuffle seed (``data.seed``); every part must use the same one.

    Raises:
        ConfigError: ``part`` out of range, or more parts than training identities.

    Examples:
        >>> items = [(f"{p}_{k}", p, k) for p in range(4) for k in range(2)]
        >>> ds = ReIDDataset("toy", Path("."), train=items)
        >>> parts = [identity_part(ds, k, 2, seed=0) for k in range(2)]
        >>> [p.num_train_pids for p in parts], sum(len(p.train) for p in parts)
        ([2, 2], 8)
    """
    if not 0 <= part < num_parts:
        raise ConfigError(f"identity part {part} is out of range for {num_parts} parts")
    groups = identity_groups({pid for _, pid, _ in ds.train}, num_parts, seed)
    keep = set(groups[part])
    train = [item for item in ds.train if item[1] in keep]
    return ReIDDataset(
        name=ds.name,
        root=ds.root,
        train=relabel(train),
        query=list(ds.query),
        gallery=list(ds.gallery),
    )


def training_cameras(ds: ReIDDataset) -> list[int]:
    """Sorted 0-based camera ids that took at least one training image."""
    return sorted({cam for _, _, cam in ds.train})
