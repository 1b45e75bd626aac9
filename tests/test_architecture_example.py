"""The worked example of docs/architecture.md ("adding a strategy") runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedreid.errors import ConfigError
from tests.conftest import train_reply

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def example_namespace() -> dict:
    text = DOC.read_text()
    block = re.search(
        r"<!-- example:start -->\n```python\n(.*?)```\n<!-- example:end -->", text, re.S
    )
    assert block, "docs/architecture.md lost its example block"
    namespace: dict = {"__name__": "architecture_example"}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    return namespace


def test_example_strategy_bounds_update_norms() -> None:
    cls = example_namespace()["NormBoundedFedPav"]
    with pytest.raises(ConfigError, match="max_norm"):
        cls(max_norm=0)
    s = cls(max_norm=1.0, min_train_nodes=1, min_available_nodes=1)
    s.current = {"w": np.zeros(2, np.float32)}
    big = train_reply(1, {"w": np.array([3.0, 4.0], np.float32)}, {"train_loss": 1.0}, 10)
    small = train_reply(2, {"w": np.array([0.3, 0.4], np.float32)}, {"train_loss": 1.0}, 10)
    arrays, _ = s.aggregate_train(1, [big, small])
    # client 1's update (norm 5) is scaled to norm 1; client 2's (norm 0.5) is kept; mean of both
    np.testing.assert_allclose(arrays["w"].numpy(), [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)
    report = s.take_report()
    assert report.clients[1]["update_norm"] == pytest.approx(5.0)
    assert report.clients[1]["norm_scale"] == pytest.approx(0.2)
    assert report.clients[2]["norm_scale"] == 1.0
    assert report.clients[1]["agg_weight"] == pytest.approx(0.5)
