"""The typed config: hydra composition and one-line errors for contradictory settings."""

from __future__ import annotations

import pytest

from fedreid.config import Config, compose, from_container
from fedreid.errors import ConfigError


def test_compose_groups_and_overrides() -> None:
    cfg = compose(["data=tiny", "num_rounds=2", "strategy=fedpav_cdw_kd"])
    assert cfg.data.preset == "tiny" and cfg.data.root.endswith("tiny")
    assert cfg.num_rounds == 2 and cfg.strategy.cdw and cfg.strategy.kd


def test_json_round_trip() -> None:
    cfg = compose(["strategy=local"])
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train": {"amp": "sometimes"}}, "train.amp"),
        ({"strategy": {"kd": True}, "data": {"public": ""}}, "needs public data"),
        ({"strategy": {"density": 0.0}}, "density must be in"),
        ({"strategy": {"density": 1.5}}, "density must be in"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"strategy": {"bn_policy": "first"}}, "bn_policy"),
        ({"nonsense": 1}, "invalid config"),
        ({"num_rounds": "many"}, "invalid config"),
    ],
)
def test_contradictions_rejected(override, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_container(override)


def test_bad_override_is_one_line() -> None:
    with pytest.raises(ConfigError, match="invalid overrides") as info:
        compose(["strategy=nope"])
    assert "\n" not in str(info.value)
