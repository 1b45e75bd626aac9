"""Which client owns which data: the FedReID scenarios, resolved from the config alone.

A :class:`ClientSpec` names a client and says how to load its :class:`ReIDDataset`. The
simulation maps ``partition-id`` to ``client_specs(cfg.data)[partition_id]``; a deployed
SuperNode names its dataset and data root in ``--node-config`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedreid.config import DataConfig, resolve_path
from fedreid.data.market import load_market
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
            from fedreid.data.split import camera_part

            ds = camera_part(ds, self.camera)
        elif self.part >= 0:
            from fedreid.data.split import identity_part

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


def client_specs(data: DataConfig) -> list[ClientSpec]:
    """All clients of the configured scenario, in partition-id order."""
    root = str(resolve_path(data.root))
    if data.scenario == "by_dataset":
        return [
            ClientSpec(name=n, dataset=n, root=root, source=data.source, seed=data.seed)
            for n in dataset_names(data)
        ]
    if data.scenario in ("by_camera", "by_identity"):
        from fedreid.data.split import split_specs

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
