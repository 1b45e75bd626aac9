"""Standard ReID image transforms (torchvision) and a torch Dataset of ``(path, pid, camid)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from fedreid.data.types import Item
from fedreid.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(height: int, width: int, *, train: bool) -> T.Compose:
    """Resize, (train only: pad 10 + random crop + horizontal flip), tensor, ImageNet normalise."""
    steps: list = [T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)]
    if train:
        steps += [T.Pad(10), T.RandomCrop((height, width)), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; a missing or corrupt file raises :class:`DatasetError` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise DatasetError(f"image not found: {path}") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"corrupt image: {path} ({err.__class__.__name__})") from err


class ImageDataset(Dataset):
    """Torch dataset yielding ``(image_tensor, pid, camid)`` for a list of items."""

    def __init__(self, items: Sequence[Item], transform: T.Compose) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, pid, cam = self.items[index]
        return self.transform(read_image(path)), pid, cam
