"""CDW and KD: hand-checked math, the strategy's exclusions and fallback, one distillation, and
the start-up error for KD without public data."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import FedMedian
from PIL import Image

from fedreid.clients.cdw import logit_distance
from fedreid.config import Config, compose, from_container
from fedreid.errors import ConfigError, DatasetError
from fedreid.models.reid import ReIDNet, is_bn_buffer, shared_state
from fedreid.strategies.cdw import cdw_weights
from fedreid.strategies.distill import distill_round, distill_step, kd_target
from fedreid.strategies.fedpav import FedPav
from fedreid.strategies.kd import ServerDistillation
from fedreid.strategies.registry import fedpav_class
from tests.conftest import train_reply


# -- CDW: the client's distance -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ([[1.0, 0.0]], [[0.0, 1.0]], 1.0),  # orthogonal
        ([[1.0, 2.0]], [[1.0, 2.0]], 0.0),  # identical
        ([[1.0, 0.0]], [[-1.0, 0.0]], 2.0),  # opposite
        ([[3.0, 0.0]], [[1.0, 0.0]], 0.0),  # the scale does not matter, only the direction
        ([[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]], (1.0 + (1 - 1 / math.sqrt(2))) / 2),
    ],
)
def test_logit_distance_hand_checked(old, new, expected) -> None:
    assert logit_distance(torch.tensor(old), torch.tensor(new)) == pytest.approx(expected)


def test_logit_distance_rejects_mismatched_or_empty() -> None:
    with pytest.raises(ValueError):
        logit_distance(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        logit_distance(torch.zeros(0, 3), torch.zeros(0, 3))


def test_cdw_weights_hand_checked() -> None:
    assert cdw_weights([1.0, 3.0]) == pytest.approx([0.25, 0.75])
    assert cdw_weights([0.2, 0.2, 0.6]) == pytest.approx([0.2, 0.2, 0.6])
    assert cdw_weights([0.0, 0.5]) == pytest.approx([0.0, 1.0])
    assert cdw_weights([0.0, 0.0]) is None
    assert cdw_weights([1e-15, 1e-16]) is None  # ~0: the caller falls back to counts
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            cdw_weights([0.5, bad])


# -- CDW: the strategy's weights, through Flower's FedAvg weighting ----------------------------
def make_strategy(cdw: bool) -> FedPav:
    return FedPav(cdw=cdw, min_train_nodes=1, min_available_nodes=1)


def reply(node: int, n: int, distance: float | None, w: list[float] | None = None) -> Message:
    metrics = {"train_loss": 1.0}
    if distance is not None:
        metrics["cdw_distance"] = distance
    arrays = {"w": np.asarray(w if w is not None else [0.0, 0.0], dtype=np.float32)}
    return train_reply(node, arrays, metrics, n)


def aggregate(strategy: FedPav, replies: list[Message], rnd: int = 1):
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    return arrays, metrics, strategy.take_report()


def test_fedpav_weights_are_sample_counts_without_cdw() -> None:
    strategy = make_strategy(cdw=False)
    arrays, _, report = aggregate(
        strategy, [reply(1, 10, 0.9, [0.0, 4.0]), reply(2, 30, 0.1, [4.0, 0.0])]
    )
    assert strategy.weighted_by_key == "num-examples"
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 1.0])  # 0.25 * a + 0.75 * b
    assert report.clients[1]["agg_weight"] == pytest.approx(0.25)
    assert report.clients[2]["agg_weight"] == pytest.approx(0.75)


def test_cdw_weights_are_distances_over_their_sum() -> None:
    strategy = make_strategy(cdw=True)
    assert strategy.weighted_by_key == "cdw_distance"  # Flower's own weighting mechanism
    arrays, _, report = aggregate(
        strategy, [reply(1, 1000, 0.1, [0.0, 4.0]), reply(2, 10, 0.3, [4.0, 0.0])]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 1.0])  # 0.25 / 0.75, not 1000:10
    assert report.clients[1]["agg_weight"] == pytest.approx(0.25)
    assert report.clients[2]["agg_weight"] == pytest.approx(0.75)


def test_cdw_excludes_invalid_distances_with_a_reason(caplog) -> None:
    strategy = make_strategy(cdw=True)
    replies = [
        reply(1, 10, 0.2, [0.0, 4.0]),
        reply(2, 10, -0.1, [100.0, 100.0]),
        reply(3, 10, math.nan, [100.0, 100.0]),
        reply(4, 10, math.inf, [100.0, 100.0]),
        reply(5, 10, 1e9, [100.0, 100.0]),  # a cosine distance lies in [0, 2]
        reply(6, 10, 0.6, [4.0, 0.0]),
    ]
    with caplog.at_level(logging.WARNING, logger="fedreid"):
        arrays, _, report = aggregate(strategy, replies, rnd=3)
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 1.0])
    assert sorted(report.excluded) == [2, 3, 4, 5]
    assert all("invalid cdw_distance" in r for r in report.excluded.values())
    assert sum("invalid cdw_distance" in m for m in caplog.messages) == 4


def test_cdw_all_zero_falls_back_to_sample_counts_and_says_so(caplog) -> None:
    strategy = make_strategy(cdw=True)
    with caplog.at_level(logging.WARNING, logger="fedreid"):
        arrays, _, report = aggregate(
            strategy, [reply(1, 10, 0.0, [0.0, 4.0]), reply(2, 30, 1e-16, [4.0, 0.0])], rnd=2
        )
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 1.0])  # 10:30
    assert any("falling back to sample counts" in m for m in caplog.messages)
    assert report.server["cdw_fallback"] == 1
    assert strategy.weighted_by_key == "cdw_distance"  # restored for the next round


def test_cdw_all_invalid_keeps_the_model() -> None:
    strategy = make_strategy(cdw=True)
    arrays, _, report = aggregate(strategy, [reply(1, 10, math.nan)])
    assert arrays is None and list(report.excluded) == [1]


# -- KD: target and one step ---------------------------------------------------------------------
def test_kd_target_mean_hand_checked() -> None:
    t1 = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t2 = torch.tensor([[0.0, 4.0], [3.0, 1.0]])
    assert torch.allclose(
        kd_target([t1, t2], normalize=False), torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    )
    assert torch.equal(kd_target([t1], normalize=False), t1)


def test_kd_target_normalised_hand_checked() -> None:
    t1 = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    t2 = torch.tensor([[0.0, 4.0], [0.0, 10.0]])
    expected = torch.tensor([[0.5, 0.5], [(0.6 + 0.0) / 2, (0.8 + 1.0) / 2]])
    assert torch.allclose(kd_target([t1, t2], normalize=True), expected)
    with pytest.raises(ValueError):
        kd_target([], normalize=False)
    with pytest.raises(ValueError):
        kd_target([t1, torch.zeros(3, 2)], normalize=False)


def test_distill_step_reduces_the_loss() -> None:
    torch.manual_seed(0)
    student = ReIDNet(0, arch="resnet18").eval()
    images = torch.randn(6, 3, 32, 16)
    target = torch.randn(6, 512)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = [distill_step(student, images, target, optimizer) for _ in range(4)]
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(student.features(images), target))
    assert math.isfinite(losses[0]) and losses[0] > 0
    assert final < losses[0]
    assert losses[-1] < losses[0]


# -- KD: one distillation round on a small public folder -----------------------------------------
def write_public(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "public"
    folder.mkdir(parents=True)
    for i in range(count):
        arr = rng.integers(0, 255, size=(32, 16, 3)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.jpg")
    return root


def kd_config(tmp_path: Path, count: int, **flags) -> Config:
    cfg = Config()
    cfg.data.root = str(write_public(tmp_path / "data", count))
    cfg.data.height, cfg.data.width = 32, 16
    cfg.strategy.kd = True
    cfg.strategy.kd_batch_size = 4
    cfg.strategy.kd_lr = 1e-4  # random networks in eval mode are stiffer than trained ones
    for key, value in flags.items():
        setattr(cfg.strategy, key, value)
    return cfg


def perturbed(
    state: dict[str, np.ndarray],
    seed: int,
    drop_bn: bool = False,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in state.items():
        if drop_bn and is_bn_buffer(k):
            continue
        if v.dtype.kind == "f" and not is_bn_buffer(k):
            v = v * (1 + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
        out[k] = v
    return out


def student_state() -> dict[str, np.ndarray]:
    """A random ResNet-18 whose BatchNorm statistics fit random 32x16 images (as a trained
    model's fit its data), so eval-mode embeddings have a sensible scale."""
    torch.manual_seed(0)
    model = ReIDNet(0, arch="resnet18")
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.features(torch.randn(16, 3, 32, 16))
    return {k: v.numpy() for k, v in shared_state(model).items()}


def test_distill_round_moves_the_student_towards_the_teachers(tmp_path: Path) -> None:
    cfg = kd_config(tmp_path, count=8, kd_epochs=2)
    student = student_state()
    teachers = [perturbed(student, i) for i in range(2)]
    rng_before = torch.get_rng_state()
    out, server = distill_round(cfg, 5, student, teachers)
    assert torch.equal(torch.get_rng_state(), rng_before), "the server's RNG is not moved"
    assert list(out) == list(student)
    for k, v in student.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        if is_bn_buffer(k):
            np.testing.assert_array_equal(out[k], v)  # running statistics untouched
    assert not np.array_equal(out["bottleneck.0.weight"], student["bottleneck.0.weight"])
    assert server["kd_time_s"] > 0 and server["kd_images"] == 8 and server["kd_teachers"] == 2
    assert server["kd_loss_after"] < server["kd_loss_before"]


def test_distill_round_bn_local_and_batch_cap(tmp_path: Path) -> None:
    """bn_policy=local: teachers arrive without BN buffers; batch statistics; a 9th image
    would form a batch of one and is dropped; kd_max_batches caps the images."""
    cfg = kd_config(tmp_path, count=9, bn_policy="local", kd_normalize=True)
    cfg.train.channels_last = True
    student = student_state()
    teachers = [perturbed(student, i, drop_bn=True) for i in range(2)]
    out, server = distill_round(cfg, 1, student, teachers)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in student.items()}
    assert all(v.flags.c_contiguous for v in out.values())
    assert server["kd_images"] == 8
    cfg.strategy.kd_max_batches = 1
    _, server = distill_round(cfg, 2, student, teachers)
    assert server["kd_images"] == 4


def test_kd_wraps_any_aggregator_every_k_rounds() -> None:
    """The KD wrapper distils Flower's aggregate (here FedMedian's) every 3rd round; the
    teachers are the uploaded models, completed with the round's global arrays."""
    calls = []

    def fake_distill(rnd, student, teachers):
        calls.append((rnd, student, teachers))
        return {k: v + 1 for k, v in student.items()}, {"kd_time_s": 0.5}

    inner = fedpav_class(FedMedian)(min_train_nodes=1, min_available_nodes=1, report_weights=False)
    strategy = ServerDistillation(inner, fake_distill, every=3)
    current = ArrayRecord({"w": Array(np.zeros(2, np.float32)), "bn": Array(np.ones(1))})
    for rnd in range(1, 7):
        strategy.current_arrays = current
        replies = [reply(i, 10, None, [float(i), 2.0 * i]) for i in (1, 2, 3)]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        expected = [2.0, 4.0] if rnd % 3 else [3.0, 5.0]  # the median, plus 1 when distilled
        np.testing.assert_allclose(arrays["w"].numpy(), expected)
    assert [c[0] for c in calls] == [3, 6]
    _, student, teachers = calls[0]
    assert set(student) == {"w", "bn"} and len(teachers) == 3
    np.testing.assert_allclose(teachers[2]["w"], [3.0, 6.0])
    np.testing.assert_allclose(teachers[2]["bn"], [1.0])
    assert strategy.take_report().server == {"kd_time_s": 0.5}


# -- KD without public data fails at start --------------------------------------------------------
def test_kd_without_public_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="public"):
        from_container({"strategy": {"name": "fedpav", "kd": True}, "data": {"public": ""}})
    with pytest.raises(ConfigError, match="public"):
        compose(["strategy=fedpav_kd", "data.public="])
    assert compose(["strategy=fedpav", "data.public="]).data.public == ""  # fine without KD


def test_kd_with_a_missing_public_folder_fails_before_flower(tmp_path: Path) -> None:
    from fedreid.data.scenarios import public_images
    from fedreid.data.synthetic import generate
    from fedreid.simulation import prepare

    root = generate(tmp_path / "tiny", preset="tiny", seed=0, progress=False)
    cfg = compose(
        ["data=tiny", "strategy=fedpav_kd", f"data.root={root}", "data.public=no_such_folder"]
    )
    with pytest.raises(DatasetError, match="public data folder not found"):
        prepare(cfg)
    cfg.strategy.kd = False
    assert prepare(cfg) == 3  # the same config without KD starts
    (root / "empty_public").mkdir()
    cfg.data.public = str(root / "empty_public")
    with pytest.raises(DatasetError, match="no images"):
        public_images(cfg.data)


def test_diverged_distillation_keeps_the_aggregate(tmp_path: Path) -> None:
    cfg = kd_config(tmp_path, count=4, kd_lr=1e6)
    student = student_state()
    out, server = distill_round(cfg, 1, student, [perturbed(student, 0)])
    assert out is student
    assert server["kd_diverged"] == 1.0
