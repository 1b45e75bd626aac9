"""Local training: data loaders, the reference SGD recipe and one client's epochs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedreid.config import DataConfig, TrainConfig
from fedreid.data.transforms import ImageDataset, build_transforms
from fedreid.data.types import Item
from fedreid.errors import DatasetError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is taken literally."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_loader(items: Sequence[Item], data: DataConfig, seed: int) -> DataLoader:
    """Shuffled, augmented loader; drops a last batch of one (BatchNorm1d cannot train on it)."""
    if not items:
        raise DatasetError("empty training set")
    ds = ImageDataset(items, build_transforms(data.height, data.width, train=True))
    gen = torch.Generator().manual_seed(seed)
    drop_last = len(ds) % data.batch_size == 1
    return DataLoader(
        ds,
        batch_size=data.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
    )


def plain_loader(
    items: Sequence[Item],
    data: DataConfig,
    batch_size: int | None = None,
) -> DataLoader:
    """Unshuffled loader with evaluation transforms (features, CDW batches, distillation)."""
    ds = ImageDataset(items, build_transforms(data.height, data.width, train=False))
    return DataLoader(
        ds,
        batch_size=batch_size or data.eval_batch_size,
        shuffle=False,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
    )


def make_optimizer(
    model: nn.Module,
    train: TrainConfig,
    params: Callable[[nn.Module], dict[str, list[nn.Parameter]]] | None = None,
) -> torch.optim.SGD:
    """SGD (momentum, Nesterov, weight decay) with the backbone at ``lr_backbone`` and the
    bottleneck and classifier at ``lr_head``, as in the FedReID reference."""
    groups = params(model) if params else split_params(model)
    param_groups = [
        {"params": [p for p in groups["backbone"] if p.requires_grad], "lr": train.lr_backbone},
        {"params": [p for p in groups["head"] if p.requires_grad], "lr": train.lr_head},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    return torch.optim.SGD(
        param_groups,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
    )


def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Backbone parameters vs the rest (bottleneck + classifier)."""
    backbone, head = [], []
    for name, p in model.named_parameters():
        (backbone if name.startswith("backbone.") else head).append(p)
    return {"backbone": backbone, "head": head}


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPUs that support it (fp16 otherwise); a no-op on CPU or when off."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    train: TrainConfig,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Cross-entropy training for ``train.local_epochs`` epochs; returns loss, accuracy,
    images seen and wall time."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    # fp16 (GPUs without bf16) needs loss scaling; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(
        "cuda", enabled=train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, steps = 0, 0
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    start = time.perf_counter()
    batches_per_epoch = (
        len(loader) if train.max_batches <= 0 else min(len(loader), train.max_batches)
    )
    for _ in range(train.local_epochs):
        for i, (images, pids, _cams) in enumerate(loader):
            if i >= batches_per_epoch:
                break
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            pids = pids.to(device, non_blocking=True)
            with autocast(device, train.amp):
                logits = model(images)
                loss = loss_fn(logits.float(), pids)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # accumulate on the device: no host sync per step
            total_loss += loss.detach() * len(pids)
            correct += (logits.argmax(1) == pids).sum()
            seen += len(pids)
            steps += 1
            if on_batch:
                on_batch(steps, batches_per_epoch * train.local_epochs)
    if seen == 0:
        raise DatasetError("no training batch was produced (dataset smaller than one batch?)")
    return {
        "train_loss": float(total_loss) / seen,
        "train_acc": int(correct) / seen,
        "train_images": float(seen),
        "train_time_s": time.perf_counter() - start,
    }
