"""Which client owns which data: the FedReID scenarios, resolved from the config alone.

A :class:`ClientSpec` names a client and says how to load its :class:`ReIDDataset`. The
simulation maps ``partition-id`` to these specs, largest training set first
(:func:`fedreid.clients.node.work_order`); a deployed
SuperNode names its dataset and data root in ``--node-config`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedreid.config import DataConfig, resolve_path
from fedreid.data.market import load_market
from fedreid.data.split import (
    SPLIT_SCENARIOS,
    camera_part,
    identity_part,
    training_cameras,
)
from fedreid.data.types import ReIDDataset
from fedreid.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class ClientSpec:
    """One client's data: a whole dataset (by_dataset) or a part of one (camera / identities)."""

    name: str
    dataset: str
    root: str
    source: str = "synthetic"
    camera: int = -1  # by_camera: the camera this client owns
    part: int = -1  # by_identity: which of num_parts identity groups
    num_parts: int = 0
    seed: int = 0

    def load(self) -> ReIDDataset:
        """Read this client's dataset (and take its part, for the split scenarios)."""
        ds = load_named(self.dataset, Path(self.root), self.source, self.seed)
        if self.camera >= 0:
            ds = camera_part(ds, self.camera)
        elif self.part >= 0:
            ds = identity_part(ds, self.part, self.num_parts, self.seed)
        ds.name = self.name
        return ds


def load_named(name: str, root: Path, source: str, seed: int = 0) -> ReIDDataset:
    """Synthetic domains are Market-layout folders under root; real ones go through readers
    (``seed`` fixes the documented split of datasets without an official one)."""
    if source == "synthetic":
        return load_market(root / name, name=name)
    from fedreid.data.readers import load_dataset

    return load_dataset(name, root, seed=seed)


def synthetic_root(data: DataConfig) -> Path:
    """Generate the synthetic benchmark if needed (idempotent) and return its root."""
    from fedreid.data.synthetic import generate

    return generate(resolve_path(data.root), preset=data.preset, seed=data.seed, progress=True)


def dataset_names(data: DataConfig) -> list[str]:
    """The client datasets: ``data.datasets`` or, for synthetic data, all preset domains."""
    names = list(data.datasets)
    if len(set(names)) != len(names):
        raise ConfigError(f"data.datasets names a dataset twice: {names}")
    if data.source == "synthetic":
        from fedreid.data.synthetic import domain_names

        domains = domain_names(data.preset)
        unknown = [n for n in names if n not in domains]
        if unknown:
            raise ConfigError(
                f"data.datasets {unknown} are not domains of the synthetic "
                f"preset {data.preset!r} ({', '.join(domains)})"
            )
        return names or domains
    if names:
        return names
    raise ConfigError("data.datasets is empty: name the datasets the clients own")


def holdout_names(data: DataConfig) -> list[str]:
    """The domains ``data.holdout`` keeps out of training (checked: they exist, no repeats).

    Synthetic data: domains of the preset; real data: registered dataset names. A held-out
    domain is never a client; ``fedreid eval`` reports it as an unseen camera network.
    """
    names = [str(n) for n in data.holdout]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.holdout names a domain twice: {names}")
    if data.source == "synthetic":
        from fedreid.data.synthetic import domain_names

        known = domain_names(data.preset)
        where = f"domains of the synthetic preset {data.preset!r}"
    else:
        from fedreid.data.readers import available_datasets

        known, where = available_datasets(), "known datasets"
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"data.holdout {unknown} are not {where} ({', '.join(known)})")
    if data.scenario != "by_dataset" and data.split_dataset.strip() in names:
        raise ConfigError(f"data.holdout holds {data.split_dataset!r}, the dataset being split")
    return names


def client_specs(data: DataConfig) -> list[ClientSpec]:
    """All clients of the configured scenario, in the scenario's order (``data.holdout`` left
    out)."""
    root = str(resolve_path(data.root))
    holdout = holdout_names(data)
    if data.scenario == "by_dataset":
        specs = [
            ClientSpec(name=n, dataset=n, root=root, source=data.source, seed=data.seed)
            for n in dataset_names(data)
            if n not in holdout
        ]
        if not specs:
            raise ConfigError(f"data.holdout={holdout} leaves no client to train")
        return specs
    if data.scenario in ("by_camera", "by_identity"):
        return split_specs(data, root)
    raise ConfigError(f"data.scenario={data.scenario!r}: use by_dataset, by_camera or by_identity")


def public_images(data: DataConfig) -> list[str]:
    """Unlabeled server-side images for distillation (every image under ``data.public``)."""
    if not data.public:
        raise ConfigError("no public data configured (data.public is empty)")
    from fedreid.data.readers import load_public_images

    root = resolve_path(data.root)
    folder = Path(data.public).expanduser()
    if not folder.is_absolute():
        if (root / folder).is_dir():
            return load_public_images(root / folder)
        from fedreid.data.readers import DATASETS

        if data.public.lower() not in DATASETS:
            raise DatasetError(f"public data folder not found: {root / folder}")
    elif not folder.is_dir():
        raise DatasetError(f"public data folder not found: {folder}")
    return load_public_images(data.public, data_root=root)


@lru_cache(maxsize=8)
def _train_layout(
    dataset: str, root: str, source: str, seed: int = 0
) -> tuple[tuple[int, ...], int]:
    """``(training cameras, number of training identities)`` of one dataset, read once.

    :func:`split_specs` runs whenever the client list is resolved (the server and, in
    simulation, every client message), so the file listing is cached per process.
    Failures are not cached.
    """
    ds = load_named(dataset, Path(root), source, seed)
    return tuple(training_cameras(ds)), ds.num_train_pids


def split_specs(data: DataConfig, root: str) -> list[ClientSpec]:
    """The clients of a split scenario, in partition-id order.

    - ``by_camera``: one client per training camera of ``data.split_dataset``, named
      ``<dataset>-cam<C>`` with ``C`` the 1-based camera number as on disk
      (``market1501-cam1``, ...).
    - ``by_identity``: ``data.num_splits`` clients named ``<dataset>-ids<k>of<n>``
      (``market1501-ids1of4``, ...).

    The dataset is read once to find its cameras / identities: for synthetic data from
    ``root/<split_dataset>`` (Market layout), for real data through
    :func:`fedreid.data.readers.load_dataset`.

    Args:
        data: the data config (``scenario``, ``split_dataset``, ``num_splits``, ``source``,
            ``seed``).
        root: the absolute data root.

    Raises:
        ConfigError: unknown scenario, ``split_dataset`` empty, ``num_splits < 2`` or more
            splits than training identities.
        DatasetError: the dataset cannot be read.

    Examples:
        >>> from fedreid.config import DataConfig
        >>> cfg = DataConfig(scenario="by_identity", split_dataset="market1501", num_splits=4)
        >>> [s.name for s in split_specs(cfg, "/data/synthetic")]  # doctest: +SKIP
        ['market1501-ids1of4', 'market1501-ids2of4', 'market1501-ids3of4', 'market1501-ids4of4']
    """
    if data.scenario not in SPLIT_SCENARIOS:
        names = ", ".join(SPLIT_SCENARIOS)
        raise ConfigError(f"data.scenario={data.scenario!r} is not a split scenario ({names})")
    name = data.split_dataset.strip()
    if not name:
        raise ConfigError(
            f"data.scenario={data.scenario} needs data.split_dataset: the dataset to split "
            "(for example data.split_dataset=market1501)"
        )
    if data.scenario == "by_identity" and data.num_splits < 2:
        raise ConfigError(
            f"data.scenario=by_identity needs data.num_splits >= 2, got {data.num_splits}"
        )
    cameras, num_ids = _train_layout(name, str(root), data.source, data.seed)
    common = {"dataset": name, "root": str(root), "source": data.source, "seed": data.seed}
    if data.scenario == "by_camera":
        if len(cameras) < 2:
            raise DatasetError(
                f"{name}: by_camera needs at least 2 training cameras, found {len(cameras)}"
            )
        return [ClientSpec(name=f"{name}-cam{c + 1}", camera=c, **common) for c in cameras]
    n = data.num_splits
    if n > num_ids:
        raise ConfigError(
            f"data.num_splits={n} is more than the {num_ids} training identities of {name}"
        )
    return [
        ClientSpec(name=f"{name}-ids{k + 1}of{n}", part=k, num_parts=n, **common) for k in range(n)
    ]
