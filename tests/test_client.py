"""The FedPav client wrapper: only shared keys leave, the head persists, local/BN modes."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import RecordDict

from fedreid.clients.reid_client import ReIDClient
from fedreid.clients.state import ClientState
from fedreid.data import load_market
from fedreid.models import ReIDNet, is_bn_buffer, shared_state
from fedreid.protocol import Upload
from tests.conftest import small_config


def global_shared() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return shared_state(ReIDNet(0, arch="resnet18"))


def test_only_shared_keys_leave_and_head_persists(market_root: Path, tmp_path: Path) -> None:
    cfg = small_config()
    ds = load_market(market_root)
    state_dir = tmp_path / "state"
    client = ReIDClient(cfg, "toy", ds, ClientState(RecordDict(), state_dir))
    shared = global_shared()
    res = client.fit(shared, server_round=1)
    assert set(res.shared) == set(shared), "exactly the shared keys, nothing of the head"
    assert not any(k.startswith("classifier") for k in res.shared)
    assert res.num_examples == len(ds.train)
    assert res.metrics["train_loss"] > 0
    head1 = torch.load(next(state_dir.glob("head@*.pt")))
    assert head1["classifier.weight"].shape == (ds.num_train_pids, 512)

    # A restarted node (fresh context.state) resumes with the head from its state dir.
    restarted = ReIDClient(cfg, "toy", ds, ClientState(RecordDict(), state_dir))
    model = restarted.build_model(shared)
    assert torch.equal(model.classifier.weight.detach(), head1["classifier.weight"])
    restarted.fit(shared, server_round=2)
    head2 = torch.load(max(state_dir.glob("head@*.pt")))
    assert not torch.equal(head1["classifier.weight"], head2["classifier.weight"])


def test_local_strategy_sends_nothing_and_keeps_model(market_root: Path) -> None:
    cfg = small_config(**{"strategy.name": "local"})
    record = RecordDict()
    state = ClientState(record, None)
    client = ReIDClient(cfg, "toy", load_market(market_root), state, upload=Upload.NONE)
    res = client.fit(None, server_round=1)
    assert res.shared == {}
    assert state.load("local_model") is not None and state.load("head") is not None
    kept = state.load("local_model")
    model = client.build_model(None)
    key = "bottleneck.0.weight"
    assert torch.equal(model.state_dict()[key], kept[key])


def test_bn_local_policy_keeps_statistics(market_root: Path) -> None:
    cfg = small_config(**{"strategy.bn_policy": "local"})
    record = RecordDict()
    client = ReIDClient(cfg, "toy", load_market(market_root), ClientState(record, None))
    shared = global_shared()
    res = client.fit(shared, server_round=1)
    assert res.shared and not any(is_bn_buffer(k) for k in res.shared)
    own = ClientState(record, None).load("local_model")
    key = "backbone.1.running_mean"
    model = client.build_model(shared)
    assert torch.equal(model.state_dict()[key], own[key])
    assert not torch.equal(own[key], shared[key])


def test_cdw_distance_and_local_evaluation(market_root: Path) -> None:
    cfg = small_config(**{"strategy.cdw": True, "strategy.cdw_batches": 2})
    client = ReIDClient(cfg, "toy", load_market(market_root), ClientState(None, None), cdw=True)
    res = client.fit(global_shared(), server_round=1, evaluate_local=True)
    assert res.metrics["cdw_distance"] >= 0
    for key in ("local_rank1", "local_mAP", "local_mINP"):
        assert 0.0 <= res.metrics[key] <= 1.0
    metrics = client.evaluate(global_shared())
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mINP"}


def test_a_fully_loaded_model_skips_initialisation_and_equals_the_seeded_build(
    market_root: Path, monkeypatch
) -> None:
    """With the shared part and a saved head, the client builds on uninitialised storage;
    the model is the one the seeded build gives, tensor for tensor."""
    import fedreid.clients.reid_client as rc
    from fedreid.models.builder import reid_model, uninitialised_reid_model

    cfg = small_config()
    client = ReIDClient(cfg, "toy", load_market(market_root), ClientState(RecordDict(), None))
    shared = global_shared()
    client.fit(shared, server_round=1)  # saves the head
    calls = []
    monkeypatch.setattr(
        rc,
        "uninitialised_reid_model",
        lambda *a: calls.append(a) or uninitialised_reid_model(*a),
    )
    fast = client.build_model(shared)
    assert len(calls) == 1
    monkeypatch.setattr(rc, "uninitialised_reid_model", lambda *a: None)  # the seeded path
    slow = client.build_model(shared)
    assert fast.state_dict().keys() == slow.state_dict().keys()
    for key, value in slow.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    # a key nobody loads: no uninitialised model
    n = client.dataset.num_train_pids
    keys = set(reid_model(cfg.model, n).state_dict()) - {"bottleneck.0.weight"}
    assert uninitialised_reid_model(cfg.model, n, keys) is None
    assert uninitialised_reid_model(cfg.model, n, keys | {"bottleneck.0.weight"}) is not None
