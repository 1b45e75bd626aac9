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
from fedreid.config import Config, compose
from fedreid.data.classification import (
    client_data,
    dirichlet_partition,
    iid_partition,
    load_pool,
)
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


def test_iid_partition_equal_shares_with_the_pool_label_mix() -> None:
    _, labels = load_pool("digits")
    parts = iid_partition(len(labels), 5, seed=3)
    assert [len(p) for p in parts] == [360, 360, 359, 359, 359]
    flat = np.concatenate(parts)
    assert len(set(flat.tolist())) == len(labels)  # disjoint, covers everything
    again = iid_partition(len(labels), 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], iid_partition(len(labels), 5, seed=4)[0])
    # every client's label mix is close to the pool's (10 classes, ~36 each)
    hist = np.stack([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
    assert np.abs(hist - np.bincount(labels) / len(labels)).max() < 0.05
    with pytest.raises(ConfigError):
        iid_partition(3, 5, seed=0)


def test_partition_is_a_checked_choice() -> None:
    iid = compose(["classification.partition=iid"], config_name="classify")
    dirichlet = compose([], config_name="classify")
    assert client_data(iid, 0).num_train != client_data(dirichlet, 0).num_train
    with pytest.raises(ConfigError, match="classification.partition"):
        compose(["classification.partition=uniform"], config_name="classify")


def test_client_data_is_a_disjoint_train_test_split() -> None:
    cfg = compose(["strategy=hidenseek", "classification.dataset=digits"], config_name="classify")
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
FLOWER_RUNS = ["hidenseek", "hidenseek_fedpm", "fedavg"]


def _two_round_cfg(strategy: str, out: Path) -> Config:
    return compose(
        [
            f"strategy={strategy}",
            "num_rounds=2",
            "train.local_epochs=1",
            "classification.num_clients=3",
            "classification.dataset=digits",  # the small pool keeps this test fast
            "strategy.synflow_iterations=5",
            f"output_dir={out}",
        ],
        config_name="classify",
    )


@pytest.fixture(scope="module")
def two_round_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rounds of each strategy, all in ONE Flower simulation (one Ray start)."""
    from fedreid.simulation import simulate_many

    base = tmp_path_factory.mktemp("cls")
    outcome = simulate_many([_two_round_cfg(s, base / s) for s in FLOWER_RUNS])
    assert set(outcome.values()) == {"finished"}, outcome
    return base


@pytest.mark.skipif(os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1")
@pytest.mark.parametrize("strategy", FLOWER_RUNS)
def test_two_rounds_classification_through_flower(strategy: str, two_round_runs: Path) -> None:
    out = two_round_runs / strategy
    cfg = _two_round_cfg(strategy, out)
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
            if strategy.startswith("hidenseek"):
                n = r["server"]["bits"]
                # a coded upload: at most the packed bits + 5 header bytes (+ record overhead)
                assert m["bytes_up"] <= math.ceil(n / 8) + 600
                assert 0 < m["upload_bpw"] <= 8 * (math.ceil(n / 8) + 5) / n
                # 32x per surviving weight at most; the reply's ~200 bytes of metrics and
                # name cost FedPM's near-incompressible draws (3,065 of 2,862 packed bytes)
                assert dense_bytes / m["bytes_up"] >= 28 / cfg.strategy.density
                if strategy == "hidenseek_fedpm":  # uint8 keep-probabilities down
                    assert m["bytes_down"] >= n
            else:
                assert m["bytes_up"] >= dense_bytes


# -- mnist5k, hub names, Conv6, keep-scores and FedPM clients ------------------------------------
def test_mnist5k_pool_and_partition() -> None:
    x, y = load_pool("mnist5k")
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(y).tolist() == [500] * 10
    cfg = compose(["strategy=hidenseek"], config_name="classify")
    assert cfg.classification.dataset == "mnist5k"  # the classify default
    parts = [client_data(cfg, i) for i in range(cfg.classification.num_clients)]
    assert sum(p.num_train + p.num_test for p in parts) == 5000
    assert all(p.train_x.shape[1:] == (1, 28, 28) for p in parts)
    assert abs(float(torch.cat([p.train_x for p in parts]).mean())) < 0.05  # standardised


def test_hub_names_fail_offline_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedreid.data import classification as cls

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(cls, "_hub_reachable", lambda timeout=3.0: False)
    cls._hub_pool.cache_clear()
    with pytest.raises(ConfigError, match="hub cannot be reached") as err:
        cls.dataset_info("ylecun/mnist")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="choose one of"):
        cls.dataset_info("not-a-dataset")


def test_hub_dataset_is_read_like_flwr_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from fedreid.data import classification as cls

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(60)]
    labels = [i % 3 for i in range(60)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}
    )
    fake = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    monkeypatch.setattr(cls, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: fake)
    cls._hub_pool.cache_clear()
    cls.load_pool.cache_clear()
    try:
        info = cls.dataset_info("someone/tiny-rgb")
        assert (info.channels, info.num_classes, info.image_size) == (3, 3, 8)
        x, y = cls.load_pool("someone/tiny-rgb")
        assert x.shape == (60, 3, 8, 8) and y.tolist() == labels
        np.testing.assert_allclose(x[0].transpose(1, 2, 0) * 255, images[0], atol=1e-3)
    finally:
        cls._hub_pool.cache_clear()
        cls.load_pool.cache_clear()


def test_conv6_for_cifar_size_input() -> None:
    from fedreid.models.convnet import Conv6

    net = Conv6(3, 10, 32)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ConfigError):
        Conv6(3, 10, 28)


def _client(cfg, state: ClientState, coding: str = "auto"):
    from fedreid.protocol import CODING_KEY

    p = prune(cfg)
    data = client_data(cfg, 0)
    config = {W0_KEY: p.w0_checksum, MASK_KEY: p.mask_checksum, CODING_KEY: coding}
    return p, HideNseekClassificationClient(cfg, "client0", data, state, config)


def test_keep_scores_client_carries_its_magnitudes_to_the_next_round(tmp_path: Path) -> None:
    from fedreid.clients.hidenseek_client import SCORES_STATE
    from fedreid.models.supermask import get_scores
    from fedreid.utils import signcode

    base = ["strategy.synflow_iterations=3", "train.local_epochs=1", "train.max_batches=2"]
    cfg = compose(["strategy=hidenseek", "strategy.keep_scores=true", *base], "classify")
    record = RecordDict()
    p, client = _client(cfg, ClientState(record, tmp_path, server_round=1))
    ones = np.ones(p.n_surviving, dtype=bool)
    msg = {SIGNS: torch.from_numpy(pack_bits(ones)), MASK: torch.from_numpy(p.packed_mask)}
    res = client.fit(msg, 1)
    bits = signcode.decode(res.shared[SIGNS].numpy(), p.n_surviving, ones)
    stored = ClientState(record, tmp_path, server_round=2).load(SCORES_STATE)
    assert stored is not None
    flat = torch.cat([stored[k] for k in p.order]).numpy()
    np.testing.assert_array_equal(flat >= 0, bits)  # the stored signs are the uploaded bits
    # round 2: a vote that flips every sign; the client keeps its magnitudes under it
    _, client2 = _client(cfg, ClientState(record, tmp_path, server_round=2))
    model = client2.build_model({SIGNS: torch.from_numpy(pack_bits(~bits))})
    got = torch.cat([get_scores(model)[k] for k in p.order]).numpy()
    np.testing.assert_allclose(np.abs(got), np.abs(flat), rtol=1e-6)
    np.testing.assert_array_equal(got >= 0, ~bits)


def test_fedpm_client_uploads_one_coded_draw() -> None:
    from fedreid.protocol import PROBS
    from fedreid.strategies.hidenseek import initial_arrays
    from fedreid.utils import fedpm, signcode

    base = ["strategy.synflow_iterations=3", "train.local_epochs=1", "train.max_batches=2"]
    cfg = compose(["strategy=hidenseek_fedpm", *base], "classify")
    arrays, _ = initial_arrays(cfg)
    p, client = _client(cfg, ClientState(RecordDict(), None))
    probs = arrays[PROBS].numpy()
    msg = {PROBS: torch.from_numpy(probs), MASK: torch.from_numpy(p.packed_mask)}
    res = client.fit(msg, 1)
    payload = res.shared[SIGNS].numpy()
    bits = signcode.decode(payload, p.n_surviving, fedpm.reference_bits(probs))
    assert 0.5 < bits.mean() < 0.9  # a draw around p = 0.73, moved by training
    again = _client(cfg, ClientState(RecordDict(), None))[1].fit(msg, 1)
    assert np.array_equal(again.shared[SIGNS].numpy(), payload)  # seeded draws: reproducible
    metrics = client.evaluate({PROBS: torch.from_numpy(probs)})
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_each_method_takes_its_learning_rate_from_its_classify_file() -> None:
    """conf/classify.yaml picks conf/classify_strategy/<strategy>.yaml; overrides still win."""
    import yaml

    from fedreid.config import CONF_DIR

    for strategy in ("hidenseek", "hidenseek_binary", "hidenseek_fedpm", "fedavg"):
        chosen = yaml.safe_load((CONF_DIR / "classify_strategy" / f"{strategy}.yaml").read_text())
        cfg = compose([f"strategy={strategy}"], config_name="classify")
        if strategy == "fedavg":
            assert cfg.classification.lr == chosen["classification"]["lr"]
        else:
            assert cfg.strategy.score_lr == chosen["strategy"]["score_lr"]
            assert cfg.strategy.keep_scores == chosen["strategy"].get("keep_scores", False)
    cfg = compose(["strategy=hidenseek", "strategy.score_lr=7"], config_name="classify")
    assert cfg.strategy.score_lr == 7
    # the ReID setting keeps the strategy file's own value
    assert compose(["strategy=hidenseek"]).strategy.score_lr == 0.3
