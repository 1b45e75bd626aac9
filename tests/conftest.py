"""Shared fixtures: a tiny random Market-1501-layout dataset and a small test config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.app.metadata import Metadata
from PIL import Image

from fedreid.config import Config

torch.set_num_threads(1)

FLOWER_MODULES = frozenset(
    {
        "test_bad_input",
        "test_classification",
        "test_cli",
        "test_composition",
        "test_faults",
        "test_hidenseek",
        "test_interrupt",
        "test_packaging",
        "test_pretrain",
        "test_resume",
        "test_run_state",
        "test_strategies_sim",
    }
)
"""Modules whose tests start Flower's simulation engine (Ray) or whole runs in subprocesses.
Under pytest-xdist (``-n 2 --dist loadgroup``, as CI runs) they form one group on one worker,
so two simulations never share the 2 cores and time out; the deployment test (mostly waiting
for Flower's heartbeat expiry) and the unit tests run beside them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in FLOWER_MODULES:
            item.add_marker(pytest.mark.xdist_group("flower"))
        elif module == "test_deploy":
            item.add_marker(pytest.mark.xdist_group("deploy"))


def write_market(
    root: Path,
    num_ids: int = 6,
    cams: int = 2,
    per_cam: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (32, 16),
) -> Path:
    """Random JPEGs in the Market-1501 layout: ids 1..n train, n+1..2n test, 2 cameras."""
    rng = np.random.default_rng(seed)
    h, w = size

    def save(folder: str, pid: int, cam: int, k: int) -> None:
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=3)
        arr = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg")

    for pid in range(1, num_ids + 1):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                save("bounding_box_train", pid, cam, k)
    for pid in range(num_ids + 1, 2 * num_ids + 1):
        save("query", pid, 1, 0)
        for cam in range(1, cams + 1):
            save("bounding_box_test", pid, cam, 1)
    save("bounding_box_test", 0, 1, 99)  # a distractor
    return root


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    return write_market(tmp_path / "toy")


def small_config(**overrides) -> Config:
    """A config that trains a ResNet-18 on 32x16 images for a couple of batches."""
    cfg = Config()
    cfg.data.height, cfg.data.width = 32, 16
    cfg.data.batch_size = 8
    cfg.train.max_batches = 2
    for key, value in overrides.items():
        obj = cfg
        *path, last = key.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, value)
    return cfg


def reply_message(content: RecordDict) -> Message:
    """Wrap a RecordDict as a reply from node 7 (what the strategy receives from Flower)."""

    metadata = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=7,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="",
        created_at=0.0,
        ttl=60,
        message_type="train",
    )
    return Message(content=content, metadata=metadata)


def train_reply(
    node_id: int,
    arrays: dict,
    metrics: dict,
    num_examples: int,
    name: str = "",
) -> Message:
    """A training reply from ``node_id`` as our ClientApp sends it (arrays, metrics, name)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({**metrics, "num-examples": num_examples}),
            "client": ConfigRecord({"name": name or f"node-{node_id}"}),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id=f"m{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=f"x{node_id}",
        group_id="",
        created_at=0.0,
        ttl=60,
        message_type="train",
    )
    return Message(content=content, metadata=metadata)
