"""Local training: data loaders, the reference SGD recipe and one client's epochs."""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedreid.batching import drops_last
from fedreid.config import DataConfig, TrainConfig
from fedreid.data.transforms import ImageDataset, build_transforms
from fedreid.data.types import Item
from fedreid.errors import DatasetError

log = logging.getLogger("fedreid")

AmpSetting = str | bool
"""``cfg.train.amp``: ``"auto"``, ``"on"`` or ``"off"`` (legacy bools: True = on, False = off)."""

AMP_MODES = ("auto", "on", "off")

_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of native BF16 arithmetic on x86 (AVX512-BF16 dot products, AMX)."""

_LOGGED: set[tuple[str, str, str]] = set()
"""(mode, device, dtype) choices already logged by :func:`amp_dtype` in this process."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is taken literally."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_loader(items: Sequence[Item], data: DataConfig, seed: int) -> DataLoader:
    """Shuffled, augmented loader; the last batch is dropped as :func:`drops_last` says."""
    if not items:
        raise DatasetError("empty training set")
    ds = ImageDataset(items, build_transforms(data.height, data.width, train=True))
    gen = torch.Generator().manual_seed(seed)
    drop_last = drops_last(len(ds), data.batch_size, data.drop_last)
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
    bottleneck and classifier at ``lr_head``, as in the FedReID reference.

    torch's fused SGD kernel runs where it exists (CPU and CUDA float parameters): one pass
    over each parameter instead of five elementwise ones, 3.5x faster per step on ResNet-18
    (`bench/bench_sgd.py`), the same update to float rounding.
    """
    groups = params(model) if params else split_params(model)
    param_groups = [
        {"params": [p for p in groups["backbone"] if p.requires_grad], "lr": train.lr_backbone},
        {"params": [p for p in groups["head"] if p.requires_grad], "lr": train.lr_head},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    every = [p for g in param_groups for p in g["params"]]
    return torch.optim.SGD(
        param_groups,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
        fused=bool(every) and all(fused_sgd_supports(p) for p in every),
    )


def fused_sgd_supports(p: torch.Tensor) -> bool:
    """Does torch's fused SGD kernel take this parameter (a float tensor on CPU or CUDA)?"""
    return p.device.type in ("cpu", "cuda") and p.dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
    )


def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Backbone parameters vs the rest (bottleneck + classifier)."""
    backbone, head = [], []
    for name, p in model.named_parameters():
        (backbone if name.startswith("backbone.") else head).append(p)
    return {"backbone": backbone, "head": head}


def bf16_cpu_flags(cpuinfo: str) -> list[str]:
    """Native-BF16 feature flags named in a ``/proc/cpuinfo`` text (x86 ``flags`` lines:
    ``avx512_bf16``, ``amx_bf16``; aarch64 ``Features`` lines: ``bf16``), sorted, unique.

    Examples:
        >>> bf16_cpu_flags("flags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile")
        ['amx_bf16', 'avx512_bf16']
        >>> bf16_cpu_flags("Features : fp asimd bf16 i8mm")
        ['bf16']
        >>> bf16_cpu_flags("flags : fpu avx2 avx512f avx512bw")
        []
    """
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, words = key.strip().lower(), value.split()
        if key == "flags":
            found.update(f for f in _X86_BF16_FLAGS if f in words)
        elif key == "features" and "bf16" in words:
            found.add("bf16")
    return sorted(found)


@functools.cache
def _cpu_bf16_evidence() -> str | None:
    """Why this CPU has native BF16 (a short phrase), or None if it has not / cannot tell."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    # on x86, ATEN_CPU_CAPABILITY=default leaves torch's own kernels scalar: no fast bf16 then
    if x86 and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        return None
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = bf16_cpu_flags(f.read())
    except OSError:
        if platform.system() == "Darwin":  # Apple M2 and later report FEAT_BF16
            try:
                out = subprocess.run(
                    ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError):
                return None
            return "sysctl hw.optional.arm.FEAT_BF16" if out.stdout.strip() == "1" else None
    if not flags:
        return None
    return "/proc/cpuinfo flags " + "+".join(flags)


def cpu_supports_bf16() -> bool:
    """True if this CPU does BF16 arithmetic natively (cached per process).

    Detection: the ``/proc/cpuinfo`` flags ``avx512_bf16`` or ``amx_bf16`` (x86; Intel Cooper
    Lake / Sapphire Rapids and later, AMD Zen 4 and later) or ``bf16`` (aarch64), or
    ``hw.optional.arm.FEAT_BF16`` on macOS. On x86 torch's own CPU capability
    (:func:`torch.backends.cpu.get_cpu_capability`) must also be vectorised (not ``DEFAULT``,
    to which ``ATEN_CPU_CAPABILITY`` can cap it). Anything unreadable counts as "no". Without native
    support bf16 still runs (emulated), usually slower than float32, so ``amp=auto`` skips it.
    """
    return _cpu_bf16_evidence() is not None


def _cuda_supports_bf16(device: torch.device) -> bool:
    """Native bf16 on this CUDA device (compute capability 8.0+, not emulated)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _amp_mode(setting: AmpSetting) -> str:
    """``setting`` as one of :data:`AMP_MODES`; raises ValueError for anything else."""
    if isinstance(setting, bool):
        return "on" if setting else "off"
    if isinstance(setting, str):
        mode = setting.strip().lower()
        # a legacy bool that went through a str-typed OmegaConf field arrives as "True"/"False"
        mode = {"true": "on", "false": "off"}.get(mode, mode)
        if mode in AMP_MODES:
            return mode
    raise ValueError(f"train.amp must be one of {AMP_MODES} (or a bool), got {setting!r}")


def amp_dtype(setting: AmpSetting, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``cfg.train.amp`` on ``device``, or None for plain float32.

    * ``"off"`` (or False): None.
    * ``"on"`` (or True): bfloat16 on CPU (emulated if the CPU lacks native BF16); on CUDA
      bfloat16 where the GPU supports it natively, else float16 (with loss scaling in
      :func:`train_epochs`).
    * ``"auto"``: bfloat16 on a CPU with native BF16 (:func:`cpu_supports_bf16`) and on a
      CUDA GPU with native bf16; None otherwise (no fp16 on its own).

    Other device types get None. The first time each choice is made in a process it is logged
    (logger ``fedreid``, INFO) with the reason.

    Raises:
        ValueError: ``setting`` is neither one of ``"auto"``, ``"on"``, ``"off"`` nor a bool.

    Examples:
        >>> amp_dtype("off", torch.device("cpu")) is None
        True
        >>> amp_dtype(True, torch.device("cpu"))
        torch.bfloat16
    """
    mode = _amp_mode(setting)
    device = torch.device(device)
    dtype: torch.dtype | None = None
    if mode == "off":
        why = "amp=off"
    elif device.type == "cpu":
        evidence = _cpu_bf16_evidence()
        if mode == "on":
            dtype = torch.bfloat16
            why = f"amp=on, native BF16 ({evidence})" if evidence else "amp=on, BF16 emulated"
        elif cpu_supports_bf16():
            dtype = torch.bfloat16
            why = f"amp=auto, native BF16 ({evidence or 'detected'})"
        else:
            why = "amp=auto, no native BF16 on this CPU"
    elif device.type == "cuda":
        if _cuda_supports_bf16(device):
            dtype = torch.bfloat16
            why = f"amp={mode}, GPU supports bf16"
        elif mode == "on":
            dtype = torch.float16
            why = "amp=on, GPU lacks bf16: float16 with loss scaling"
        else:
            why = "amp=auto, GPU lacks bf16"
    else:
        why = f"amp={mode}, no autocast on device type {device.type!r}"
    key = (mode, str(device), str(dtype))
    if key not in _LOGGED:
        _LOGGED.add(key)
        name = "float32, autocast off" if dtype is None else f"{dtype}".replace("torch.", "")
        log.info("mixed precision on %s: %s (%s)", device, name, why)
    return dtype


def autocast(device: torch.device, enabled: AmpSetting) -> AbstractContextManager:
    """Autocast to :func:`amp_dtype` ``(enabled, device)`` (bf16 on CPU/GPU, fp16 on GPUs
    without bf16); a no-op context when that is None.

    Only the forward pass belongs inside; compute losses on ``.float()`` outputs (the
    autocast region may still contain them: ``cross_entropy`` and ``mse_loss`` autocast to
    float32). Parameters, gradients and optimizer state stay float32.
    """
    device = torch.device(device)
    dtype = amp_dtype(enabled, device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    dtype = amp_dtype(train.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
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
            # the loss (and the accuracy) in float32, whatever the autocast dtype
            logits = logits.float()
            loss = loss_fn(logits, pids)
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
