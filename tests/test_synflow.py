"""SynFlow: exact density, hand-checked scores, ties, determinism, monotone masks, ResNet-18."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedreid.errors import ConfigError
from fedreid.models.convnet import Conv4
from fedreid.models.reid import ReIDNet
from fedreid.models.synflow import default_include, prunable_layers, synflow_masks


def _kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def _total(masks: dict[str, torch.Tensor]) -> int:
    return sum(m.numel() for m in masks.values())


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.013, 0.004])
def test_exact_target_density(density: float) -> None:
    masks = synflow_masks(_mlp(), (7,), density, iterations=20)
    assert _total(masks) == 7 * 13 + 13 * 5 + 5 * 3
    assert _kept(masks) == round(density * _total(masks))
    assert all(m.dtype == torch.bool for m in masks.values())
    assert set(masks) == {"0.weight", "2.weight", "4.weight"}  # weights only, no biases


def test_hand_checked_scores_single_iteration() -> None:
    # R = sum_j |v_j| * sum_i |W_ji|; score(W_ji) = |v_j W_ji|, score(v_j) = |v_j| sum_i |W_ji|.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 2.0]]))
        net[1].weight.copy_(torch.tensor([[2.0, -1.0]]))
    # scores: W = [[2, 6], [0.5, 2]], v = [8, 2.5]. Keep 3 of 6: v0, W01, v1.
    masks = synflow_masks(net, (2,), density=0.5, iterations=1)
    assert masks["0.weight"].tolist() == [[False, True], [False, False]]
    assert masks["1.weight"].tolist() == [[True, True]]
    # Keep 4: W00 and W11 tie at 2.0 for the last place; flat index order keeps W00.
    masks = synflow_masks(net, (2,), density=4 / 6, iterations=1)
    assert masks["0.weight"].tolist() == [[True, True], [False, False]]
    assert masks["1.weight"].tolist() == [[True, True]]


def test_ties_broken_deterministically() -> None:
    net = nn.Linear(8, 1, bias=False)
    nn.init.ones_(net.weight)  # every score equal
    by_index = synflow_masks(net, (8,), density=0.5, iterations=1)["weight"]
    assert by_index.flatten().tolist() == [True] * 4 + [False] * 4
    seeded = [synflow_masks(net, (8,), 0.5, 1, seed=3)["weight"] for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1]) and int(seeded[0].sum()) == 4


def test_deterministic_for_seeded_init_and_model_untouched() -> None:
    def run() -> tuple[nn.Module, dict[str, torch.Tensor]]:
        torch.manual_seed(1)
        net = Conv4(3, 10, 8)
        return net, synflow_masks(net, (3, 8, 8), 0.05, iterations=8)

    net, first = run()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _, second = run()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in after)


def test_masks_shrink_monotonically() -> None:
    torch.manual_seed(2)
    history: list[dict[str, torch.Tensor]] = []
    synflow_masks(
        Conv4(3, 10, 8), (3, 8, 8), 0.02, iterations=6, on_iteration=lambda k, m: history.append(m)
    )
    assert len(history) == 6
    total = _total(history[0])
    for k, (prev, cur) in enumerate(zip(history, history[1:], strict=False), start=2):
        assert _kept(cur) == round(total * 0.02 ** (k / 6))
        assert all(not (cur[n] & ~prev[n]).any() for n in cur)  # cur is a subset of prev


def test_default_include_skips_the_classifier() -> None:
    torch.manual_seed(0)
    net = ReIDNet(num_classes=7, arch="resnet18")
    names = set(prunable_layers(net))
    assert "classifier" not in names and "bottleneck.0" in names and "backbone.0" in names
    assert not default_include("classifier", nn.Linear(2, 2))
    assert not default_include("backbone.1", nn.BatchNorm2d(2))


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ConfigError, match="density"):
        synflow_masks(_mlp(), (7,), 0.0)
    with pytest.raises(ConfigError, match="iterations"):
        synflow_masks(_mlp(), (7,), 0.5, iterations=0)
    with pytest.raises(ConfigError, match="min_per_layer"):
        synflow_masks(_mlp(), (7,), 0.01, iterations=2, min_per_layer=5)
    with pytest.raises(ConfigError, match="no prunable"):
        synflow_masks(_mlp(), (7,), 0.5, include=lambda n, m: False)


@pytest.fixture(scope="module")
def resnet18() -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(num_classes=0, arch="resnet18")


@pytest.fixture(scope="module")
def resnet18_masks(resnet18: ReIDNet) -> dict[str, torch.Tensor]:
    # The paper's 100 iterations on the full-size float64 ResNet-18 (a few seconds).
    return synflow_masks(resnet18, (3, 64, 32), density=0.01, iterations=100)


def test_resnet18_one_percent_exact_and_no_collapse(
    resnet18: ReIDNet, resnet18_masks: dict[str, torch.Tensor]
) -> None:
    masks = resnet18_masks
    assert set(masks) == {f"{n}.weight" for n in prunable_layers(resnet18)}
    assert not any(k.startswith("classifier") for k in masks)
    assert _kept(masks) == round(0.01 * _total(masks))
    # Every layer on the main path keeps weights: the network is not cut anywhere. (Plain
    # SynFlow may empty a projection shortcut: a parallel branch carrying little flow.)
    main_path = {k: m for k, m in masks.items() if "downsample" not in k}
    assert all(int(m.sum()) > 0 for m in main_path.values()), {
        k: int(m.sum()) for k, m in masks.items()
    }
    # ... and the pruned network still carries flow from input to embedding.
    net = ReIDNet(num_classes=0, arch="resnet18").eval()
    with torch.no_grad():
        for name, mod in prunable_layers(net).items():
            mod.weight.copy_(masks[f"{name}.weight"].float())
        for p in net.parameters():
            p.abs_()
        out = net.features(torch.ones(1, 3, 64, 32))
    assert float(out.sum()) > 0


def test_resnet18_min_per_layer_keeps_every_layer(resnet18: ReIDNet) -> None:
    masks = synflow_masks(resnet18, (3, 64, 32), 0.01, iterations=5, min_per_layer=16)
    assert _kept(masks) == round(0.01 * _total(masks))
    assert min(int(m.sum()) for m in masks.values()) >= 16
