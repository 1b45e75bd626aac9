"""The ReID network: torchvision ResNet backbone, pooled, bottleneck to a 512-d embedding, and a
client-owned identity classifier.

The parameters split cleanly into the *shared* part (``backbone.*`` and ``bottleneck.*``), which
federated strategies exchange, and the *head* (``classifier.*``), whose size is the client's
number of identities and which never leaves the client.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision import models as tvm

from fedreid.errors import ConfigError

log = logging.getLogger(__name__)


class MiniResNet(tvm.ResNet):
    """torchvision's ResNet with one BasicBlock per stage at a quarter of ResNet-18's stage
    widths (16-128 channels after ResNet-18's 64-channel stem): 0.3 M parameters against
    11.2 M, the same module names and code path (last stride, masking, SynFlow, export). For
    tests and smoke runs; there are no ImageNet weights for it."""

    def __init__(self) -> None:
        super().__init__(tvm.resnet.BasicBlock, [1, 1, 1, 1])
        self.fc = nn.Linear(128, 1000)  # unused by ReIDNet; sized to the narrower layer4

    def _make_layer(
        self,
        block: type[nn.Module],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        return super()._make_layer(block, planes // 4, blocks, stride, dilate)


def resnet_mini(weights: None = None) -> MiniResNet:
    """:class:`MiniResNet` (``weights`` must be None: there are none to load)."""
    if weights is not None:
        raise ValueError("no ImageNet weights for resnet_mini")
    return MiniResNet()


ARCHS: dict[str, tuple] = {
    "resnet_mini": (resnet_mini, "no ImageNet weights", 128),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, 2048),
}
HEAD_PREFIX = "classifier."
BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _load_resnet(arch: str, pretrained: bool) -> nn.Module:
    """Build a torchvision ResNet; ImageNet weights if asked and obtainable, else random init."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown model.arch {arch!r}; choose one of {sorted(ARCHS)}")
    ctor, weights, _ = ARCHS[arch]
    if pretrained:
        try:
            return ctor(weights=weights)
        except Exception as err:  # no network / no cache: fall back, loudly
            log.warning(
                "ImageNet weights for %s unavailable (%s); using random init",
                arch,
                err.__class__.__name__,
            )
    return ctor(weights=None)


class ReIDNet(nn.Module):
    """ResNet backbone -> global average pool -> Linear/BN/Dropout bottleneck -> classifier.

    Args:
        num_classes: identities in this client's training set; 0 builds no classifier (the
            server's model, which holds only the shared part).
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        pretrained: try ImageNet weights (falls back to random init with a log line).
        last_stride: 1 doubles the final feature map (the common ReID trick), 2 is torchvision's.
        embed_dim: bottleneck width (512 in the FedReID reference).
        dropout: dropout after the bottleneck BatchNorm (0.5 in the reference).

    Examples:
        >>> net = ReIDNet(num_classes=10, arch="resnet18")
        >>> sorted(net.head_keys())
        ['classifier.bias', 'classifier.weight']
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet50",
        pretrained: bool = False,
        last_stride: int = 2,
        embed_dim: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ConfigError(f"model.last_stride must be 1 or 2, got {last_stride}")
        resnet = _load_resnet(arch, pretrained)
        if last_stride == 1:
            block = resnet.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        feat_dim = ARCHS[arch][2]
        self.backbone = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.bottleneck = nn.Sequential(
            nn.Linear(feat_dim, embed_dim), nn.BatchNorm1d(embed_dim), nn.Dropout(dropout)
        )
        nn.init.kaiming_normal_(self.bottleneck[0].weight, a=0, mode="fan_out")
        nn.init.zeros_(self.bottleneck[0].bias)
        self.embed_dim = embed_dim
        self.classifier = make_head(embed_dim, num_classes) if num_classes > 0 else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding (bottleneck output); in eval mode this is the retrieval feature."""
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity logits; needs a classifier."""
        if self.classifier is None:
            raise RuntimeError("this ReIDNet has no classifier head (num_classes=0)")
        return self.classifier(self.features(x))

    def shared_keys(self) -> list[str]:
        """state_dict keys exchanged with the server: backbone and bottleneck, in order."""
        return [k for k in self.state_dict() if not k.startswith(HEAD_PREFIX)]

    def head_keys(self) -> list[str]:
        """state_dict keys of the client-owned identity classifier."""
        return [k for k in self.state_dict() if k.startswith(HEAD_PREFIX)]

    def set_head(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` identities."""
        self.classifier = make_head(self.embed_dim, num_classes)


def make_head(embed_dim: int, num_classes: int) -> nn.Linear:
    """A fresh identity classifier (normal std 0.001, zero bias, as in the reference)."""
    head = nn.Linear(embed_dim, num_classes)
    nn.init.normal_(head.weight, std=0.001)
    nn.init.zeros_(head.bias)
    return head


def is_bn_buffer(key: str) -> bool:
    """True for BatchNorm running statistics (``running_mean``, ``running_var``, counters)."""
    return key.endswith(BN_BUFFER_SUFFIXES)


def shared_state(model: ReIDNet) -> dict[str, torch.Tensor]:
    """Detached copies of the shared tensors, the only thing a client sends."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in model.shared_keys()}


def head_state(model: ReIDNet) -> dict[str, torch.Tensor]:
    """Detached copies of the classifier tensors, kept on the client."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in model.head_keys()}


def load_shared(
    model: ReIDNet, shared: dict[str, torch.Tensor], *, skip_bn_buffers: bool = False
) -> None:
    """Load the shared part into ``model`` (else a clear error).

    Every shared weight must be there; BatchNorm running statistics may be absent (the server
    does not send them under ``bn_policy=local``, nor the ``num_batches_tracked`` counters):
    the model keeps its own. With ``skip_bn_buffers`` the model's own statistics are kept
    even when they are sent. Keys outside the shared part are an error.
    """
    allowed = set(model.shared_keys())
    required = {k for k in allowed if not is_bn_buffer(k)}
    got = set(shared)
    if not required <= got <= allowed:
        missing, extra = sorted(required - got)[:3], sorted(got - allowed)[:3]
        raise ConfigError(f"shared state mismatch: missing {missing} extra {extra}")
    state = {k: v for k, v in shared.items() if not (skip_bn_buffers and is_bn_buffer(k))}
    model.load_state_dict(state, strict=False)
