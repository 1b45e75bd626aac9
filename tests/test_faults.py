"""Faulty clients are excluded with a logged reason; the rounds go on; the model stays finite.

Fast part: every fault kind of :mod:`fedreid.clients.faulty` turns a healthy update into one
that :func:`fedreid.strategies.replies.parse_reply` rejects, with the expected reason.

Engine part: one Flower simulation (tiny preset, 3 clients, ``strategy.min_replies=2``) runs a
fault schedule, one kind per round on the smallest client, then a round in which two clients
fail (fewer valid replies than ``min_replies``: the round is skipped, the model kept)::

    round  1 raise  2 nan  3 inf  4 shape  5 dtype  6 missing_key  7 extra_key
           8 num_examples  9 timeout (sleeps past round_timeout_s)  10 raise + nan (skipped)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedreid.clients.faulty import (
    ATTACKS,
    FAULT_KINDS,
    FaultyClient,
    InjectedFault,
    fault_for,
    maybe_faulty,
    scheduled_faults,
)
from fedreid.config import Config, compose
from fedreid.errors import ConfigError, UpdateError
from fedreid.strategies.replies import parse_reply
from tests.conftest import reply_message

HAS_FAULT_SCHEDULE = hasattr(getattr(Config(), "fault", None), "schedule")
needs_fault_config = pytest.mark.skipif(
    not HAS_FAULT_SCHEDULE,
    reason="pending: Config.fault.schedule/phase, validate_faults and the build_client hook",
)

REASONS = {
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "shape": "has shape",
    "dtype": "has dtype",
    "missing_key": "wrong keys (missing ['",
    "extra_key": "extra ['classifier.weight']",
    "num_examples": "impossible num-examples",
}
"""The reason each kind is excluded with (``raise``: Flower error reply; ``timeout``: late)."""


# --------------------------------------------------------------------------------------------
# Fast: the wrapper alone
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    shared: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Healthy:
    """A stand-in client with a two-tensor update."""

    name = "alpha"

    def fit(self, shared, server_round, evaluate_local=False) -> Result:
        return Result(
            {"w": torch.ones(3, 2), "bn.num_batches_tracked": torch.tensor(4)},
            12,
            {"train_loss": 1.0},
        )

    def evaluate(self, shared) -> dict[str, float]:
        return {"rank1": 0.5, "mAP": 0.4}


def as_reply(result: Result) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                array_dict={
                    k: Array(np.asarray(v.numpy(), order="C")) for k, v in result.shared.items()
                }
            ),
            "metrics": MetricRecord({**result.metrics, "num-examples": int(result.num_examples)}),
            "client": ConfigRecord({"name": "alpha"}),
        }
    )
    return reply_message(content)


def expected_of(result: Result) -> dict:
    return {k: (tuple(v.shape), v.numpy().dtype) for k, v in result.shared.items()}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_each_tensor_fault_is_rejected_with_its_reason(kind: str) -> None:
    healthy = Healthy().fit(None, 1)
    parse_reply(as_reply(healthy), expected_of(healthy))  # the healthy reply passes
    bad = FaultyClient(Healthy(), kind, 1).fit(None, 1)
    with pytest.raises(UpdateError) as err:
        parse_reply(as_reply(bad), expected_of(healthy))
    assert REASONS[kind] in str(err.value) and "alpha" in str(err.value)


def test_raise_sleep_and_evaluate_phase() -> None:
    with pytest.raises(InjectedFault, match="alpha fails in round 3"):
        FaultyClient(Healthy(), "raise", 3).fit(None, 3)
    slept = FaultyClient(Healthy(), "timeout", 1, sleep_s=0.05).fit(None, 1)
    assert slept.num_examples == 12  # late, not wrong
    # train-phase faults leave evaluation alone, evaluate-phase ones leave training alone
    assert FaultyClient(Healthy(), "nan", 1).evaluate(None) == {"rank1": 0.5, "mAP": 0.4}
    ev = FaultyClient(Healthy(), "nan", 1, phase="evaluate")
    assert all(np.isnan(v) for v in ev.evaluate(None).values())
    assert torch.equal(ev.fit(None, 1).shared["w"], torch.ones(3, 2))
    with pytest.raises(InjectedFault):
        FaultyClient(Healthy(), "raise", 1, phase="both").evaluate(None)


def test_schedule_parsing() -> None:
    class Cfg:
        round_timeout_s = 5.0

        class fault:  # noqa: N801 - mimics the config section
            kind = "nan"
            client = "alpha"
            rounds = [2, 3]
            schedule = ["1:raise:beta", "3:shape:beta"]
            phase = "train"
            sleep_s = 0.0

    assert fault_for(Cfg, "alpha", 2) == "nan" and fault_for(Cfg, "alpha", 1) == ""
    assert fault_for(Cfg, "beta", 1) == "raise" and fault_for(Cfg, "beta", 3) == "shape"
    assert isinstance(maybe_faulty(Cfg, Healthy(), 2), FaultyClient)
    assert isinstance(maybe_faulty(Cfg, Healthy(), 4), Healthy)
    assert maybe_faulty(Cfg, Healthy(), 3).sleep_s == 15.0  # round_timeout_s + 10
    Cfg.fault.schedule = ["x:nan:beta"]
    with pytest.raises(ConfigError, match="ROUND:KIND:CLIENT"):
        scheduled_faults(Cfg)
    Cfg.fault.schedule = ["1:melt:beta"]
    with pytest.raises(ConfigError, match="melt"):
        scheduled_faults(Cfg)
    Cfg.fault.schedule = ["0:nan:beta"]
    with pytest.raises(ConfigError, match="rounds start at 1"):
        scheduled_faults(Cfg)
    Cfg.fault.schedule, Cfg.fault.rounds = [], [0]
    with pytest.raises(ConfigError, match="rounds >= 1"):
        scheduled_faults(Cfg)
    assert set(REASONS) | {"raise", "timeout"} | set(ATTACKS) == set(FAULT_KINDS)


@needs_fault_config
def test_fault_config_composes_and_validates() -> None:
    cfg = compose(["fault.schedule=[1:raise:ilids,2:nan:cuhk03]", "fault.sleep_s=3"])
    assert cfg.fault.schedule == ["1:raise:ilids", "2:nan:cuhk03"]
    assert Config.from_json(cfg.to_json()).fault == cfg.fault
    with pytest.raises(ConfigError, match="melt"):
        compose(["fault.kind=melt", "fault.client=ilids"])
    with pytest.raises(ConfigError, match="fault.client"):
        compose(["fault.kind=nan"])


# --------------------------------------------------------------------------------------------
# Engine: one simulation through Flower
# --------------------------------------------------------------------------------------------

TIMEOUT_S = 30.0
SCHEDULE = {
    1: "raise",
    2: "nan",
    3: "inf",
    4: "shape",
    5: "dtype",
    6: "missing_key",
    7: "extra_key",
    8: "num_examples",
    9: "timeout",
}
SKIP_ROUND = 10
FAULTY, OTHER = "ilids", "cuhk03"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedreid.data.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("faults_data") / "tiny", preset="tiny", seed=0, progress=False
    )


@needs_fault_config
@pytest.mark.skipif(os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1")
def test_fault_schedule_through_flower(
    tiny_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedreid.run import RunLoop
    from fedreid.simulation import ClientsFailed, simulate

    schedule = [f"{r}:{k}:{FAULTY}" for r, k in SCHEDULE.items()]
    schedule += [f"{SKIP_ROUND}:raise:{FAULTY}", f"{SKIP_ROUND}:nan:{OTHER}"]
    cfg = compose(
        [
            "data=tiny",
            "model.arch=resnet_mini",
            f"data.root={tiny_root}",
            "data.height=64",
            "data.width=32",
            "data.batch_size=16",
            "train.max_batches=2",
            f"num_rounds={SKIP_ROUND}",
            f"eval_every={SKIP_ROUND}",
            "strategy.min_replies=2",
            "trust.on_too_few=skip",
            f"round_timeout_s={TIMEOUT_S}",
            f"fault.sleep_s={TIMEOUT_S + 10}",
            f"fault.schedule=[{','.join(schedule)}]",
            f"output_dir={tmp_path / 'run'}",
        ]
    )

    # The server runs in this process: keep a copy of the global model after every round.
    snapshots: dict[int, dict[str, np.ndarray]] = {}
    original = RunLoop.save_checkpoint

    def snapshot(self: RunLoop, server_round: int) -> None:
        snapshots[server_round] = {k: np.array(v, copy=True) for k, v in self.arrays.items()}
        original(self, server_round)

    monkeypatch.setattr(RunLoop, "save_checkpoint", snapshot)
    caplog.set_level(logging.INFO, logger="fedreid")
    # the faulty client fails every training round: the run finishes, but says so (exit 3)
    with pytest.raises(ClientsFailed, match=f"client\\(s\\) {FAULTY} sent no valid training reply"):
        simulate(cfg)
    out = tmp_path / "run"

    payload = json.loads((out / "results.json").read_text())
    assert payload["status"] == "finished"
    assert payload["failed_clients"] == [FAULTY]
    rounds = {r["round"]: r for r in payload["rounds"]}
    assert sorted(rounds) == list(range(1, SKIP_ROUND + 1)), "every round ran"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "fedreid" and r.levelno >= logging.WARNING
    ]

    for rnd, kind in SCHEDULE.items():
        entry = rounds[rnd]
        weights = {c: m.get("agg_weight") for c, m in entry["clients"].items()}
        assert weights.get("market1501") and weights.get(OTHER), f"round {rnd}: {entry}"
        assert weights.get(FAULTY) is None, f"round {rnd}: the faulty client was averaged in"
        assert "skipped" not in entry["server"]
        said = [w for w in warnings if w.startswith(f"round {rnd}")]
        if kind == "timeout":
            assert entry["server"].get("train_timeouts") == 1, entry["server"]
            assert any("timed out" in w for w in said), said
        else:
            assert entry["server"].get("excluded") == 1, entry["server"]
            reason = "client error" if kind == "raise" else REASONS[kind]
            assert any("excluded reply" in w and FAULTY in w and reason in w for w in said), (
                f"round {rnd} ({kind}): no exclusion with reason {reason!r} in {said}"
            )
        print(f"round {rnd:2d} {kind:12s} -> {' | '.join(said)[:300]}")

    print(
        "round phase seconds:",
        {r: round(e["server"].get("train_phase_s", 0), 1) for r, e in rounds.items()},
    )
    skipped = rounds[SKIP_ROUND]
    assert skipped["server"].get("skipped") == 1 and skipped["server"].get("excluded") == 2
    assert any(f"round {SKIP_ROUND}:" in w and "round skipped" in w for w in warnings)

    assert sorted(snapshots) == list(range(1, SKIP_ROUND + 1))
    for rnd, arrays in snapshots.items():
        for key, value in arrays.items():
            if value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), f"round {rnd}: {key} not finite"
    for rnd in range(2, SKIP_ROUND):
        assert any(
            not np.array_equal(snapshots[rnd][k], snapshots[rnd - 1][k]) for k in snapshots[rnd]
        ), f"round {rnd} did not update the model"
    for key, value in snapshots[SKIP_ROUND].items():
        assert np.array_equal(value, snapshots[SKIP_ROUND - 1][key]), f"skipped round changed {key}"

    # Evaluation after the faults: everybody, finite numbers.
    final = rounds[SKIP_ROUND]["clients"]
    assert set(final) == {"market1501", "cuhk03", "ilids"}
    assert all(np.isfinite(final[c]["mAP"]) for c in final)


# --------------------------------------------------------------------------------------------
# Attacks within valid shapes (bench/bench_poisoning.py uses them)
# --------------------------------------------------------------------------------------------
@dataclass
class _Fit:
    shared: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def test_attacks_hand_checked() -> None:
    from fedreid.clients.faulty import attack

    received = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(3)}
    honest = _Fit({"w": torch.tensor([1.5, 0.0]), "n": torch.tensor(3)}, 10, {"cdw_distance": 0.1})
    update = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(attack(honest, received, "scale").shared["w"], 1 + 1e3 * update)
    torch.testing.assert_close(attack(honest, received, "negate").shared["w"], 1 - 10 * update)
    flipped = attack(honest, received, "signflip").shared["w"]
    torch.testing.assert_close(flipped, torch.tensor([1 - 0.75, 1 + 0.75]))
    assert attack(honest, received, "scale").shared["n"] == 3  # integers untouched
    assert attack(honest, received, "inflate_cdw").metrics["cdw_distance"] == 1e9
    assert attack(honest, received, "inflate_examples").num_examples == 10**7
