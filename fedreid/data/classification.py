"""Image classification data for HideNseek's own setting: a pool, Dirichlet label partitions.

Why: HideNseek was proposed and evaluated on image classification, with clients whose label
mixes differ (non-IID). This module gives every client its share of one labelled pool:

* the pool is scikit-learn's bundled ``digits`` (1,797 grayscale 8x8 images, 10 classes; no
  download, the offline default) or a torchvision dataset's training split: ``mnist``,
  ``emnist`` (the ``balanced`` split, 47 classes) or ``cifar10``, downloaded into
  ``classification.data_dir`` where there is internet and read from it otherwise;
* the pool is split across ``classification.num_clients`` clients by label with
  :class:`flwr_datasets.partitioner.DirichletPartitioner` (concentration
  ``classification.alpha``, seeded with the run's ``seed``) over a ``datasets.Dataset`` built
  from the labels, so the partition is deterministic, disjoint and covers the pool;
* each client holds out ``classification.test_fraction`` of its own share (a seeded random
  split) for federated evaluation: accuracy on the client's own label mix.

Images are scaled to ``[0, 1]`` and standardised with fixed per-dataset constants (the digits
constants are the pool's own mean and std), so every process computes identical tensors.

Examples:
    >>> from fedreid.config import Config
    >>> cfg = Config(task="classification")
    >>> part = client_data(cfg, 0)  # doctest: +SKIP
    >>> part.train_x.shape[1:]  # doctest: +SKIP
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

import logging
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
    "mnist": DatasetInfo(1, 10, 28, (0.1307,), (0.3081,)),
    "emnist": DatasetInfo(1, 47, 28, (0.1751,), (0.3332,)),
    "cifar10": DatasetInfo(3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def dataset_info(name: str) -> DatasetInfo:
    """Channels, classes, image size and normalisation of a supported dataset."""
    if name not in DATASETS:
        raise ConfigError(f"classification.dataset={name!r}: choose one of {sorted(DATASETS)}")
    return DATASETS[name]


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


@lru_cache(maxsize=4)
def _partitions(
    name: str, data_dir: str, num_clients: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    _, labels = load_pool(name, data_dir)
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
    idx = _partitions(c.dataset, c.data_dir, c.num_clients, c.alpha, cfg.seed)[index]
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
