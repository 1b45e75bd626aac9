"""The one place that turns the config into a network: ReID (``cfg.model``) and classification.

Server and clients build the same seeded networks from here, so a checksum of the seeded
weights (HideNseek) or a shared initial model (FedPav) agrees at both ends; ``model.init``
(a backbone file, :mod:`fedreid.models.backbone_init`) is loaded here too.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from fedreid.config import Config, ModelConfig
from fedreid.data.classification import dataset_info
from fedreid.errors import ConfigError
from fedreid.models.backbone_init import load_init
from fedreid.models.convnet import Conv4, Conv6
from fedreid.models.reid import ReIDNet

CLASSIFICATION_MODELS = ("conv4", "conv6", "resnet18")


def reid_model(
    m: ModelConfig, num_classes: int = 0, *, pretrained: bool = False, init: bool = False
) -> ReIDNet:
    """A ReID network from the model config; ``num_classes=0`` builds no classifier head.

    ``pretrained`` asks for ImageNet weights, ``init`` for the ``model.init`` file's weights
    (when set): callers ask only for a model that starts from them, not for one whose shared
    part is overwritten next (so a run folder stays usable after the file is gone).
    """
    model = ReIDNet(
        num_classes,
        arch=m.arch,
        pretrained=pretrained,
        last_stride=m.last_stride,
        embed_dim=m.embed_dim,
        dropout=m.dropout,
    )
    if init and m.init:
        load_init(model, m.init, m.arch, m.embed_dim)
    return model


def uninitialised_reid_model(
    m: ModelConfig, num_classes: int, cover: Collection[str]
) -> ReIDNet | None:
    """A ReID network with uninitialised storage, for a caller that loads every tensor next.

    ``cover`` is the set of state_dict keys the caller will load. Skipping the random
    initialisation saves about 0.1 s per ResNet-18 (a tenth of a second per client message,
    every round); None when ``cover`` misses a key, so nothing can stay uninitialised.
    """
    with torch.device("meta"):
        model = reid_model(m, num_classes)
    if not set(model.state_dict()) <= set(cover):
        return None
    return model.to_empty(device="cpu")


def seeded_reid_model(cfg: Config, num_classes: int = 0) -> ReIDNet:
    """The run's initial ReID model (seeded by ``cfg.seed``; ImageNet weights or the
    ``model.init`` file's backbone if configured).

    A head for ``num_classes`` identities is added after the shared part, so the shared
    weights do not depend on it.
    """
    torch.manual_seed(cfg.seed)
    model = reid_model(cfg.model, 0, pretrained=cfg.model.pretrained, init=True)
    if num_classes > 0:
        model.set_head(num_classes)
    return model


def classification_model(cfg: Config) -> nn.Module:
    """The seeded classification network for ``cfg.classification`` (model and dataset)."""
    c = cfg.classification
    info = dataset_info(c.dataset)
    torch.manual_seed(cfg.seed)
    if c.model == "conv4":
        return Conv4(info.channels, info.num_classes, info.image_size)
    if c.model == "conv6":
        return Conv6(info.channels, info.num_classes, info.image_size)
    if c.model == "resnet18":
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=info.num_classes)
        net.conv1 = nn.Conv2d(info.channels, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        return net
    raise ConfigError(
        f"classification.model={c.model!r}: choose one of {', '.join(CLASSIFICATION_MODELS)}"
    )
