"""Feature extraction for retrieval, and one-call evaluation of a model on query/gallery items.

Features follow the FedReID reference: the 512-d embedding of the image plus that of its
horizontal mirror, summed and L2-normalised (flip averaging makes the embedding insensitive to
which way a person walks), so ranking can use the cosine distance ``1 - q . g``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedreid.data.transforms import ImageDataset, build_transforms
from fedreid.data.types import Item
from fedreid.evaluation.ranking import evaluate_ranking
from fedreid.training import AmpSetting, autocast


def _embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The retrieval embedding: ``model.features(x)`` when the model has it, else ``model(x)``."""
    features = getattr(model, "features", None)
    out = features(images) if callable(features) else model(images)
    return out.flatten(1)


def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    flip: bool = True,
    amp: AmpSetting = "off",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every image of ``loader``: flip-averaged, L2-normalised float32 features.

    The model runs in eval mode without autograd (:func:`torch.no_grad`, so the returned
    tensors are ordinary ones, usable later in autograd code); afterwards every submodule gets
    back its own train/eval flag and the model returns to the device it was on, so this can be
    called in the middle of training.

    Args:
        model: a module with a ``features(x)`` method (such as
            :class:`~fedreid.models.reid.ReIDNet`, whose ``features`` is the 512-d bottleneck
            embedding); any other module is called directly.
        loader: batches of ``(images, pids, camids)``, as a
            :class:`~torch.utils.data.DataLoader` over
            :class:`~fedreid.data.transforms.ImageDataset` yields.
        device: where the model runs.
        flip: add the embedding of the horizontally flipped image before normalising.
        amp: mixed precision, as ``cfg.train.amp`` (``"auto"``, ``"on"``, ``"off"``; see
            :func:`~fedreid.training.amp_dtype`): the forward passes run under that autocast
            (bf16 on CPU), the flip sum and the normalisation in float32. Default off.

    Returns:
        ``(feats [N, D] float32, pids [N] int64, camids [N] int64)``, on the CPU.

    Examples:
        >>> from fedreid.models.reid import ReIDNet
        >>> net = ReIDNet(num_classes=3, arch="resnet18")
        >>> batch = (torch.randn(2, 3, 64, 32), torch.tensor([1, 2]), torch.tensor([0, 1]))
        >>> feats, pids, cams = extract_features(net, [batch])
        >>> feats.shape, feats.norm(dim=1).round(decimals=4).tolist()
        (torch.Size([2, 512]), [1.0, 1.0])
    """
    device = torch.device(device)
    modes = {module: module.training for module in model.modules()}
    first = next(model.parameters(), None)
    home = first.device if first is not None else device
    feats, pids, camids = [], [], []
    try:
        model.to(device).eval()
        with torch.no_grad():
            for batch in loader:
                images = batch[0].to(device, non_blocking=True)
                with autocast(device, amp):
                    emb = _embed(model, images).float()
                    if flip:
                        emb = emb + _embed(model, torch.flip(images, dims=[3])).float()
                feats.append(nn.functional.normalize(emb, dim=1).cpu())
                pids.append(torch.as_tensor(batch[1]).to(torch.int64).reshape(-1))
                camids.append(torch.as_tensor(batch[2]).to(torch.int64).reshape(-1))
    finally:
        model.to(home)
        for module, training in modes.items():
            module.training = training
    if not feats:
        raise ValueError("the loader yielded no batches: nothing to extract")
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)


def evaluate_model(
    model: nn.Module,
    query_items: Sequence[Item],
    gallery_items: Sequence[Item],
    height: int,
    width: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: AmpSetting = "off",
) -> dict[str, float | int]:
    """Rank-1/5/10, mAP and mINP of ``model`` on a query/gallery split (Market-1501 protocol).

    Reads the images with the test transforms (resize, ImageNet normalisation), extracts
    flip-averaged features with :func:`extract_features` and ranks with
    :func:`~fedreid.evaluation.ranking.evaluate_ranking` (on ``device``).

    Args:
        model: the network to evaluate (see :func:`extract_features`).
        query_items, gallery_items: ``(path, pid, camid)`` lists, as in
            :class:`~fedreid.data.types.ReIDDataset`.
        height, width: input size the model was trained at.
        batch_size: images per forward pass.
        device: where the model runs and the ranking is computed.
        num_workers: data-loading worker processes.
        amp: mixed precision of the feature extraction (pass ``cfg.train.amp``; default off).

    Returns:
        The dict of :func:`~fedreid.evaluation.ranking.evaluate_ranking`.

    Examples:
        >>> metrics = evaluate_model(net, data.query, data.gallery, 128, 64)  # doctest: +SKIP
        >>> metrics["rank1"], metrics["mAP"]  # doctest: +SKIP
        (0.81, 0.58)
    """
    transform = build_transforms(height, width, train=False)

    def features(items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loader = DataLoader(
            ImageDataset(items, transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=torch.device(device).type == "cuda",
        )
        return extract_features(model, loader, device=device, amp=amp)

    q_feats, q_pids, q_cams = features(query_items)
    g_feats, g_pids, g_cams = features(gallery_items)
    return evaluate_ranking(q_feats.to(device), g_feats.to(device), q_pids, g_pids, q_cams, g_cams)
