"""Supermask layers: effective weight, straight-through gradient, frozen parts, conversion."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.errors import ConfigError, UpdateError
from fedreid.models.convnet import Conv4
from fedreid.models.reid import ReIDNet
from fedreid.models.supermask import (
    MaskedConv2d,
    MaskedLayer,
    MaskedLinear,
    convert_to_supermask,
    count_maskable,
    count_surviving,
    get_masks,
    get_signs,
    mask_parameters,
    masked_layers,
    set_signs,
    to_dense,
)
from fedreid.models.synflow import prunable_layers, synflow_masks


def _tiny(mode: str = "sign") -> MaskedLinear:
    w0 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    layer = MaskedLinear(w0, torch.tensor([0.1, -0.2]), mask, mode=mode)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([[-0.3, 0.2, 0.7], [0.4, -0.1, -2.0]]))
    return layer


def test_effective_weight_is_w0_mask_sign() -> None:
    layer = _tiny()
    sign = torch.where(layer.scores >= 0, 1.0, -1.0)
    expected = layer.w0 * layer.mask * sign
    assert torch.equal(layer.effective_weight(), expected)
    x = torch.randn(4, 3)
    assert torch.equal(layer(x), F.linear(x, expected, layer.bias))


def test_sign_of_zero_follows_the_sign_bit_in_forward_and_bits() -> None:
    for mode in ("sign", "binary"):
        layer = MaskedLinear(torch.tensor([[3.0, 3.0]]), None, mode=mode)
        with torch.no_grad():
            layer.scores.copy_(torch.tensor([[0.0, -0.0]]))
        off = -3.0 if mode == "sign" else 0.0
        assert layer.effective_weight().tolist() == [[3.0, off]]
        assert get_signs(nn.Sequential(layer))["0.weight"].tolist() == [True, False]


def test_straight_through_gradient_matches_hand_computation() -> None:
    layer = _tiny()
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    c = torch.tensor([[1.0, -2.0], [0.5, 1.0]])
    (layer(x) * c).sum().backward()
    # dL/dW_eff = c^T x; STE: dW_eff/ds = w0 * mask (sign treated as identity, no clipping)
    expected = (c.T @ x) * layer.w0 * layer.mask
    assert torch.allclose(layer.scores.grad, expected)
    assert layer.w0.grad is None and not layer.w0.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["scores"]


def test_binary_mode_gives_zero_or_w0() -> None:
    layer = _tiny("binary")
    w = layer.effective_weight()
    kept = (layer.scores >= 0) & layer.mask
    assert torch.equal(w, torch.where(kept, layer.w0, torch.zeros(())))
    assert all(v == 0 or v in layer.w0.flatten().tolist() for v in w.flatten().tolist())
    x = torch.randn(2, 3)
    layer(x).sum().backward()
    assert torch.allclose(layer.scores.grad, torch.ones(2, 1) * x.sum(0) * layer.w0 * layer.mask)


def test_pruned_positions_stay_zero_after_optimiser_steps() -> None:
    layer = _tiny()
    opt = torch.optim.SGD(layer.parameters(), lr=10.0, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 3)).pow(2).sum().backward()
        opt.step()
    w = layer.effective_weight()
    assert torch.all(w[~layer.mask] == 0)
    assert torch.equal(w.abs(), (layer.w0 * layer.mask).abs())  # only signs can change


def test_scores_can_flip_signs() -> None:
    layer = MaskedLinear(torch.tensor([[1.0]]), None, magnitude=0.01)
    opt = torch.optim.SGD(mask_parameters(nn.Sequential(layer)), lr=1.0)
    loss = layer(torch.ones(1, 1)).sum()  # minimised by w = -1
    loss.backward()
    opt.step()
    assert layer.effective_weight().item() == -1.0


def test_conv_matches_dense_conv_including_padding_modes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7)
    for conv in (
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True),
        nn.Conv2d(3, 6, 3, padding=2, dilation=2, groups=3, bias=False),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 4, 3, padding="same"),
    ):
        layer = MaskedConv2d.from_dense(conv)
        assert torch.equal(layer(x), conv(x))
        assert torch.equal(to_dense(nn.Sequential(layer))(x), conv(x))


@pytest.fixture(scope="module")
def reid() -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(num_classes=5, arch="resnet18").eval()


def _ones_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{n}.weight": torch.ones_like(m.weight, dtype=torch.bool)
        for n, m in prunable_layers(model).items()
    }


def test_convert_reidnet_reproduces_dense_model(reid: ReIDNet) -> None:
    net = convert_to_supermask(copy.deepcopy(reid), _ones_masks(reid)).eval()
    assert type(net.classifier) is nn.Linear
    assert isinstance(net.bottleneck[0], MaskedLinear)
    assert isinstance(net.backbone[0], MaskedConv2d)
    assert len(masked_layers(net)) == len(prunable_layers(reid)) == 21
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reid(x))
        assert torch.equal(to_dense(net)(x), reid(x))


def test_trainable_parameters(reid: ReIDNet) -> None:
    net = convert_to_supermask(copy.deepcopy(reid), _ones_masks(reid))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    scores = {n for n in trainable if n.endswith(".scores")}
    assert trainable == scores | {"classifier.weight", "classifier.bias"}
    assert len(scores) == len(mask_parameters(net)) == 21
    assert not any("w0" in n for n, _ in net.named_parameters())
    assert "bottleneck.0.bias" in dict(net.named_buffers())  # frozen bias
    net_bn = convert_to_supermask(copy.deepcopy(reid), _ones_masks(reid), train_bn=True)
    trainable_bn = {n for n, p in net_bn.named_parameters() if p.requires_grad}
    assert "backbone.1.weight" in trainable_bn and "bottleneck.1.bias" in trainable_bn
    assert (
        count_surviving(net)
        == count_maskable(net)
        == sum(m.numel() for m in _ones_masks(reid).values())
    )


def test_signs_round_trip_and_validation() -> None:
    torch.manual_seed(0)
    net = Conv4(3, 10, 8)
    masks = synflow_masks(net, (3, 8, 8), 0.1, iterations=3)
    net = convert_to_supermask(net, masks)
    assert count_surviving(net) == sum(int(m.sum()) for m in masks.values())
    assert all(torch.equal(get_masks(net)[k], masks[k]) for k in masks)
    assert "fc.4.weight" in masks  # Conv4 has no local head: its last layer is masked too
    signs = {k: torch.rand(int(m.sum())) > 0.5 for k, m in masks.items()}
    set_signs(net, signs, magnitude=0.5)
    got = get_signs(net)
    assert all(torch.equal(got[k], signs[k]) for k in signs)
    for name, layer in masked_layers(net).items():
        w = layer.effective_weight()
        sign = torch.where(signs[f"{name}.weight"], 1.0, -1.0)
        assert torch.equal(w[layer.mask], layer.w0[layer.mask] * sign)
        assert torch.all(w[~layer.mask] == 0) and torch.all(layer.scores.abs() == 0.5)
    with pytest.raises(UpdateError, match="missing"):
        set_signs(net, {k: v for k, v in signs.items() if k != "fc.4.weight"})
    with pytest.raises(UpdateError, match="expected"):
        set_signs(net, {**signs, "fc.4.weight": signs["fc.4.weight"][1:]})
    with pytest.raises(UpdateError, match="bool"):
        set_signs(net, {**signs, "fc.4.weight": signs["fc.4.weight"].float()})


def test_state_dict_round_trip_refreshes_cache() -> None:
    torch.manual_seed(0)
    masks = {k: torch.rand(v.shape) > 0.5 for k, v in _ones_masks(Conv4(1, 3, 4)).items()}
    torch.manual_seed(1)
    a = convert_to_supermask(Conv4(1, 3, 4), masks)
    torch.manual_seed(2)
    b = convert_to_supermask(Conv4(1, 3, 4), {k: ~v for k, v in masks.items()})
    with torch.no_grad():
        for p in mask_parameters(a):
            p.normal_()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(a(x), b(x))


def test_convert_rejects_mismatched_masks(reid: ReIDNet) -> None:
    masks = _ones_masks(reid)
    masks.pop("bottleneck.0.weight")
    with pytest.raises(ConfigError, match="missing"):
        convert_to_supermask(copy.deepcopy(reid), masks)
    with pytest.raises(ConfigError, match="shape"):
        MaskedLinear(torch.ones(2, 2), None, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="mode"):
        MaskedLinear(torch.ones(2, 2), None, mode="ternary")  # type: ignore[arg-type]


def test_binary_conversion_over_all_weights() -> None:
    torch.manual_seed(0)
    dense = Conv4(3, 4, 8)
    net = convert_to_supermask(copy.deepcopy(dense), None, mode="binary")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), dense(x))  # scores start positive: every weight kept
    assert count_surviving(net) == count_maskable(net)
    assert all(
        isinstance(m, MaskedLayer) and m.mode == "binary" for m in masked_layers(net).values()
    )


def test_conv4_shapes() -> None:
    assert Conv4(3, 10, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert Conv4(1, 7, (28, 12))(torch.zeros(1, 1, 28, 12)).shape == (1, 7)
    with pytest.raises(ConfigError):
        Conv4(3, 10, 30)


# -- FedPM mode and the confidence-preserving start ------------------------------------------------
def test_fedpm_train_draws_eval_is_the_most_likely_mask() -> None:
    from fedreid.models.supermask import sample_bits, set_probs

    torch.manual_seed(0)
    w0 = torch.randn(40, 50)
    layer = MaskedLinear(w0, None, torch.ones_like(w0, dtype=torch.bool), mode="fedpm")
    model = nn.Sequential(layer)
    p = torch.rand(w0.numel())
    set_probs(model, {"0.weight": p})
    assert torch.allclose(layer.probs(), p.clamp(1e-3, 1 - 1e-3), atol=1e-5)
    layer.train()
    w = layer.effective_weight()
    assert bool(((w == 0) | (w == w0)).all())  # every entry dropped or kept whole
    layer.eval()
    assert torch.equal(layer.effective_weight(), torch.where(p.view_as(w0) >= 0.5, w0, 0.0))
    # to_dense uses the most likely mask even in train mode
    layer.train()
    dense = to_dense(model)
    assert torch.equal(dense[0].weight, torch.where(p.view_as(w0) >= 0.5, w0, 0.0))
    # one upload draw: Bernoulli(p), reproducible with a seeded generator
    draws = torch.stack(
        [sample_bits(model, torch.Generator().manual_seed(s))["0.weight"] for s in range(300)]
    )
    assert (draws.float().mean(0) - p).abs().max() < 0.15
    again = sample_bits(model, torch.Generator().manual_seed(0))["0.weight"]
    assert torch.equal(again, draws[0])


def test_fedpm_gradient_is_straight_through_with_the_sigmoid_slope() -> None:
    w0 = torch.tensor([[2.0, -1.0]])
    layer = MaskedLinear(w0, None, mode="fedpm", magnitude=0.5)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([[0.0, 1.0]]))
    layer.train()
    x = torch.tensor([[1.0, 3.0]])
    layer(x).sum().backward()
    p = torch.sigmoid(torch.tensor([0.0, 2.0]))  # scores / scale
    expected = x[0] * w0[0] * 4 * p * (1 - p)
    assert torch.allclose(layer.scores.grad[0], expected)


def test_keep_scores_start_takes_signs_from_the_vote_and_magnitudes_from_the_client() -> None:
    from fedreid.models.supermask import get_scores, set_signed_scores

    layer = _tiny()
    model = nn.Sequential(layer)
    own = get_scores(model)  # surviving positions: -0.3, 0.7, 0.4, -0.1
    assert own["0.weight"].tolist() == pytest.approx([-0.3, 0.7, 0.4, -0.1])
    vote = {"0.weight": torch.tensor([True, False, False, True])}
    set_signed_scores(model, vote, own)
    assert get_scores(model)["0.weight"].tolist() == pytest.approx([0.3, -0.7, -0.4, 0.1])
    assert get_signs(model)["0.weight"].tolist() == [True, False, False, True]
    # a zero magnitude keeps the vote's bit through the sign of zero
    set_signed_scores(model, vote, {"0.weight": torch.zeros(4)})
    assert get_signs(model)["0.weight"].tolist() == [True, False, False, True]
    with pytest.raises(UpdateError, match="stored scores"):
        set_signed_scores(model, vote, {"0.weight": torch.zeros(3)})
