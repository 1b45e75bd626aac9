"""The classification task: Dirichlet partitions, the two clients, and two rounds of HideNseek
and FedAvg on the bundled digits through Flower's engine."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedreid.clients.classification_client import (
    ClassificationClient,
    HideNseekClassificationClient,
    accuracy,
)
from fedreid.clients.hidenseek_client import global_model
from fedreid.clients.state import ClientState
from fedreid.config import compose
from fedreid.data.classification import client_data, dirichlet_partition, load_pool
from fedreid.errors import ConfigError
from fedreid.models.builder import classification_model
from fedreid.protocol import MASK, MASK_KEY, SIGNS, W0_KEY
from fedreid.strategies.hidenseek import prune
from fedreid.tasks import get_task, initial_state
from fedreid.utils.bitpack import pack_bits


def test_dirichlet_partition_deterministic_disjoint_covering() -> None:
    _, labels = load_pool("digits")
    parts = dirichlet_partition(labels, 5, alpha=0.5, seed=3)
    again = dirichlet_partition(labels, 5, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    flat = np.concatenate(parts)
    assert len(flat) == len(labels) == len(set(flat.tolist()))  # disjoint, covers everything
    other = dirichlet_partition(labels, 5, alpha=0.5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    # small alpha: clients' label mixes differ (non-IID)
    hist = np.stack([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
    assert np.abs(hist - hist.mean(0)).max() > 0.1
    with pytest.raises(ConfigError):
        dirichlet_partition(labels, 5, alpha=0.0, seed=0)


def test_client_data_is_a_disjoint_train_test_split() -> None:
    cfg = compose(["strategy=hidenseek"], config_name="classify")
    parts = [client_data(cfg, i) for i in range(cfg.classification.num_clients)]
    assert sum(p.num_train + p.num_test for p in parts) == 1797
    for p in parts:
        assert p.train_x.shape[1:] == (1, 8, 8) and p.num_classes == 10
        assert p.num_test == round(cfg.classification.test_fraction * (p.num_train + p.num_test))
    again = client_data(cfg, 2)
    assert torch.equal(again.train_x, parts[2].train_x)
    with pytest.raises(ConfigError):
        client_data(cfg, cfg.classification.num_clients)


def test_clients_fedavg_and_hidenseek_units() -> None:
    cfg = compose(
        ["strategy=hidenseek", "strategy.synflow_iterations=3", "train.local_epochs=1"],
        config_name="classify",
    )
    data = client_data(cfg, 0)
    p = prune(cfg)
    assert "fc.4.weight" in p.order  # the classifier is masked and shared too
    client = HideNseekClassificationClient(
        cfg,
        "client0",
        data,
        ClientState(RecordDict(), None),
        {W0_KEY: p.w0_checksum, MASK_KEY: p.mask_checksum},
    )
    msg = {
        SIGNS: torch.from_numpy(pack_bits(np.ones(p.n_surviving, dtype=bool))),
        MASK: torch.from_numpy(p.packed_mask),
    }
    res = client.fit(msg, 1, evaluate_local=True)
    assert set(res.shared) == {SIGNS} and res.shared[SIGNS].numel() == math.ceil(p.n_surviving / 8)
    assert 0.0 <= res.metrics["local_accuracy"] <= 1.0
    assert client.num_eval_examples == data.num_test
    metrics = client.evaluate({SIGNS: res.shared[SIGNS]})
    assert set(metrics) == {"accuracy", "loss"}
    # the export helper rebuilds the same dense model from seed, mask and signs
    dense_model = global_model(
        cfg, classification_model(cfg), res.shared[SIGNS].numpy(), p.packed_mask
    )
    acc = accuracy(dense_model, data.test_x, data.test_y, torch.device("cpu"))["accuracy"]
    assert acc == pytest.approx(metrics["accuracy"])

    cfg.strategy.name = "fedavg"
    dense = ClassificationClient(cfg, "client0", data, ClientState(None, None))
    state = initial_state(get_task(cfg), cfg)
    res = dense.fit(state, 1)
    assert set(res.shared) == set(state)
    assert not torch.equal(res.shared["fc.4.weight"], state["fc.4.weight"])


# -- two rounds through Flower ----------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1")
@pytest.mark.parametrize("strategy", ["hidenseek", "fedavg"])
def test_two_rounds_classification_through_flower(strategy: str, tmp_path: Path) -> None:
    from fedreid.simulation import simulate

    out = tmp_path / strategy
    cfg = compose(
        [
            f"strategy={strategy}",
            "num_rounds=2",
            "train.local_epochs=1",
            "classification.num_clients=3",
            "strategy.synflow_iterations=5",
            f"output_dir={out}",
        ],
        config_name="classify",
    )
    simulate(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished"
    rounds = {r["round"]: r for r in results["rounds"]}
    assert sorted(rounds) == [1, 2]
    state = initial_state(get_task(cfg), cfg)
    # what FedAvg exchanges: every tensor but the BatchNorm counters
    dense_bytes = sum(v.numel() * 4 for k, v in state.items() if "num_batches" not in k)
    for r in rounds.values():
        assert set(r["clients"]) == {"client0", "client1", "client2"}
        for m in r["clients"].values():
            assert 0.0 <= m["accuracy"] <= 1.0 and m["train_loss"] > 0
            if strategy == "hidenseek":
                n = r["server"]["bits"]
                assert math.ceil(n / 8) <= m["bytes_up"] <= math.ceil(n / 8) + 600
                assert dense_bytes / m["bytes_up"] >= 30 / cfg.strategy.density
            else:
                assert m["bytes_up"] >= dense_bytes
