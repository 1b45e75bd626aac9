"""Conv4 and Conv6, the small image classifiers of the supermask papers (HideNseek's task).

Conv4: four 3x3 convolutions (64, 64, 128, 128 channels) with ReLU and a 2x2 max-pool after
every second one, then three linear layers (256, 256, classes). Conv6 adds a third block
(256, 256 channels, pool) for CIFAR-size (32x32) input, as in Ramanujan et al.'s "What's hidden
in a randomly weighted neural network?". As in the supermask papers, no layer has a bias and
there is no BatchNorm, so every parameter is a maskable weight and the whole network is shared
(there is no local head).
"""

from __future__ import annotations

import torch
from torch import nn

from fedreid.errors import ConfigError


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    """Two 3x3 convs with ReLU, then a 2x2 max-pool."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class Conv4(nn.Module):
    """Conv-64-64-pool-128-128-pool, then FC-256-256-classes; bias-free.

    Args:
        in_channels: input image channels (3 for CIFAR, 1 for MNIST-like data).
        num_classes: output classes.
        image_size: input height and width (an int for square images); both must be
            divisible by 4 (two 2x2 pools).
        hidden: width of the two hidden linear layers.

    Examples:
        >>> net = Conv4(3, 10, 32)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        hidden: int = 256,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h % 4 or w % 4 or h <= 0 or w <= 0:
            raise ConfigError(f"Conv4 image_size must be positive multiples of 4, got {(h, w)}")
        if num_classes < 1:
            raise ConfigError(f"Conv4 num_classes must be >= 1, got {num_classes}")
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(128 * (h // 4) * (w // 4), hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=False),
        )
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(self.conv(x))


class Conv6(nn.Module):
    """Conv-64-64-pool-128-128-pool-256-256-pool, then FC-256-256-classes; bias-free.

    Args:
        in_channels: input image channels.
        num_classes: output classes.
        image_size: input height and width; both must be divisible by 8 (three pools).
        hidden: width of the two hidden linear layers.

    Examples:
        >>> net = Conv6(3, 10, 32)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        hidden: int = 256,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h % 8 or w % 8 or h <= 0 or w <= 0:
            raise ConfigError(f"Conv6 image_size must be positive multiples of 8, got {(h, w)}")
        if num_classes < 1:
            raise ConfigError(f"Conv6 num_classes must be >= 1, got {num_classes}")
        self.conv = nn.Sequential(
            *_block(in_channels, 64), *_block(64, 128), *_block(128, 256), nn.Flatten()
        )
        self.fc = nn.Sequential(
            nn.Linear(256 * (h // 8) * (w // 8), hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=False),
        )
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(self.conv(x))
