"""Datasets: the synthetic benchmark generator, readers, transforms and client scenarios."""

from fedreid.data.market import load_market
from fedreid.data.readers import available_datasets, load_dataset, load_public_images
from fedreid.data.transforms import ImageDataset, build_transforms
from fedreid.data.types import Item, ReIDDataset

__all__ = [
    "available_datasets",
    "load_dataset",
    "load_public_images",
    "ImageDataset",
    "Item",
    "ReIDDataset",
    "build_transforms",
    "load_market",
]
