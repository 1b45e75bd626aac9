"""The ReID network: the shared/head split as key sets, embedding size, last stride."""

from __future__ import annotations

import pytest
import torch

from fedreid.errors import ConfigError
from fedreid.models import ReIDNet, head_state, is_bn_buffer, load_shared, shared_state


def test_shared_and_head_keys_partition_state_dict() -> None:
    net = ReIDNet(7, arch="resnet18")
    shared, head = set(net.shared_keys()), set(net.head_keys())
    assert head == {"classifier.weight", "classifier.bias"}
    assert shared.isdisjoint(head)
    assert shared | head == set(net.state_dict())
    assert any(k.startswith("bottleneck.") for k in shared)
    assert set(shared_state(net)) == shared and set(head_state(net)) == head


def test_embedding_and_logits() -> None:
    net = ReIDNet(5, arch="resnet18").eval()
    x = torch.randn(2, 3, 64, 32)
    assert net.features(x).shape == (2, 512)
    assert net(x).shape == (2, 5)


def test_server_model_has_no_head() -> None:
    net = ReIDNet(0, arch="resnet18")
    assert net.head_keys() == []
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 3, 32, 16))


def test_last_stride_one_doubles_feature_map() -> None:
    x = torch.randn(1, 3, 64, 32)
    maps = []
    for stride in (2, 1):
        net = ReIDNet(0, arch="resnet18", last_stride=stride).eval()
        maps.append(net.backbone[:8](x).shape[-2:])
    assert maps[1][0] == 2 * maps[0][0] and maps[1][1] == 2 * maps[0][1]


def test_load_shared_exact_keys_and_bn_skip() -> None:
    a, b = ReIDNet(3, arch="resnet18"), ReIDNet(4, arch="resnet18")
    state = shared_state(a)
    bn_key = next(k for k in state if k.endswith("running_mean"))
    state[bn_key] = state[bn_key] + 5
    before = b.state_dict()[bn_key].clone()
    load_shared(b, state, skip_bn_buffers=True)
    assert torch.equal(b.state_dict()[bn_key], before)
    load_shared(b, state)
    assert torch.equal(b.state_dict()[bn_key], state[bn_key])
    assert is_bn_buffer(bn_key) and not is_bn_buffer("classifier.weight")
    # BatchNorm statistics may be absent (bn_policy=local, counters): the model keeps its own
    state.pop(bn_key)
    own = b.state_dict()[bn_key].clone()
    load_shared(b, state)
    assert torch.equal(b.state_dict()[bn_key], own)
    weight_key = next(k for k in state if k.endswith(".weight"))
    state.pop(weight_key)
    with pytest.raises(ConfigError, match="missing"):
        load_shared(b, state)
    with pytest.raises(ConfigError, match="extra"):
        load_shared(b, {**shared_state(a), "classifier.weight": torch.zeros(3, 512)})


def test_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="unknown model.arch"):
        ReIDNet(2, arch="vgg")


def test_resnet_mini_is_small_with_resnet18_names() -> None:
    """resnet_mini keeps ResNet-18's module layout (the keys other code addresses), at 1/30 of
    its parameters; last stride 1 doubles its final map too; no ImageNet weights."""
    torch.manual_seed(0)
    mini, full = ReIDNet(5, arch="resnet_mini"), ReIDNet(5, arch="resnet18")
    n_mini = sum(p.numel() for p in mini.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert n_mini < 500_000 and n_full / n_mini > 25
    short = {k.rsplit(".", 1)[0] for k in mini.state_dict()}
    assert {k.rsplit(".", 1)[0] for k in full.state_dict() if k.startswith("backbone.4.0")} <= short
    assert "backbone.7.0.conv1" in short and "backbone.7.0.downsample.0" in short
    assert mini.backbone[7][0].conv2.out_channels == 128
    x = torch.randn(2, 3, 64, 32)
    assert mini.eval().features(x).shape == (2, 512)
    one = ReIDNet(5, arch="resnet_mini", last_stride=1).eval()
    assert one.backbone[:8](x).shape[-2:] == (4, 2)
    assert mini.backbone[:8](x).shape[-2:] == (2, 1)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        from fedreid.models.reid import resnet_mini

        resnet_mini(weights="IMAGENET1K_V1")  # type: ignore[arg-type]


def test_resnet_mini_composes_as_a_model_group() -> None:
    from fedreid.config import compose

    cfg = compose(["model=resnet_mini"])
    assert cfg.model.arch == "resnet_mini" and cfg.model.pretrained is False
