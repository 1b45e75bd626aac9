"""Using a trained run: evaluation on any dataset (with re-ranking), feature extraction.

The feature path is the one the clients used during the run, step for step
(:func:`fedreid.clients.reid_client.ranking_metrics` -> :func:`fedreid.evaluation.evaluate_model`):
the test transforms at the run's image size, ``data.eval_batch_size`` images per forward pass,
``train.amp`` autocast, ``train.channels_last``, flip-averaged L2-normalised embeddings of
``ReIDNet.features`` in eval mode, and :func:`~fedreid.evaluation.ranking.evaluate_ranking` on
the run's device. On the run's own data it therefore reproduces the run's final per-client
figures exactly (``tests/test_cli.py``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedreid.config import Config
from fedreid.data.market import IMAGE_SUFFIXES
from fedreid.data.types import Item, ReIDDataset
from fedreid.errors import ConfigError, DatasetError
from fedreid.runfolder import RunFolder

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
CLIENT, UNSEEN = "client", "unseen"


# -- progress -----------------------------------------------------------------------------------
class Bar:
    """A rich progress bar on stderr (one line per task), or nothing when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def track(self, batches: Iterable, total: int, label: str) -> Iterator:
        """Yield ``batches`` while advancing a bar of ``total`` images."""
        if self.progress is None:
            yield from batches
            return
        task = self.progress.add_task(label, total=total)
        try:
            for batch in batches:
                yield batch
                self.progress.advance(task, len(batch[0]))
        finally:
            self.progress.remove_task(task)


# -- model and features -------------------------------------------------------------------------
def resolve_device(cfg: Config, device: str | None) -> torch.device:
    """``device`` or the run's ``train.device``; CUDA must be there when asked for."""
    from fedreid.training import resolve_device as training_device

    dev = training_device(device or cfg.train.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"the run used device {dev}, which is not available: pass --device cpu")
    return dev


def place(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """On ``device`` in eval mode, channels-last if the run trained so (as its clients did)."""
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def loader(items: Sequence[Item], cfg: Config, device: torch.device) -> DataLoader:
    """Test-time loader of ``items`` exactly as :func:`~fedreid.evaluation.evaluate_model`."""
    from fedreid.data.transforms import ImageDataset, build_transforms

    transform = build_transforms(cfg.data.height, cfg.data.width, train=False)
    return DataLoader(
        ImageDataset(items, transform),
        batch_size=cfg.data.eval_batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )


def features(
    model: nn.Module,
    items: Sequence[Item],
    cfg: Config,
    device: torch.device,
    bar: Bar | None = None,
    label: str = "features",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip-averaged, L2-normalised features of ``items`` (CPU float32) and their labels."""
    from fedreid.evaluation.features import extract_features

    batches: Iterable = loader(items, cfg, device)
    if bar is not None:
        batches = bar.track(batches, len(items), label)
    return extract_features(model, batches, device=device, amp=cfg.train.amp)


# -- evaluation ---------------------------------------------------------------------------------
@dataclass
class Target:
    """One row of ``fedreid eval``: a dataset, whether the run trained on it, its model."""

    name: str
    role: str  # client | unseen
    dataset: ReIDDataset
    client: str | None  # the client whose model is used (None: the global model)


def data_config(run: RunFolder, data_root: str | None, source: str | None) -> Any:
    """The run's data config, with another root / source if given (checked to exist)."""
    from fedreid.config import resolve_path

    data = copy.deepcopy(run.cfg.data)
    if data_root:
        data.root = str(resolve_path(data_root))
    if source:
        data.source = source
    root = resolve_path(data.root)
    if not root.is_dir():
        hint = "" if data_root else " (the run's data.root; pass --data-root)"
        raise DatasetError(f"data root not found: {root}{hint}")
    return data


def load_unseen(name: str, data: Any) -> ReIDDataset:
    """A dataset by name under ``data.root`` (synthetic: a Market-layout folder)."""
    from fedreid.config import resolve_path
    from fedreid.data.scenarios import load_named

    root = resolve_path(data.root)
    if data.source == "synthetic" and not (root / name).is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "query").is_dir())
        raise DatasetError(
            f"unknown dataset {name!r}: no folder {root / name} (available: {', '.join(found)})"
        )
    ds = load_named(name, root, data.source, data.seed)
    ds.name = name
    return ds


def eval_targets(
    run: RunFolder,
    names: Sequence[str] | None,
    data: Any,
    client: str | None = None,
) -> tuple[list[Target], list[str]]:
    """The rows to evaluate and notes about rows left out.

    Without ``names``: the run's clients, then its held-out domains (``data.holdout``) as
    unseen. With ``names``: each is a client of the run (its own model) or any other dataset
    under the data root (unseen).
    """
    from fedreid.data.scenarios import client_specs

    specs = {s.name: s for s in client_specs(data)}
    notes: list[str] = []
    chosen = list(names) if names else [*specs, *run.holdout]
    targets = []
    for name in chosen:
        if name in specs:
            own = name if run.per_client else None
            targets.append(Target(name, CLIENT, specs[name].load(), own))
            continue
        if run.per_client and not client:
            reason = (
                f"{name}: skipped; {run.strategy} with per-client models has no global model "
                "to test on an unseen domain (pass --client NAME to use one client's model)"
            )
            if names:
                raise ConfigError(reason)
            notes.append(reason)
            continue
        targets.append(Target(name, UNSEEN, load_unseen(name, data), client))
    for t in targets:
        if not t.dataset.query or not t.dataset.gallery:
            raise DatasetError(f"{t.name}: no query or gallery images under {t.dataset.root}")
    return targets, notes


def evaluate_run(
    run: RunFolder,
    targets: Sequence[Target],
    device: torch.device,
    *,
    rerank: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Rank every target's query/gallery; returns ``{name: {role, metrics, sizes, times}}``."""
    from fedreid.evaluation.ranking import evaluate_ranking

    out: dict[str, dict[str, Any]] = {}
    models: dict[str | None, nn.Module] = {}
    with Bar(progress) as bar:
        for t in targets:
            if t.client not in models:
                models[t.client] = place(run.model(t.client), run.cfg, device)
            model = models[t.client]
            start = time.perf_counter()
            q, q_pids, q_cams = features(
                model, t.dataset.query, run.cfg, device, bar, f"{t.name} query"
            )
            g, g_pids, g_cams = features(
                model, t.dataset.gallery, run.cfg, device, bar, f"{t.name} gallery"
            )
            row: dict[str, Any] = {
                "role": t.role,
                "model": "client" if t.client == t.name else (t.client or "global"),
                "num_query": len(q),
                "num_gallery": len(g),
            }
            row["features_s"] = time.perf_counter() - start
            labels = (q_pids, g_pids, q_cams, g_cams)
            start = time.perf_counter()
            try:
                if rerank:
                    from fedreid.evaluation.rerank import rerank as k_reciprocal

                    dist = k_reciprocal(q, g)
                    row["rerank_s"] = time.perf_counter() - start
                    metrics = evaluate_ranking(None, None, *labels, distmat=dist)
                else:
                    metrics = evaluate_ranking(q.to(device), g.to(device), *labels)
            except ValueError as err:  # e.g. no query with a valid match
                raise DatasetError(f"{t.name}: {err}") from err
            row["ranking_s"] = time.perf_counter() - start
            row.update({k: float(metrics[k]) for k in METRIC_KEYS})
            row["num_valid_queries"] = int(metrics["num_valid_queries"])
            out[t.name] = row
    return out


def eval_table(rows: dict[str, dict[str, Any]], final: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the rows (%), with the run's own final rank-1 / mAP per client."""
    head = (
        "| dataset | role | query | gallery | rank-1 | rank-5 | rank-10 | mAP | mINP "
        "| run's final rank-1 / mAP |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        ref = final.get(name, {}) if r["role"] == CLIENT else {}
        run_ref = (
            f"{100 * ref['rank1']:.1f} / {100 * ref['mAP']:.1f}"
            if "rank1" in ref and "mAP" in ref
            else "-"
        )
        figures = " | ".join(f"{100 * r[k]:.1f}" for k in METRIC_KEYS)
        lines.append(
            f"| {name} | {r['role']} | {r['num_query']} | {r['num_gallery']} | {figures} "
            f"| {run_ref} |"
        )
    return "\n".join(lines)


# -- feature extraction for any folder -----------------------------------------------------------
def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursive, jpg/jpeg/png/bmp), sorted by relative path."""
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DatasetError(f"no images (jpg, png, bmp) under {folder}")
    return files


def extract_folder(
    model: nn.Module,
    folder: Path,
    cfg: Config,
    device: torch.device,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D] float32, relative names [N])`` of every image under ``folder``."""
    files = image_files(folder)
    items = [(str(p), 0, 0) for p in files]
    with Bar(progress) as bar:
        feats, _, _ = features(model, items, cfg, device, bar, "images")
    names = np.array([p.relative_to(folder).as_posix() for p in files])
    return feats.numpy(), names


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: leave as is)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
