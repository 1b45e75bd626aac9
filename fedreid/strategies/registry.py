"""The strategy registry: the only place that maps config names to strategy classes.

``strategy.name`` picks the method (``fedpav``, ``fedavg``, ``local``, ``hidenseek``);
``strategy.cdw`` and ``strategy.kd`` are FedPav's optimisations; ``strategy.aggregator``,
``strategy.server_optimizer`` and ``privacy.dp`` compose Flower's own classes:

- ``aggregator``: ``mean`` = :class:`flwr.serverapp.strategy.FedAvg` (weighted mean),
  ``median`` = ``FedMedian``, ``trimmed_mean`` = ``FedTrimmedAvg(beta=strategy.trim_beta)``,
  ``krum`` = ``Krum(num_malicious_nodes=strategy.num_malicious)``, ``multikrum`` =
  ``MultiKrum(..., num_nodes_to_select=strategy.num_to_select)``, ``bulyan`` = ``Bulyan``;
- ``server_optimizer``: ``avgm`` = ``FedAvgM(server_learning_rate, server_momentum)``,
  ``adam`` / ``yogi`` / ``adagrad`` = ``FedAdam`` / ``FedYogi`` / ``FedAdagrad`` (``eta`` =
  ``strategy.server_lr``, ``beta_1``, ``beta_2``, ``tau``);
- ``privacy.dp``: ``server_fixed`` / ``server_adaptive`` = Flower's
  ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` wrappers; ``client_fixed`` /
  ``client_adaptive`` = ``DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping`` with Flower's
  ``fixedclipping_mod`` / ``adaptiveclipping_mod`` on the clients;
- ``strategy.kd=true``: the :class:`~fedreid.strategies.kd.ServerDistillation` wrapper.

The strategy is built as ``DP( KD( FedPavMixin + <Flower aggregator or optimiser> ) )``.
Combinations that make no sense stop at start with one line (:func:`check_composition`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from fedreid.config import Config
from fedreid.errors import ConfigError
from fedreid.strategies.fedpav import FedPav, FedPavMixin, LocalTraining
from fedreid.tasks import get_task, initial_state

InitialArrays = Callable[[], tuple[ArrayRecord, dict[str, float]]]
"""Lazily builds the initial global arrays (and server metrics of the first round)."""


@dataclass(frozen=True)
class Aggregator:
    """A Flower strategy class and how the config maps to its settings."""

    cls: type[FedAvg]
    kwargs: Callable[[Config], dict[str, Any]]
    weighted: bool  # averages with weights (so CDW and agg_weight make sense)


AGGREGATORS: dict[str, Aggregator] = {
    "mean": Aggregator(FedAvg, lambda c: {}, True),
    "median": Aggregator(FedMedian, lambda c: {}, False),
    "trimmed_mean": Aggregator(FedTrimmedAvg, lambda c: {"beta": c.strategy.trim_beta}, False),
    "krum": Aggregator(Krum, lambda c: {"num_malicious_nodes": c.strategy.num_malicious}, False),
    "multikrum": Aggregator(
        MultiKrum,
        lambda c: {
            "num_malicious_nodes": c.strategy.num_malicious,
            "num_nodes_to_select": c.strategy.num_to_select,
        },
        False,
    ),
    "bulyan": Aggregator(
        Bulyan, lambda c: {"num_malicious_nodes": c.strategy.num_malicious}, False
    ),
}


def _lr(cfg: Config, default: float) -> float:
    return cfg.strategy.server_lr if cfg.strategy.server_lr > 0 else default


def _adaptive(default_eta: float, moments: bool) -> Callable[[Config], dict[str, Any]]:
    def kwargs(cfg: Config) -> dict[str, Any]:
        s = cfg.strategy
        out = {"eta": _lr(cfg, default_eta), "eta_l": cfg.train.lr_backbone, "tau": s.tau}
        if moments:
            out.update(beta_1=s.beta_1, beta_2=s.beta_2)
        return out

    return kwargs


SERVER_OPTIMIZERS: dict[str, Aggregator | None] = {
    "none": None,
    "avgm": Aggregator(
        FedAvgM,
        lambda c: {
            "server_learning_rate": _lr(c, 1.0),
            "server_momentum": c.strategy.server_momentum,
        },
        True,
    ),
    "adam": Aggregator(FedAdam, _adaptive(0.1, True), True),
    "yogi": Aggregator(FedYogi, _adaptive(0.01, True), True),
    "adagrad": Aggregator(FedAdagrad, _adaptive(0.1, False), True),
}
"""Flower's server optimisers; ``strategy.server_lr=0`` keeps each one's own default rate."""

DP_WRAPPERS: dict[str, tuple[type[Strategy], bool] | None] = {
    "none": None,
    "server_fixed": (DifferentialPrivacyServerSideFixedClipping, False),
    "client_fixed": (DifferentialPrivacyClientSideFixedClipping, False),
    "server_adaptive": (DifferentialPrivacyServerSideAdaptiveClipping, True),
    "client_adaptive": (DifferentialPrivacyClientSideAdaptiveClipping, True),
}
"""``privacy.dp`` -> (Flower's wrapper, adaptive clipping?)."""
CLIENT_SIDE_DP = ("client_fixed", "client_adaptive")


@functools.cache
def fedpav_class(base: type[FedAvg]) -> type[FedAvg]:
    """FedPav on top of any FedAvg-family Flower strategy (FedAvg itself: :class:`FedPav`)."""
    if base is FedAvg:
        return FedPav
    return type(f"FedPav{base.__name__}", (FedPavMixin, base), {"__doc__": FedPav.__doc__})


# -- composition --------------------------------------------------------------------
def check_composition(cfg: Config, num_clients: int) -> None:
    """Reject, with one line, settings that contradict each other or name nothing."""
    s, p = cfg.strategy, cfg.privacy
    if s.name not in STRATEGIES:
        raise ConfigError(f"strategy.name={s.name!r} is not one of {', '.join(STRATEGIES)}")
    if s.aggregator not in AGGREGATORS:
        raise ConfigError(
            f"strategy.aggregator={s.aggregator!r} is not one of {', '.join(AGGREGATORS)}"
        )
    if s.server_optimizer not in SERVER_OPTIMIZERS:
        raise ConfigError(
            f"strategy.server_optimizer={s.server_optimizer!r} is not one of "
            f"{', '.join(SERVER_OPTIMIZERS)}"
        )
    if p.dp not in DP_WRAPPERS:
        raise ConfigError(f"privacy.dp={p.dp!r} is not one of {', '.join(DP_WRAPPERS)}")
    composed = [
        f"strategy.{k}={v}"
        for k, v, off in (
            ("aggregator", s.aggregator, "mean"),
            ("server_optimizer", s.server_optimizer, "none"),
            ("cdw", s.cdw, False),
            ("kd", s.kd, False),
        )
        if v != off
    ] + ([f"privacy.dp={p.dp}"] if p.dp != "none" else [])
    if s.name in ("local", "hidenseek") and composed:
        raise ConfigError(
            f"strategy={s.name} composes with no aggregator, server optimiser, CDW, KD "
            f"or DP; drop {', '.join(composed)}"
        )
    if s.aggregator != "mean" and s.server_optimizer != "none":
        raise ConfigError(
            f"strategy.server_optimizer={s.server_optimizer} steps from Flower's weighted mean; "
            f"it cannot follow strategy.aggregator={s.aggregator} (use aggregator=mean)"
        )
    if (s.server_optimizer != "none" or p.dp != "none") and s.bn_policy != "local":
        what = (
            f"strategy.server_optimizer={s.server_optimizer}"
            if p.dp == "none"
            else (f"privacy.dp={p.dp}")
        )
        raise ConfigError(
            f"{what} would step or noise the BatchNorm running statistics (a variance can turn "
            "negative): use strategy.bn_policy=local"
        )
    if s.cdw and not AGGREGATORS[s.aggregator].weighted:
        raise ConfigError(
            f"strategy.cdw=true weights a mean by cosine distances; "
            f"strategy.aggregator={s.aggregator} uses no weights"
        )
    if s.kd and p.dp != "none":
        raise ConfigError(
            "strategy.kd=true distils from the raw client models, which would bypass "
            f"privacy.dp={p.dp}; use one or the other"
        )
    if s.kd and cfg.task != "reid":
        raise ConfigError("strategy.kd=true distils ReID embeddings: task=reid only")
    if s.cdw and cfg.task != "reid":
        raise ConfigError("strategy.cdw=true needs ReID logits: task=reid only")
    f = s.num_malicious
    if s.aggregator in ("krum", "multikrum") and num_clients <= 2 * f + 2:
        raise ConfigError(
            f"strategy.aggregator={s.aggregator} with num_malicious={f} needs more than "
            f"{2 * f + 2} clients, the scenario has {num_clients}"
        )
    if s.aggregator == "bulyan" and num_clients < 4 * f + 3:
        raise ConfigError(
            f"strategy.aggregator=bulyan with num_malicious={f} needs at least {4 * f + 3} "
            f"clients, the scenario has {num_clients}"
        )
    if s.aggregator == "trimmed_mean" and not 0.0 <= s.trim_beta < 0.5:
        raise ConfigError(f"strategy.trim_beta must be in [0, 0.5), got {s.trim_beta}")
    if s.aggregator == "multikrum" and not 1 <= s.num_to_select <= num_clients:
        raise ConfigError(
            f"strategy.num_to_select must be in [1, {num_clients}], got {s.num_to_select}"
        )
    if s.num_malicious < 0:
        raise ConfigError(f"strategy.num_malicious must be >= 0, got {s.num_malicious}")
    if s.server_optimizer == "avgm" and not 0.0 <= s.server_momentum < 1.0:
        raise ConfigError(f"strategy.server_momentum must be in [0, 1), got {s.server_momentum}")
    if s.server_lr < 0:
        raise ConfigError(
            f"strategy.server_lr must be >= 0 (0 = Flower's default), got {s.server_lr}"
        )
    if p.dp != "none":
        if p.noise_multiplier < 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got {p.noise_multiplier}")
        if p.clipping_norm <= 0:
            raise ConfigError(f"privacy.clipping_norm must be > 0, got {p.clipping_norm}")
        if not 0.0 <= p.target_clipped_quantile <= 1.0:
            raise ConfigError("privacy.target_clipped_quantile must be in [0, 1]")


def _sampling(num_clients: int) -> dict[str, Any]:
    """Every client trains and evaluates every round, as in FedReID."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": num_clients,
        "min_evaluate_nodes": num_clients,
        "min_available_nodes": num_clients,
    }


def _fedpav(cfg: Config, num_clients: int) -> Strategy:
    s = cfg.strategy
    agg = SERVER_OPTIMIZERS[s.server_optimizer] or AGGREGATORS[s.aggregator]
    base: type[FedAvg] = agg.cls
    kwargs = agg.kwargs(cfg)
    cls = fedpav_class(base)
    strategy: Strategy = cls(
        bn_policy=s.bn_policy,
        cdw=s.cdw,
        report_weights=agg.weighted,
        client_dp=cfg.privacy.dp if cfg.privacy.dp in CLIENT_SIDE_DP else "",
        **_sampling(num_clients),
        **kwargs,
    )
    if s.kd:
        from fedreid.strategies.distill import distill_round
        from fedreid.strategies.kd import ServerDistillation

        strategy = ServerDistillation(
            strategy, functools.partial(distill_round, cfg), every=s.kd_every
        )
    return _with_privacy(cfg, strategy, num_clients)


def _with_privacy(cfg: Config, strategy: Strategy, num_clients: int) -> Strategy:
    p = cfg.privacy
    wrapper = DP_WRAPPERS[p.dp]
    if wrapper is None:
        return strategy
    cls, adaptive = wrapper
    try:
        if adaptive:
            extra = (
                {"clipped_count_stddev": p.clipped_count_stddev} if p.clipped_count_stddev else {}
            )
            return cls(
                strategy,
                noise_multiplier=p.noise_multiplier,
                num_sampled_clients=num_clients,
                initial_clipping_norm=p.clipping_norm,
                target_clipped_quantile=p.target_clipped_quantile,
                clip_norm_lr=p.clip_norm_lr,
                **extra,
            )
        return cls(
            strategy,
            noise_multiplier=p.noise_multiplier,
            clipping_norm=p.clipping_norm,
            num_sampled_clients=num_clients,
        )
    except ValueError as err:  # Flower's own checks of the DP settings, as one line
        raise ConfigError(f"privacy.dp={p.dp}: {str(err).splitlines()[0]}") from err


def _local(cfg: Config, num_clients: int) -> Strategy:
    return LocalTraining(**_sampling(num_clients))


def _hidenseek(cfg: Config, num_clients: int) -> Strategy:
    from fedreid.strategies.hidenseek import HideNseek

    return HideNseek.from_config(cfg, get_task(cfg).seeded_model(cfg), **_sampling(num_clients))


def _dense_initial(cfg: Config) -> InitialArrays:
    return lambda: (ArrayRecord(torch_state_dict=initial_state(get_task(cfg), cfg)), {})


def _hidenseek_initial(cfg: Config) -> InitialArrays:
    from fedreid.strategies.hidenseek import initial_arrays

    return lambda: initial_arrays(cfg)


@dataclass(frozen=True)
class StrategySpec:
    """A registered method: how to build its strategy and its initial global arrays."""

    build: Callable[[Config, int], Strategy]
    initial: Callable[[Config], InitialArrays]


STRATEGIES: dict[str, StrategySpec] = {
    "fedpav": StrategySpec(_fedpav, _dense_initial),
    # with no client-local head (the classification task) FedPav is exactly FedAvg
    "fedavg": StrategySpec(_fedpav, _dense_initial),
    "local": StrategySpec(_local, _dense_initial),
    "hidenseek": StrategySpec(_hidenseek, _hidenseek_initial),
}


def build_strategy(cfg: Config, num_clients: int) -> tuple[Strategy, InitialArrays]:
    """The composed strategy for ``cfg`` and a function that makes the initial arrays."""
    check_composition(cfg, num_clients)
    spec = STRATEGIES[cfg.strategy.name]
    return spec.build(cfg, num_clients), spec.initial(cfg)


def label(cfg: Config) -> str:
    """A short name of the composed method, e.g. ``fedpav+cdw+kd/median/dp:server_fixed``."""
    s = cfg.strategy
    name = s.name + ("+cdw" if s.cdw else "") + ("+kd" if s.kd else "")
    if s.aggregator != "mean":
        name += f"/{s.aggregator}"
    if s.server_optimizer != "none":
        name += f"/{s.server_optimizer}"
    if cfg.privacy.dp != "none":
        name += f"/dp:{cfg.privacy.dp}"
    return name
