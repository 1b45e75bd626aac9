"""HideNseek: the vote and its metrics by hand, the client's 1-bit upload and checksums, mask
reuse from state, and two rounds of ReID through Flower's engine with measured message sizes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedreid.clients.hidenseek_client import MASK_STATE, HideNseekClient
from fedreid.clients.state import ClientState
from fedreid.config import compose
from fedreid.data import load_market
from fedreid.errors import ConfigError, UpdateError
from fedreid.models.supermask import get_signs
from fedreid.protocol import MASK, MASK_KEY, SIGNS, W0_KEY
from fedreid.strategies.hidenseek import HideNseek, Pruning, initial_arrays, prune, weighted_vote
from fedreid.utils.bitpack import pack_bits, packed_size, unpack_bits, unpack_tensors
from tests.conftest import small_config, train_reply

T, F = True, False


# -- the vote ---------------------------------------------------------------------------------
def test_weighted_vote_hand_checked() -> None:
    a = np.array([T, T, F, F, T])
    b = np.array([F, T, T, F, F])
    c = np.array([F, F, T, T, T])
    previous = np.array([T, F, F, T, F])
    # weights 3, 1, 2 (total 6): weight for +1 per position = 3, 4, 3, 2, 5
    new, m, per_client = weighted_vote([a, b, c], [3, 1, 2], previous)
    # positions 0 and 2 tie 3:3 and keep the previous sign (T, F)
    assert new.tolist() == [T, T, F, F, T]
    assert m["ties"] == pytest.approx(2 / 5)
    assert m["flipped"] == pytest.approx(3 / 5)  # positions 1, 3, 4 changed
    assert m["agreement"] == pytest.approx((3 + 4 + 3 + 4 + 5) / 6 / 5)
    assert m["unanimous"] == 0.0
    assert m["ones"] == pytest.approx(3 / 5)
    assert m["bits"] == 5
    assert per_client == pytest.approx([5 / 5, 2 / 5, 1 / 5])


def test_vote_weights_matter_and_ties_keep_previous() -> None:
    up, down = np.array([T, T]), np.array([F, F])
    prev = np.array([T, F])
    assert weighted_vote([up, down], [1, 1], prev)[0].tolist() == [T, F]  # both tie
    assert weighted_vote([up, down], [2, 1], prev)[0].tolist() == [T, T]
    assert weighted_vote([up, down], [1, 2], prev)[0].tolist() == [F, F]
    new, m, _ = weighted_vote([up, up], [5, 7], prev)
    assert new.tolist() == [T, T] and m["unanimous"] == 1.0 and m["agreement"] == 1.0
    with pytest.raises(ValueError):
        weighted_vote([up], [0], prev)


def _strategy() -> HideNseek:
    """A HideNseek server over a 4x4 linear layer (16 maskable weights; no SynFlow)."""
    torch.manual_seed(0)
    w0 = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    return HideNseek(w0=w0, min_train_nodes=1, min_available_nodes=1)


MASK16 = np.array([T] * 10 + [F] * 6)


def _arrays(signs: np.ndarray) -> ArrayRecord:
    return ArrayRecord({SIGNS: Array(pack_bits(signs)), MASK: Array(pack_bits(MASK16))})


def _reply(node: int, n: int, bits: np.ndarray) -> Message:
    return train_reply(node, {SIGNS: pack_bits(bits)}, {"train_loss": 1.0}, n)


class _Grid:
    """The two calls of Flower's Grid that configure_train/evaluate make."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


@pytest.fixture
def in_serverapp(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity  # set inside a real ServerApp

    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


def test_aggregate_train_records_metrics_and_excludes_bad_padding(in_serverapp) -> None:
    s = _strategy()
    s.configure_train(1, _arrays(np.ones(10, dtype=bool)), ConfigRecord(), _Grid())
    bits_a = np.array([F] * 10)
    bits_b = np.array([T] * 5 + [F] * 5)
    bad_bits = pack_bits(bits_b).copy()
    bad_bits[-1] |= 0b1000_0000  # a padding bit set: must not shift or count
    bad = train_reply(3, {SIGNS: bad_bits}, {"train_loss": 1.0}, 100)
    arrays, metrics = s.aggregate_train(1, [_reply(1, 30, bits_a), _reply(2, 10, bits_b), bad])
    assert arrays is not None and metrics is not None
    assert unpack_bits(arrays[SIGNS].numpy(), 10).tolist() == [F] * 10  # 30 vs 10: a wins
    np.testing.assert_array_equal(arrays[MASK].numpy(), pack_bits(MASK16))  # mask kept
    report = s.take_report()
    assert list(report.excluded) == [3]
    assert report.server["flipped"] == 1.0
    assert report.server["agreement"] == pytest.approx((5 * 1.0 + 5 * 0.75) / 10)
    assert report.clients[1]["agg_weight"] == pytest.approx(0.75)
    assert report.clients[2]["sign_agreement"] == pytest.approx(0.5)


def test_mask_goes_only_to_nodes_without_it(in_serverapp) -> None:
    s = _strategy()
    s._has_mask = {1}
    out = list(s.configure_train(1, _arrays(np.ones(10, dtype=bool)), ConfigRecord(), _Grid()))
    by_node = {m.metadata.dst_node_id: m for m in out}
    assert set(by_node[1].content["arrays"].keys()) == {SIGNS}
    assert set(by_node[2].content["arrays"].keys()) == {SIGNS, MASK}
    config = by_node[2].content["config"]
    assert config[W0_KEY] == s.w0_checksum and config["hidenseek-bits"] == 10
    assert config[MASK_KEY] == s.pruning(_arrays(np.ones(10, dtype=bool))).mask_checksum
    # a reply must carry the packed signs only
    assert s.expected_reply(by_node[2].content["arrays"]) == {SIGNS: ((2,), np.dtype(np.uint8))}


def test_initial_arrays_hold_all_plus_signs_and_the_mask() -> None:
    cfg = compose(["strategy=hidenseek", "strategy.synflow_iterations=3"], config_name="classify")
    arrays, metrics = initial_arrays(cfg)
    p = prune(cfg)
    assert unpack_bits(arrays[SIGNS].numpy(), p.n_surviving).all()  # all +1
    np.testing.assert_array_equal(arrays[MASK].numpy(), p.packed_mask)  # deterministic
    assert metrics["mask_bytes"] == p.packed_mask.size and metrics["synflow_s"] >= 0
    # the strategy decodes the same pruning from the arrays (resume needs no second SynFlow)
    from fedreid.tasks import get_task

    s = HideNseek(w0=get_task(cfg).seeded_model(cfg), min_train_nodes=1, min_available_nodes=1)
    assert s.pruning(arrays).mask_checksum == p.mask_checksum
    assert s.w0_checksum == p.w0_checksum


def test_bn_policy_average_is_refused() -> None:
    with pytest.raises(ConfigError, match="bn_policy=local"):
        HideNseek(w0=torch.nn.Linear(2, 2), bn_policy="average")


# -- the client -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hns_cfg():
    return small_config(
        **{
            "strategy.name": "hidenseek",
            "strategy.bn_policy": "local",
            "strategy.synflow_iterations": 2,
            "strategy.score_lr": 1.0,
        }
    )


@pytest.fixture(scope="module")
def pruning(hns_cfg) -> Pruning:
    return prune(hns_cfg)


def _message(p: Pruning, with_mask: bool, signs: np.ndarray | None = None) -> dict:
    signs = np.ones(p.n_surviving, dtype=bool) if signs is None else signs
    out = {SIGNS: torch.from_numpy(pack_bits(signs))}
    if with_mask:
        out[MASK] = torch.from_numpy(p.packed_mask)
    return out


def _protocol(p: Pruning) -> dict[str, str]:
    return {W0_KEY: p.w0_checksum, MASK_KEY: p.mask_checksum}


def test_client_uploads_only_packed_signs(
    hns_cfg, pruning: Pruning, market_root: Path, tmp_path: Path
) -> None:
    ds = load_market(market_root)
    client = HideNseekClient(
        hns_cfg, "toy", ds, ClientState(RecordDict(), tmp_path), _protocol(pruning)
    )
    res = client.fit(_message(pruning, with_mask=True), server_round=1)
    assert set(res.shared) == {SIGNS}
    up = res.shared[SIGNS]
    assert up.dtype == torch.uint8 and up.ndim == 1
    assert up.numel() == math.ceil(pruning.n_surviving / 8) == packed_size(pruning.n_surviving)
    unpack_bits(up.numpy(), pruning.n_surviving)  # padding is clean
    assert res.num_examples == len(ds.train)
    assert res.metrics["train_loss"] > 0 and 0.0 <= res.metrics["local_flipped"] <= 1.0
    # the record a ClientApp would send: the packed bytes plus a small numpy header
    record = ArrayRecord(torch_state_dict=res.shared)
    assert up.numel() < record.count_bytes() < up.numel() + 200
    # head and BN statistics stayed on the client
    assert list(tmp_path.glob("head@*.pt")) and list(tmp_path.glob("hidenseek_bn@*.pt"))


def test_global_signs_are_loaded(hns_cfg, pruning: Pruning, market_root: Path) -> None:
    rng = np.random.default_rng(0)
    signs = rng.random(pruning.n_surviving) < 0.5
    client = HideNseekClient(
        hns_cfg, "toy", load_market(market_root), ClientState(None, None), _protocol(pruning)
    )
    model = client.build_model(_message(pruning, True, signs))
    got = get_signs(model)
    flat = np.concatenate([got[name].numpy() for name in pruning.order])
    assert np.array_equal(flat, signs)
    metrics = client.evaluate(_message(pruning, True, signs))
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mINP"}


def test_checksum_mismatch_is_rejected(hns_cfg, pruning: Pruning, market_root: Path) -> None:
    ds = load_market(market_root)
    wrong_w0 = {W0_KEY: "0" * 64, MASK_KEY: pruning.mask_checksum}
    client = HideNseekClient(hns_cfg, "toy", ds, ClientState(None, None), wrong_w0)
    with pytest.raises(ConfigError, match="initial weights rebuilt from seed 0 do not match"):
        client.fit(_message(pruning, True), 1)
    wrong_mask = {W0_KEY: pruning.w0_checksum, MASK_KEY: "0" * 64}
    client = HideNseekClient(hns_cfg, "toy", ds, ClientState(None, None), wrong_mask)
    with pytest.raises(ConfigError, match="pruning mask does not match its checksum"):
        client.fit(_message(pruning, True), 1)
    client = HideNseekClient(hns_cfg, "toy", ds, ClientState(None, None), {})
    with pytest.raises(ConfigError, match="lacks"):
        client.fit(_message(pruning, True), 1)


def test_mask_received_once_then_reused_from_state(
    hns_cfg, pruning: Pruning, market_root: Path, tmp_path: Path
) -> None:
    ds = load_market(market_root)
    proto = _protocol(pruning)
    client = HideNseekClient(hns_cfg, "toy", ds, ClientState(RecordDict(), tmp_path), proto)
    first = client.fit(_message(pruning, with_mask=True), 1)
    stored = torch.load(next(tmp_path.glob(f"{MASK_STATE}@*.pt")))[MASK].numpy()
    assert np.array_equal(stored, pruning.packed_mask)
    assert unpack_tensors(stored, pruning.layout).keys() == pruning.masks.keys()
    # round 2 carries signs only; a restarted node (fresh context.state) reads its state dir
    restarted = HideNseekClient(hns_cfg, "toy", ds, ClientState(RecordDict(), tmp_path), proto)
    signs = unpack_bits(first.shared[SIGNS].numpy(), pruning.n_surviving)
    second = restarted.fit(_message(pruning, with_mask=False, signs=signs), 2)
    assert second.shared[SIGNS].numel() == first.shared[SIGNS].numel()
    # a node with no state at all cannot guess the mask
    lost = HideNseekClient(hns_cfg, "toy", ds, ClientState(RecordDict(), None), proto)
    with pytest.raises(ConfigError, match="no pruning mask"):
        lost.fit(_message(pruning, with_mask=False), 2)
    with pytest.raises(UpdateError, match="carries no"):
        lost.fit({}, 2)


# -- two rounds through Flower ----------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("FEDREID_SKIP_SLOW") == "1", reason="FEDREID_SKIP_SLOW=1")
def test_two_rounds_reid_through_flower(tmp_path: Path) -> None:
    from fedreid.data.synthetic import generate
    from fedreid.models.builder import seeded_reid_model
    from fedreid.models.reid import shared_state
    from fedreid.models.synflow import prunable_layers
    from fedreid.simulation import simulate

    def maskable(model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(prunable_layers(model).values())

    root = generate(tmp_path / "tiny", preset="tiny", seed=0, progress=False)
    out = tmp_path / "run"
    cfg = compose(
        [
            "data=tiny",
            "model.arch=resnet_mini",
            f"data.root={root}",
            "strategy=hidenseek",
            "num_rounds=2",
            "eval_every=2",
            "train.max_batches=2",
            "strategy.synflow_iterations=5",
            "data.height=64",
            "data.width=32",
            f"output_dir={out}",
        ]
    )
    simulate(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished"
    rounds = {r["round"]: r for r in results["rounds"]}
    assert sorted(rounds) == [1, 2]

    n = int(rounds[1]["server"]["bits"])  # surviving weights, as the server counted them
    mask_bytes = int(rounds[1]["server"]["mask_bytes"])
    model = seeded_reid_model(cfg)
    assert n == round(cfg.strategy.density * sum(m.weight.numel() for m in maskable(model)))
    assert mask_bytes == math.ceil(sum(m.weight.numel() for m in maskable(model)) / 8)
    fedpav_up = ArrayRecord(torch_state_dict=shared_state(model)).count_bytes()
    for rnd, r in rounds.items():
        assert set(r["clients"]) == {"market1501", "cuhk03", "ilids"}
        for m in r["clients"].values():
            # bytes_up counts every record (arrays, metrics, the client's name); the upload is
            # coded (upload_coding=auto): at most the packed bits plus a 5-byte header
            assert m["bytes_up"] <= math.ceil(n / 8) + 600
            assert 0 < m["upload_bpw"] <= 8 * (math.ceil(n / 8) + 5) / n
            assert fedpav_up / m["bytes_up"] >= 30 / cfg.strategy.density
            down = m.get("bytes_down_arrays", m["bytes_down"])  # the arrays sent
            if rnd == 1:  # the mask rides along once
                assert down >= math.ceil(n / 8) + mask_bytes
            else:
                assert down <= math.ceil(n / 8) + 200
        for key in ("agreement", "flipped", "unanimous", "bits", "upload_bpw", "xor_rate"):
            assert key in r["server"]
        assert r["server"]["bits"] == n
    for m in rounds[2]["clients"].values():
        assert 0.0 <= m["rank1"] <= 1.0 and 0.0 <= m["mAP"] <= 1.0
    final = torch.load(out / "global_model.pt")
    assert set(final) == {SIGNS, MASK}
    assert final[MASK].numel() == mask_bytes


# -- coded uploads, FedPM, options ---------------------------------------------------------------
def test_coded_uploads_decode_and_corrupt_ones_are_excluded(in_serverapp) -> None:
    from fedreid.protocol import CODING_KEY, AnyLength
    from fedreid.utils import signcode

    torch.manual_seed(0)
    s = HideNseek(
        w0=torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)),
        upload_coding="auto",
        min_train_nodes=1,
        min_available_nodes=1,
    )
    sent = np.ones(10, dtype=bool)
    out = list(s.configure_train(1, _arrays(sent), ConfigRecord(), _Grid()))
    assert out[0].content["config"][CODING_KEY] == "auto"
    shape, dtype = s.expected_reply(out[0].content["arrays"])[SIGNS]
    assert shape == (AnyLength(signcode.max_payload(10)),) and dtype == np.uint8
    a = np.array([F] * 10)
    b = np.array([T] * 9 + [F])
    pa = signcode.encode(a, sent)  # raw: all 10 differ
    pb = signcode.encode(b, sent)  # 10 bits: raw is the smallest (rice needs 5 + 1 bytes)
    bad = pb.copy()
    bad[-1] ^= 0x01  # a data bit: the CRC-32 catches it
    replies = [
        train_reply(1, {SIGNS: pa}, {"train_loss": 1.0}, 10),
        train_reply(2, {SIGNS: pb}, {"train_loss": 1.0}, 30),
        train_reply(3, {SIGNS: bad}, {"train_loss": 1.0}, 100),
    ]
    arrays, _ = s.aggregate_train(1, replies)
    assert unpack_bits(arrays[SIGNS].numpy(), 10).tolist() == b.tolist()  # 30 vs 10: b wins
    report = s.take_report()
    assert list(report.excluded) == [3] and "CRC-32" in report.excluded[3]
    assert report.clients[1]["upload_bpw"] == pytest.approx(8 * pa.size / 10)
    assert report.clients[2]["xor_rate"] == pytest.approx(0.1)
    assert report.clients[2]["upload_coding"] == signcode.RAW
    assert report.server["upload_bpw"] == pytest.approx(8 * (pa.size + pb.size) / 2 / 10)


def test_fedpm_server_estimates_keep_probabilities(in_serverapp) -> None:
    from fedreid.protocol import PROBS
    from fedreid.utils import fedpm, signcode

    s = HideNseek(
        w0=torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)),
        mask_mode="fedpm",
        upload_coding="auto",
        fedpm_prior=1.0,
        min_train_nodes=1,
        min_available_nodes=1,
    )
    p0 = fedpm.encode_probs(np.full(10, 0.7), 8)
    arrays = ArrayRecord({PROBS: Array(p0), MASK: Array(pack_bits(MASK16))})
    out = list(s.configure_train(1, arrays, ConfigRecord(), _Grid()))
    assert set(out[0].content["arrays"].keys()) == {PROBS, MASK}
    ref = fedpm.reference_bits(p0)
    a = np.array([T] * 5 + [F] * 5)
    b = np.array([T] * 10)
    replies = [
        train_reply(1, {SIGNS: signcode.encode(a, ref)}, {"train_loss": 1.0}, 30),
        train_reply(2, {SIGNS: signcode.encode(b, ref)}, {"train_loss": 1.0}, 10),
    ]
    new, _ = s.aggregate_train(1, replies)
    got = fedpm.decode_probs(new[PROBS].numpy())
    # weighted mean 1.0 / 0.25, smoothed with Beta(1, 1) over K = 2 clients: (2 m + 1) / 4
    expected = np.array([0.75] * 5 + [0.375] * 5)
    np.testing.assert_allclose(got, np.rint(expected * 255) / 255)
    report = s.take_report()
    assert report.server["flipped"] == pytest.approx(0.5) and report.server["ones"] == 0.5
    assert 0 < report.server["p_entropy"] <= 1


def test_options_are_checked_and_follow_the_shipped_config(in_serverapp) -> None:
    from fedreid.protocol import CODING_KEY, CONFIG_KEY
    from fedreid.strategies.hidenseek import options

    w0 = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    with pytest.raises(ConfigError, match="mask_mode"):
        HideNseek(w0=w0, mask_mode="ternary")
    with pytest.raises(ConfigError, match="upload_coding"):
        HideNseek(w0=w0, upload_coding="gzip")
    cfg = compose(["strategy=hidenseek_fedpm", "strategy.keep_scores=true"], "classify")
    with pytest.raises(ConfigError, match="keep_scores"):
        options(cfg)
    cfg = compose(["strategy=hidenseek", "strategy.binary_scope=some"], "classify")
    with pytest.raises(ConfigError, match="binary_scope"):
        options(cfg)
    # built with packed uploads, the strategy follows the run config the clients get
    s = HideNseek(w0=w0, min_train_nodes=1, min_available_nodes=1)
    shipped = compose(["strategy=hidenseek", "strategy.upload_coding=auto"], "classify")
    out = list(
        s.configure_train(
            1, _arrays(np.ones(10, bool)), ConfigRecord({CONFIG_KEY: shipped.to_json()}), _Grid()
        )
    )
    assert s.options.upload_coding == "auto" and out[0].content["config"][CODING_KEY] == "auto"
    built = HideNseek.from_config(shipped, w0)
    assert built.options == s.options


def test_binary_masks_prune_the_same_subnetwork_unless_scope_all() -> None:
    base = ["strategy.synflow_iterations=3"]
    sign = prune(compose(["strategy=hidenseek", *base], "classify"))
    binary = prune(compose(["strategy=hidenseek_binary", *base], "classify"))
    fedpm_p = prune(compose(["strategy=hidenseek_fedpm", *base], "classify"))
    assert binary.mask_checksum == sign.mask_checksum == fedpm_p.mask_checksum
    dense = prune(
        compose(["strategy=hidenseek_binary", "strategy.binary_scope=all", *base], "classify")
    )
    assert dense.n_surviving == dense.n_maskable > 10 * sign.n_surviving
    arrays, _ = initial_arrays(compose(["strategy=hidenseek_fedpm", *base], "classify"))
    assert set(arrays.keys()) == {"probs", MASK}
    assert arrays["probs"].numpy().dtype == np.uint8  # sigmoid(1) = 0.731 -> 186
    assert set(arrays["probs"].numpy().tolist()) == {186}
