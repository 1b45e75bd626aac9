"""Server-side knowledge distillation (KD) of FedReID: client models teach the aggregate.

Every ``strategy.kd_every`` rounds, right after aggregation, the server fine-tunes the
aggregated model (the *student*) so that its embedding of each unlabeled public image (the
synthetic benchmark's ``public/`` folder, ``data.public``) matches the mean embedding of this
round's client models (the *teachers*)::

    target(x) = mean_k f_k(x)      (kd_normalize: mean_k f_k(x) / ||f_k(x)||)
    loss      = MSE(f_student(x), target(x))

optimised with SGD (``strategy.kd_lr``, momentum 0.9, Nesterov, ``train.weight_decay`` as in
the reference) for ``strategy.kd_epochs`` passes. The teachers are the shared parts the clients
uploaded this round (``reply.arrays``), so KD adds no client traffic.

Decisions (where the reference code is silent or accidental):

* **Teachers run in eval mode under ``no_grad``.** The reference calls its client models in
  train mode, so dropout (p=0.5) randomly zeroes half the bottleneck and BatchNorm normalises
  with the public batch's statistics: the targets are noisy and not the embeddings the clients
  retrieve with. That is an accident, not a method; a teacher's knowledge is its retrieval
  embedding, i.e. its eval-mode output.
* **The student is trained in eval mode too: dropout off, BatchNorm with its (aggregated)
  running statistics, which KD leaves unchanged.** The reference trains it in train mode, which
  (a) matches a dropout-noised output to a deterministic target, penalising the dropout
  variance rather than the disagreement, and (b) overwrites the averaged running statistics with
  the public set's (about 25 momentum-0.1 updates replace ~93% of them), shifting every client's
  evaluation towards the public domain. In eval mode the student's optimised output *is* its
  retrieval embedding, and ``kd_loss_before``/``kd_loss_after`` measure the same function.
  Measured (docs/comparison.md): one distillation after 10 FedPav rounds on the default preset
  took the eval-mode MSE to the teachers' mean from 0.0219 to 0.0130 with mean rank-1 14.5% ->
  15.0%, whereas train-mode students (with or without dropout) *raised* it to 0.098 and
  dropped mean rank-1 to 13.2% (mAP 23.8% -> 21.3%).
* **``bn_policy=local``**: the server holds no meaningful running statistics (they stay on the
  clients, and teachers arrive without them), so teachers and student normalise with the
  public batch's statistics (BatchNorm layers in train mode, dropout still off); a last batch of
  one image is dropped since BatchNorm cannot normalise it. The BatchNorm buffers returned are
  always the student's input ones: KD changes weights, never the running statistics.
* **Targets are computed once per distillation**, batch by batch (every teacher forwards the
  batch, :func:`kd_target` averages), and cached (``N x embed_dim`` floats): with deterministic
  teachers and un-augmented images they are the same in every pass. The student then trains on
  reshuffled batches (seeded by run seed and round).
* ``strategy.kd_max_batches > 0`` distils on a random subset of ``kd_max_batches *
  kd_batch_size`` public images, redrawn every distillation (seeded), to cap the server's time.

Each distillation records ``kd_time_s``, ``kd_loss_before``, ``kd_loss_after``, ``kd_images``
and ``kd_teachers`` as server metrics of its round (results.json ``rounds[i]["server"]``); a
distillation whose loss or weights turn non-finite is discarded (``kd_diverged``) and the
aggregate is kept as it was.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fedreid.config import Config
from fedreid.models.builder import reid_model
from fedreid.models.reid import is_bn_buffer, load_shared
from fedreid.protocol import round_seed
from fedreid.training import AmpSetting, autocast, plain_loader, resolve_device

log = logging.getLogger("fedreid")


# -- pure helpers --------------------------------------------------------------------
def kd_target(teacher_embeddings: list[torch.Tensor], normalize: bool) -> torch.Tensor:
    """The distillation target: the mean of the teachers' ``[B, D]`` embeddings.

    Args:
        teacher_embeddings: one ``[B, D]`` tensor per teacher, rows = the same images.
        normalize: L2-normalise each teacher's rows before averaging (the reference's
            ``regularization`` flag), so teachers with large embeddings do not dominate.

    Examples:
        >>> kd_target([torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])], False)
        tensor([[1., 2.]])
        >>> kd_target([torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 4.0]])], True)
        tensor([[0.5000, 0.5000]])
    """
    if not teacher_embeddings:
        raise ValueError("no teacher embeddings to average")
    shape = teacher_embeddings[0].shape
    if len(shape) != 2 or any(e.shape != shape for e in teacher_embeddings):
        raise ValueError(
            f"teacher embeddings must all be [B, D], got "
            f"{[tuple(e.shape) for e in teacher_embeddings]}"
        )
    stacked = torch.stack([e.float() for e in teacher_embeddings])
    if normalize:
        stacked = F.normalize(stacked, dim=2)
    return stacked.mean(dim=0)


def distill_step(
    student: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    amp: AmpSetting = "off",
) -> float:
    """One SGD step on ``MSE(student.features(images), target)``; returns the loss before it.

    The student's mode (train/eval) is the caller's choice; see the module docstring.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, amp):
        out = student.features(images)
    loss = F.mse_loss(out.float(), target)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def set_kd_mode(model: nn.Module, batch_stats: bool) -> nn.Module:
    """Eval mode (dropout off); with ``batch_stats`` BatchNorm layers normalise per batch."""
    model.eval()
    if batch_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    return model


# -- the server's distillation round ----------------------------------------------------------
def _to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _to_device(
    images: torch.Tensor, device: torch.device, fmt: torch.memory_format
) -> torch.Tensor:
    """Images onto the device in the model's memory format (``train.channels_last``)."""
    return images.to(device, non_blocking=True, memory_format=fmt)


def _public_items(cfg: Config, server_round: int) -> list[tuple[str, int, int]]:
    """``(path, index, 0)`` per public image; the pid slot carries the index into the targets."""
    from fedreid.data.scenarios import public_images

    paths = public_images(cfg.data)
    s = cfg.strategy
    cap = s.kd_max_batches * s.kd_batch_size
    if 0 < cap < len(paths):
        rng = np.random.default_rng([cfg.seed, server_round, 7])
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=cap, replace=False))]
    return [(p, i, 0) for i, p in enumerate(paths)]


@torch.no_grad()
def _mse_over(
    student: nn.Module,
    loader: DataLoader,
    targets: torch.Tensor,
    device: torch.device,
    fmt: torch.memory_format,
    amp: AmpSetting,
) -> float:
    """Mean-squared error of the student against the cached targets over a whole loader."""
    total, count = 0.0, 0
    for images, idx, _ in loader:
        with autocast(device, amp):
            out = student.features(_to_device(images, device, fmt)).float()
        total += float(F.mse_loss(out, targets[idx].to(device), reduction="sum"))
        count += out.numel()
    return total / max(1, count)


Arrays = dict[str, np.ndarray]


def distill_round(
    cfg: Config,
    server_round: int,
    student_arrays: Arrays,
    teachers: list[Arrays],
    *,
    batch_stats: bool | None = None,
) -> tuple[Arrays, dict[str, float]]:
    """Distil this round's client models into the aggregate on the server's public images.

    Args:
        cfg: the run config (``strategy.kd_*``, the model, the public data).
        server_round: the current round (seeds the subset and the shuffle).
        student_arrays: the aggregated shared state (numpy), BatchNorm buffers included.
        teachers: this round's client models (shared parts; keys they lack, e.g. BatchNorm
            buffers under ``bn_policy=local``, are filled from the student).
        batch_stats: normalise with batch statistics; None = only under ``bn_policy=local``.

    Returns:
        ``(distilled arrays, server metrics)``: same keys, shapes and dtypes as
        ``student_arrays``; the metrics are ``kd_time_s``, ``kd_loss_before``,
        ``kd_loss_after``, ``kd_images``, ``kd_teachers`` (and ``kd_diverged``).
    """
    # Model building and data loaders draw from torch's global RNG: fork it, so that running
    # KD or not leaves the server's random stream (and a resumed run) the same.
    with torch.random.fork_rng(devices=[]):
        return _distill(cfg, server_round, student_arrays, teachers, batch_stats)


def _distill(
    cfg: Config,
    server_round: int,
    student_arrays: Arrays,
    teacher_arrays: list[Arrays],
    batch_stats: bool | None,
) -> tuple[Arrays, dict[str, float]]:
    """The body of :func:`distill_round` (under a forked RNG)."""
    start = time.perf_counter()
    s = cfg.strategy
    if not teacher_arrays:
        log.warning("round %d: no teachers; distillation skipped", server_round)
        return student_arrays, {}
    if batch_stats is None:
        batch_stats = s.bn_policy == "local"
    device = resolve_device(cfg.train.device)
    amp = cfg.train.amp
    items = _public_items(cfg, server_round)
    if batch_stats and len(items) % s.kd_batch_size == 1:
        items = items[:-1]  # BatchNorm cannot normalise a batch of one image
    if not items:
        log.warning("round %d: no public images left; distillation skipped", server_round)
        return student_arrays, {}

    m = cfg.model
    student = reid_model(m, 0)
    load_shared(student, _to_torch(student_arrays))
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    student = set_kd_mode(student.to(device, memory_format=fmt), batch_stats)
    teachers = []
    for arrays in teacher_arrays:
        teacher = copy.deepcopy(student)
        load_shared(teacher, _to_torch({**student_arrays, **arrays}))
        teachers.append(set_kd_mode(teacher, batch_stats))

    # One pass: every teacher embeds each batch -> cached targets; the student's loss before.
    # Without batch statistics the batch size cannot change an embedding: use the larger
    # evaluation batches there (faster on CPU), the training batch size otherwise.
    pass_size = s.kd_batch_size if batch_stats else max(s.kd_batch_size, cfg.data.eval_batch_size)
    loader = plain_loader(items, cfg.data, pass_size)
    targets = torch.zeros(len(items), m.embed_dim)
    before_sum, before_count = 0.0, 0
    with torch.no_grad():
        for images, idx, _ in loader:
            images = _to_device(images, device, fmt)
            with autocast(device, amp):
                embeddings = [t.features(images).float() for t in teachers]
                out = student.features(images).float()
            target = kd_target(embeddings, s.kd_normalize)
            targets[idx] = target.cpu()
            before_sum += float(F.mse_loss(out, target, reduction="sum"))
            before_count += out.numel()
    del teachers
    loss_before = before_sum / max(1, before_count)

    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=s.kd_lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=cfg.train.weight_decay,
    )
    generator = torch.Generator().manual_seed(round_seed(cfg.seed, server_round))
    shuffled = DataLoader(
        loader.dataset,
        batch_size=s.kd_batch_size,
        shuffle=True,
        generator=generator,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
        drop_last=batch_stats and len(items) % s.kd_batch_size == 1,
    )
    steps = 0
    for _ in range(s.kd_epochs):
        for images, idx, _ in shuffled:
            if batch_stats and len(idx) < 2:
                continue
            distill_step(
                student,
                _to_device(images, device, fmt),
                targets[idx].to(device),
                optimizer,
                amp=amp,
            )
            steps += 1
    loss_after = _mse_over(student, loader, targets, device, fmt, amp)

    state = student.state_dict()
    elapsed = time.perf_counter() - start
    metrics = {
        "kd_time_s": elapsed,
        "kd_loss_before": loss_before,
        "kd_loss_after": loss_after,
        "kd_images": float(len(items)),
        "kd_teachers": float(len(teacher_arrays)),
    }
    if not (np.isfinite(loss_after) and all(torch.isfinite(v).all() for v in state.values())):
        log.warning(
            "round %d: distillation diverged (MSE %.5g -> %.5g; strategy.kd_lr=%g too "
            "high?); the aggregated model is kept undistilled",
            server_round,
            loss_before,
            loss_after,
            s.kd_lr,
        )
        return student_arrays, {**metrics, "kd_diverged": 1.0}
    out = {}
    for key, ref in student_arrays.items():
        if is_bn_buffer(key):
            out[key] = ref  # KD changes weights, never the running statistics
        else:
            out[key] = np.ascontiguousarray(state[key].detach().cpu().numpy(), dtype=ref.dtype)
    log.info(
        "round %d: distilled %d teachers on %d public images (%d steps) in %.1fs; MSE %.5f -> %.5f",
        server_round,
        len(teacher_arrays),
        len(items),
        steps,
        elapsed,
        loss_before,
        loss_after,
    )
    return out, metrics
