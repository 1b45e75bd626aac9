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


class ConvNet(nn.Module):
    """Blocks of two bias-free 3x3 convs (+ReLU) and a 2x2 pool, then FC-hidden-hidden-classes.

    Args:
        in_channels: input image channels (3 for CIFAR, 1 for MNIST-like data).
        num_classes: output classes.
        image_size: input height and width (an int for square images); both must be
            divisible by ``2 ** len(widths)`` (one 2x2 pool per block).
        widths: the channels of each block.
        hidden: width of the two hidden linear layers.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        widths: tuple[int, ...],
        hidden: int = 256,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        shrink = 2 ** len(widths)
        if h % shrink or w % shrink or h <= 0 or w <= 0:
            raise ConfigError(
                f"{name} image_size must be positive multiples of {shrink}, got {(h, w)}"
            )
        if num_classes < 1:
            raise ConfigError(f"{name} num_classes must be >= 1, got {num_classes}")
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True):
            layers += _block(c_in, c_out)
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(
            nn.Linear(widths[-1] * (h // shrink) * (w // shrink), hidden, bias=False),
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


class Conv4(ConvNet):
    """Conv-64-64-pool-128-128-pool, then FC-256-256-classes; bias-free (sizes: multiples of 4).

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
        super().__init__(in_channels, num_classes, image_size, (64, 128), hidden)


class Conv6(ConvNet):
    """Conv-64-64-pool-128-128-pool-256-256-pool, then FC-256-256-classes (multiples of 8).

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
        super().__init__(in_channels, num_classes, image_size, (64, 128, 256), hidden)
