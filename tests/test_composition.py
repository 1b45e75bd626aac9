"""Composition with Flower's own classes: aggregators, server optimisers, DP wrappers, KD.

Fast part: the registry builds Flower's classes and rejects contradictions with one line.
Engine part: ONE Flower simulation (``fedreid.simulation.simulate_many``, one Ray start) runs
FedPav with every aggregator and every DP option (1 round) and every server optimiser (2
rounds), then a DP + FedAdam run stopped after round 2 and resumed, against the same run
uninterrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    FedAdam,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from fedreid.config import Config, compose
from fedreid.errors import ConfigError
from fedreid.strategies.fedpav import FedPav, FedPavMixin, LocalTraining
from fedreid.strategies.kd import ServerDistillation
from fedreid.strategies.registry import (
    AGGREGATORS,
    DP_WRAPPERS,
    SERVER_OPTIMIZERS,
    build_strategy,
    check_composition,
    label,
)

AGGREGATOR_RUNS = [f"strategy.aggregator={a}" for a in AGGREGATORS if a != "mean"]
BN_LOCAL = "strategy.bn_policy=local"  # optimisers and DP must not touch BN statistics
OPTIMIZER_RUNS = [
    f"strategy.server_optimizer={o} {BN_LOCAL}" for o in SERVER_OPTIMIZERS if o != "none"
]
DP_RUNS = [
    f"privacy.dp={d} privacy.noise_multiplier=0.01 privacy.clipping_norm=100 {BN_LOCAL}"
    for d in DP_WRAPPERS
    if d != "none"
]


def cfg_of(*overrides: str) -> Config:
    return compose(["data=tiny", *overrides])


# -- the registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "cls"),
    [
        ("strategy.aggregator=median", FedMedian),
        ("strategy.aggregator=trimmed_mean", FedTrimmedAvg),
        ("strategy.aggregator=krum", Krum),
        ("strategy.aggregator=multikrum", MultiKrum),
        ("strategy.aggregator=bulyan", Bulyan),
        ("strategy.server_optimizer=avgm strategy.bn_policy=local", FedAvgM),
        ("strategy.server_optimizer=adam strategy.bn_policy=local", FedAdam),
    ],
)
def test_registry_builds_flowers_classes(override: str, cls: type) -> None:
    strategy, _ = build_strategy(cfg_of(*override.split()), 5)
    assert isinstance(strategy, cls) and isinstance(strategy, FedPavMixin)
    assert strategy.min_train_nodes == 5


def test_registry_wraps_kd_and_dp() -> None:
    plain, _ = build_strategy(cfg_of(), 3)
    assert type(plain) is FedPav and plain.weighted_by_key == "num-examples"
    cdw_kd, _ = build_strategy(cfg_of("strategy=fedpav_cdw_kd"), 3)
    assert isinstance(cdw_kd, ServerDistillation) and cdw_kd.every == 10
    assert cdw_kd.strategy.weighted_by_key == "cdw_distance"
    with pytest.raises(ConfigError, match="privacy.dp=server_adaptive: .*clipped_count_stddev"):
        build_strategy(cfg_of("privacy.dp=server_adaptive", BN_LOCAL), 3)  # Flower's check
    dp_opts = ["privacy.dp=server_adaptive", "privacy.noise_multiplier=0.01", BN_LOCAL]
    dp, _ = build_strategy(cfg_of(*dp_opts, "strategy.aggregator=median"), 3)
    assert isinstance(dp, DifferentialPrivacyServerSideAdaptiveClipping)
    assert isinstance(dp.strategy, FedMedian)
    client_dp, _ = build_strategy(cfg_of("privacy.dp=client_fixed", BN_LOCAL), 3)
    assert isinstance(client_dp, DifferentialPrivacyClientSideFixedClipping)
    assert client_dp.strategy.client_dp == "client_fixed"
    local, _ = build_strategy(cfg_of("strategy=local"), 3)
    assert isinstance(local, LocalTraining)


def test_label_is_derived_from_the_flags() -> None:
    assert label(cfg_of("strategy=fedpav_cdw_kd")) == "fedpav+cdw+kd"
    assert label(cfg_of("strategy=fedpav_cdw", "strategy.cdw=false")) == "fedpav"
    assert label(cfg_of("strategy.aggregator=krum", "privacy.dp=server_fixed", BN_LOCAL)) == (
        "fedpav/krum/dp:server_fixed"
    )


@pytest.mark.parametrize(
    ("overrides", "clients", "message"),
    [
        (["strategy.name=fedpavx"], 3, "strategy.name='fedpavx' is not one of"),
        (["strategy.aggregator=mode"], 3, "strategy.aggregator='mode' is not one of"),
        (["strategy.server_optimizer=sgd"], 3, "server_optimizer='sgd' is not one of"),
        (["privacy.dp=laplace"], 3, "privacy.dp='laplace' is not one of"),
        (["strategy=fedpav_cdw", "strategy.aggregator=median"], 3, "uses no weights"),
        (["strategy.aggregator=median", "strategy.server_optimizer=adam"], 3, "aggregator=mean"),
        (["strategy.server_optimizer=adam"], 3, "bn_policy=local"),
        (["privacy.dp=client_fixed"], 3, "bn_policy=local"),
        (["strategy=fedpav_kd", "privacy.dp=server_fixed", BN_LOCAL], 3, "bypass privacy.dp"),
        (["strategy=hidenseek", "strategy.aggregator=median"], 3, "composes with no"),
        (["strategy=local", "strategy.cdw=true"], 3, "composes with no"),
        (["strategy.aggregator=krum", "strategy.num_malicious=1"], 4, "more than 4 clients"),
        (["strategy.aggregator=bulyan", "strategy.num_malicious=1"], 6, "at least 7 clients"),
        (["strategy.aggregator=trimmed_mean", "strategy.trim_beta=0.5"], 3, "trim_beta"),
        (["strategy.aggregator=multikrum", "strategy.num_to_select=4"], 3, "num_to_select"),
        (["strategy.server_optimizer=avgm", "strategy.server_momentum=1", BN_LOCAL], 3, "momentum"),
        (["privacy.dp=server_fixed", "privacy.clipping_norm=0", BN_LOCAL], 3, "clipping_norm"),
    ],
)
def test_contradictions_stop_with_one_line(overrides: list[str], clients: int, message: str):
    with pytest.raises(ConfigError, match=message) as info:
        check_composition(cfg_of(*overrides), clients)
    assert "\n" not in str(info.value)


# -- everything through Flower's engine, one Ray start ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedreid.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("comp") / "tiny", preset="tiny", seed=0, progress=False)


@pytest.mark.skipif(os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1")
def test_every_option_two_rounds_and_wrapped_resume(tiny_root: Path, tmp_path: Path) -> None:
    base = [
        "data=tiny",
        f"data.root={tiny_root}",
        "data.height=32",
        "data.width=16",
        "data.batch_size=8",
        "train.max_batches=1",
        "eval_every=2",
        "train.amp=off",
        "model.arch=resnet_mini",
    ]
    runs = {
        opts.split()[0].split("=", 1)[1]: opts.split()
        for opts in AGGREGATOR_RUNS + OPTIMIZER_RUNS + DP_RUNS
    }
    assert len(runs) == 5 + 4 + 4
    # server optimisers carry state from round to round: 2 rounds; aggregators and DP wrappers
    # act within a round: 1 (the 3-round wrapped resume below covers DP across rounds)
    two_rounds = {name for name, opts in runs.items() if f"{opts[0]} {BN_LOCAL}" in OPTIMIZER_RUNS}
    assert len(two_rounds) == 4
    cfgs = []
    for name, opts in runs.items():
        rounds = 2 if name in two_rounds else 1
        out = f"output_dir={tmp_path / name}"
        cfgs.append(compose([*base, *opts, f"num_rounds={rounds}", out]))
    wrapped = [
        BN_LOCAL,
        "strategy.server_optimizer=adam",
        "privacy.dp=server_adaptive",
        "privacy.noise_multiplier=0.01",
        "privacy.clipping_norm=100",
    ]
    cfgs.append(compose([*base, *wrapped, "num_rounds=3", f"output_dir={tmp_path / 'full'}"]))
    cfgs.append(compose([*base, *wrapped, "num_rounds=2", f"output_dir={tmp_path / 'part'}"]))
    cfgs.append(
        compose([*base, *wrapped, "num_rounds=3", "resume=true", f"output_dir={tmp_path / 'part'}"])
    )
    from fedreid.simulation import simulate_many

    outcome = simulate_many(cfgs)
    assert set(outcome.values()) == {"finished"}, outcome

    for name in [*runs, "full", "part"]:
        folder = tmp_path / name
        results = json.loads((folder / "results.json").read_text())
        assert results["status"] == "finished", name
        rounds = {r["round"]: r for r in results["rounds"]}
        expected = [1, 2, 3] if name in ("full", "part") else [1, 2] if name in two_rounds else [1]
        assert sorted(rounds) == expected, name
        for r in rounds.values():
            assert set(r["clients"]) == {"market1501", "cuhk03", "ilids"}, name
            assert "skipped" not in r["server"], (name, r["server"])
        evaluated = rounds[2 if 2 in rounds else 1]["clients"]
        assert all(0.0 <= m["rank1"] <= 1.0 for m in evaluated.values()), name
        model = torch.load(folder / "global_model.pt", map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    # The privacy settings are part of the recorded config.
    dp_run = json.loads((tmp_path / "server_fixed" / "results.json").read_text())
    assert dp_run["config"]["privacy"]["dp"] == "server_fixed"
    assert dp_run["config"]["privacy"]["clipping_norm"] == 100
    # Stopped after round 2 and resumed == uninterrupted (FedAdam moments, the adaptive
    # clipping norm and the noise RNG all come back from the checkpoint).
    full = torch.load(tmp_path / "full" / "global_model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "part" / "global_model.pt", weights_only=True)
    assert set(full) == set(resumed)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
