"""``data.holdout``: domains kept out of training (the clients skip them), checked at start."""

from __future__ import annotations

import pytest

from fedreid.config import compose
from fedreid.data.scenarios import client_specs, holdout_names
from fedreid.errors import ConfigError


def test_holdout_domains_are_not_clients() -> None:
    data = compose(["data=tiny", "data.holdout=[ilids]"]).data
    assert [s.name for s in client_specs(data)] == ["market1501", "cuhk03"]
    assert holdout_names(data) == ["ilids"]
    assert [s.name for s in client_specs(compose(["data=tiny"]).data)] == [
        "market1501",
        "cuhk03",
        "ilids",
    ]


def test_holdout_with_explicit_datasets() -> None:
    data = compose(["data=tiny", "data.datasets=[cuhk03,ilids]", "data.holdout=[ilids]"]).data
    assert [s.name for s in client_specs(data)] == ["cuhk03"]


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ("[nowhere]", "not domains of the synthetic preset 'tiny'"),
        ("[ilids,ilids]", "names a domain twice"),
        ("[market1501,cuhk03,ilids]", "leaves no client to train"),
    ],
)
def test_bad_holdout_is_one_config_error(holdout: str, message: str) -> None:
    data = compose(["data=tiny", f"data.holdout={holdout}"]).data
    with pytest.raises(ConfigError, match=message):
        client_specs(data)


def test_holdout_real_data_names_known_readers() -> None:
    data = compose(["data=real_by_dataset", "data.holdout=[viper]"]).data
    assert "viper" not in [s.name for s in client_specs(data)]
    data = compose(["data=real_by_dataset", "data.holdout=[nosuchset]"]).data
    with pytest.raises(ConfigError, match="not known datasets"):
        client_specs(data)
