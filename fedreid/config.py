"""The one typed configuration object behind both entry points.

``run_simulation.py`` composes it with hydra from ``conf/``; ``flwr run`` composes the same
files from ``[tool.flwr.app.config]``'s ``overrides`` string. The server then ships the resolved
config to every client inside each message, so clients (simulated or deployed) never read a
second copy: only *where their data is* comes from the node (``node_config``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedreid.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

STRATEGIES = (
    "local",
    "fedpav",
    "fedpav_cdw",
    "fedpav_kd",
    "fedpav_cdw_kd",
    "hidenseek",
    "fedavg",
)
BN_POLICIES = ("average", "local")


@dataclass
class DataConfig:
    """Which data the clients own and how images are fed to the network."""

    source: str = "synthetic"  # synthetic (generated offline) | real (readers by name)
    scenario: str = "by_dataset"  # by_dataset | by_camera | by_identity
    preset: str = "default"  # synthetic preset
    seed: int = 0  # synthetic generator seed
    root: str = "data/synthetic/default"  # dataset root (relative: to the working directory)
    datasets: list[str] = field(default_factory=list)  # client datasets; [] = all of the preset
    public: str = "public"  # unlabeled server data for KD, relative to root or absolute; "" = none
    height: int = 128
    width: int = 64
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    pin_memory: bool = False
    split_dataset: str = ""  # by_camera / by_identity: the dataset that is split
    num_splits: int = 0  # by_identity: number of clients


@dataclass
class ModelConfig:
    """The ReID network (DESIGN.md section 5)."""

    arch: str = "resnet18"
    pretrained: bool = False
    last_stride: int = 2
    embed_dim: int = 512
    dropout: float = 0.5


@dataclass
class TrainConfig:
    """Local training recipe (the FedReID reference: SGD, Nesterov, two learning rates)."""

    local_epochs: int = 1
    lr_backbone: float = 0.005
    lr_head: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    max_batches: int = 0  # >0 caps batches per epoch (tests and smoke runs)
    device: str = "cpu"  # cpu | cuda | auto
    amp: bool = False  # bf16/fp16 autocast on GPU
    channels_last: bool = False
    threads: int = 1  # torch threads per client process


@dataclass
class StrategyConfig:
    """Federated algorithm and its knobs."""

    name: str = "fedpav"
    bn_policy: str = "average"  # average: BN running stats averaged; local: they stay on clients
    min_replies: int = 1  # fewer valid replies than this skips the round (model kept)
    cdw: bool = False
    cdw_batches: int = 1
    kd: bool = False
    kd_every: int = 10
    kd_lr: float = 5e-4
    kd_epochs: int = 1
    kd_normalize: bool = False
    kd_batch_size: int = 32
    kd_max_batches: int = 0
    density: float = 0.05  # hidenseek: fraction of shared conv/linear weights kept
    synflow_iterations: int = 100
    synflow_min_per_layer: int = 16  # floor per layer (plain SynFlow can empty a shortcut)
    score_magnitude: float = 0.0  # |initial score|; 0 = each layer's mean |w0|
    mask_mode: str = "sign"  # hidenseek: sign | binary
    score_lr: float = 0.1


@dataclass
class ClassificationConfig:
    """HideNseek's own setting: image classification with non-IID Dirichlet partitions."""

    dataset: str = "digits"  # digits (scikit-learn, offline) | mnist | emnist | cifar10
    data_dir: str = "data/classification"  # torchvision datasets are read/downloaded here
    num_clients: int = 5
    alpha: float = 0.5  # Dirichlet concentration of the label partition (smaller = less IID)
    model: str = "conv4"  # conv4 | resnet18
    batch_size: int = 32
    lr: float = 0.01  # dense training (FedAvg baseline) learning rate
    test_fraction: float = 0.2  # per-client held-out share for federated evaluation


@dataclass
class FaultConfig:
    """Fault injection for reliability tests: one named client misbehaves on given rounds."""

    kind: str = ""  # "" (off) | raise | timeout | nan | inf | shape | dtype | missing_key
    #                  | extra_key | num_examples
    client: str = ""  # the client name that misbehaves
    rounds: list[int] = field(default_factory=list)  # [] = every round
    sleep_s: float = 60.0  # for kind=timeout
    schedule: list[str] = field(default_factory=list)  # more faults, "ROUND:KIND:CLIENT"
    phase: str = "train"  # train | evaluate | both


@dataclass
class WandbConfig:
    """Weights & Biases tracking; offline and disabled unless asked."""

    enabled: bool = False
    mode: str = "offline"
    project: str = "fedreid"
    entity: str = ""


@dataclass
class Config:
    """Everything one run needs. See ``conf/`` for the hydra groups and presets."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    task: str = "reid"  # reid | classification
    num_rounds: int = 10
    eval_every: int = 2  # federated evaluation every k rounds (and always at the last round)
    seed: int = 0
    output_dir: str = ""  # "" = hydra's run folder / a timestamped folder
    state_dir: str = ""  # client state (heads); "" = <output_dir>/clients
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    round_timeout_s: float = 3600.0
    resume: bool = False
    overwrite: bool = False

    def to_json(self) -> str:
        """Serialise for shipping to clients inside a ConfigRecord."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Config:
        """Inverse of :meth:`to_json`."""
        return from_container(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for results.json and wandb)."""
        return asdict(self)


def from_container(container: dict[str, Any] | DictConfig) -> Config:
    """Build a validated :class:`Config` from a plain or omegaconf mapping.

    Unknown keys fail with the key's name (omegaconf's structured merge), then
    :func:`validate` checks the values against each other.
    """
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, container)
        cfg = OmegaConf.to_object(merged)
    except Exception as err:  # omegaconf raises several types; one line for the user
        raise ConfigError(f"invalid config: {str(err).splitlines()[0]}") from err
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject configs that contradict themselves, with one line naming the setting."""
    s = cfg.strategy
    if s.name not in STRATEGIES:
        raise ConfigError(f"strategy.name={s.name!r} is not one of {', '.join(STRATEGIES)}")
    if s.bn_policy not in BN_POLICIES:
        raise ConfigError(f"strategy.bn_policy={s.bn_policy!r} must be one of {BN_POLICIES}")
    if cfg.num_rounds < 1:
        raise ConfigError(f"num_rounds must be >= 1, got {cfg.num_rounds}")
    if cfg.eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {cfg.eval_every}")
    if cfg.train.local_epochs < 1:
        raise ConfigError(f"train.local_epochs must be >= 1, got {cfg.train.local_epochs}")
    if not 0.0 < s.density <= 1.0:
        raise ConfigError(f"strategy.density must be in (0, 1], got {s.density}")
    if s.cdw and s.cdw_batches < 1:
        raise ConfigError(f"strategy.cdw_batches must be >= 1, got {s.cdw_batches}")
    if s.kd and s.kd_every < 1:
        raise ConfigError(f"strategy.kd_every must be >= 1, got {s.kd_every}")
    if s.kd and not cfg.data.public:
        raise ConfigError("strategy.kd=true needs public data: set data.public to a folder")
    if s.min_replies < 1:
        raise ConfigError(f"strategy.min_replies must be >= 1, got {s.min_replies}")
    if cfg.data.height < 16 or cfg.data.width < 8:
        raise ConfigError(f"image size {cfg.data.height}x{cfg.data.width} is too small")
    if cfg.train.device == "cuda" and cfg.client_gpus <= 0:
        raise ConfigError(
            "train.device=cuda needs client_gpus > 0 (Ray hides GPUs from "
            "clients that ask for none)"
        )
    f = cfg.fault
    if f.kind or f.client or f.rounds or f.schedule or f.phase != "train":
        from fedreid.clients.faulty import validate_faults

        validate_faults(cfg)
    if cfg.task not in ("reid", "classification"):
        raise ConfigError(f"task must be reid or classification, got {cfg.task!r}")
    if cfg.task == "classification" and s.name not in ("fedavg", "hidenseek"):
        raise ConfigError(
            f"task=classification supports strategy fedavg or hidenseek, not {s.name!r}"
        )
    if cfg.data.source not in ("synthetic", "real"):
        raise ConfigError(f"data.source must be synthetic or real, got {cfg.data.source!r}")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> Config:
    """Compose ``conf/`` with hydra's compose API (used by ``flwr run`` and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config folder not found: {CONF_DIR}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            raw = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except Exception as err:
        raise ConfigError(f"invalid overrides {overrides}: {str(err).splitlines()[0]}") from err
    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return from_container(container)


def resolve_path(path: str, base: Path | None = None) -> Path:
    """Absolute path: relative paths are taken from ``base`` (default: the working directory)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return ((base or Path.cwd()) / p).resolve()


def register_schema() -> None:
    """Register :class:`Config` as hydra's ``schema`` so every composed value is type-checked."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)


register_schema()
