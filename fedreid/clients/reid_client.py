"""The FedPav client: a local ReID model, its data, and a head that never leaves the client.

Plain Python, no Flower types, so it is testable alone; :mod:`fedreid.client_app` drives it.
Contract (like NumPyClient's): ``fit(shared, round) -> FitResult`` and
``evaluate(shared) -> metrics``, where ``shared`` is the backbone + bottleneck state_dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from fedreid.clients.cdw import logit_distance
from fedreid.clients.state import ClientState, load_head
from fedreid.config import Config
from fedreid.data.types import ReIDDataset
from fedreid.errors import DatasetError
from fedreid.models.builder import reid_model, uninitialised_reid_model
from fedreid.models.reid import ReIDNet, head_state, is_bn_buffer, load_shared, shared_state
from fedreid.protocol import Upload, round_seed
from fedreid.training import (
    make_optimizer,
    plain_loader,
    resolve_device,
    train_epochs,
    train_loader,
)

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a client sends back: shared tensors, its training-set size and metrics."""

    shared: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def ranking_metrics(
    model: torch.nn.Module,
    dataset: ReIDDataset,
    cfg: Config,
    device: torch.device,
    prefix: str = "",
) -> dict[str, float]:
    """rank-1/5/10, mAP and mINP of ``model`` on the client's own query/gallery.

    The model is put in the memory format ``train.channels_last`` asks for, as ``fedreid
    eval`` does (:func:`fedreid.inference.place`), so that both give the same figures.
    """
    from fedreid.evaluation import evaluate_model

    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    res = evaluate_model(
        model,
        dataset.query,
        dataset.gallery,
        cfg.data.height,
        cfg.data.width,
        batch_size=cfg.data.eval_batch_size,
        device=device,
        num_workers=cfg.data.num_workers,
        amp=cfg.train.amp,
    )
    return {f"{prefix}{k}": float(res[k]) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}


class ReIDClient:
    """Trains the received shared model with the client's own head on its own images.

    Args:
        cfg: the run's config (as shipped by the server).
        name: the client's name (its dataset or scenario part).
        dataset: its train/query/gallery lists.
        state: where the head (and, for local training, the whole model) persists.
        upload: what the server asked for: the shared part (FedPav) or nothing (local).
        cdw: also report ``cdw_distance`` (cosine-distance weighting).

    With ``strategy.bn_policy=local`` the client keeps its own BatchNorm running statistics:
    it ignores the server's and does not upload its own.
    """

    def __init__(
        self,
        cfg: Config,
        name: str,
        dataset: ReIDDataset,
        state: ClientState,
        upload: Upload = Upload.SHARED,
        cdw: bool = False,
    ) -> None:
        if upload not in (Upload.SHARED, Upload.NONE):
            raise ValueError(f"ReIDClient cannot upload {upload!r}")
        if not dataset.train:
            raise DatasetError(f"client {name}: empty training set under {dataset.root}")
        self.cfg = cfg
        self.name = name
        self.dataset = dataset
        self.state = state
        self.upload = upload
        self.cdw = cdw
        self.device = resolve_device(cfg.train.device)
        torch.set_num_threads(max(1, cfg.train.threads))

    @property
    def local_only(self) -> bool:
        """Local training: the client trains and keeps its whole model alone."""
        return self.upload == Upload.NONE

    @property
    def keep_bn(self) -> bool:
        return self.cfg.strategy.bn_policy == "local"

    def build_model(self, shared: dict[str, torch.Tensor] | None) -> ReIDNet:
        """The model the client works on: received shared part (or its own, when local or
        for BN statistics under ``bn_policy=local``) plus its persisted head."""
        m = self.cfg.model
        own = self.state.load("local_model") if (self.local_only or self.keep_bn) else None
        head = load_head(self.state, self.dataset.num_train_pids, self.name)
        model = None
        source = own if self.local_only else shared
        if source is not None and head is not None and not self.keep_bn:
            # every tensor is loaded below: no random initialisation to pay for
            model = uninitialised_reid_model(m, self.dataset.num_train_pids, {*source, *head})
        if model is None:
            # ImageNet weights only for a local-only client's very first model (nothing to load)
            pretrained = self.local_only and m.pretrained and own is None and shared is None
            # model.init: wherever the client has nothing of its own yet, it starts from the
            # file: a local-only client's first model, and under bn_policy=local the BatchNorm
            # statistics the server does not send (the rest is then overwritten by `shared`)
            from_init = own is None and (shared is None or self.keep_bn)
            torch.manual_seed(self.cfg.seed)
            model = reid_model(
                m, self.dataset.num_train_pids, pretrained=pretrained, init=from_init
            )
        if self.local_only and own is not None:
            load_shared(model, own)
        elif shared is not None:
            load_shared(model, shared)
            if self.keep_bn and own is not None:
                model.load_state_dict(
                    {k: v for k, v in own.items() if is_bn_buffer(k)}, strict=False
                )
        if head is not None:
            model.load_state_dict(head, strict=False)
        memory_format = torch.channels_last if self.cfg.train.channels_last else None
        model = model.to(self.device)
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
        return model

    def fit(
        self,
        shared: dict[str, torch.Tensor] | None,
        server_round: int,
        evaluate_local: bool = False,
    ) -> FitResult:
        """Local epochs on the received model; returns the shared part only.

        Args:
            shared: the global backbone + bottleneck (None for ``strategy=local``).
            server_round: used to seed the data order.
            evaluate_local: also rank the trained model before aggregation ("FedPav Local").
        """
        model = self.build_model(shared)
        seed = round_seed(self.cfg.seed, server_round)
        torch.manual_seed(seed)  # dropout and augmentation differ per round, reproducibly
        loader = train_loader(self.dataset.train, self.cfg.data, seed=seed)
        cdw_batches = self._cdw_batches() if self.cdw else None
        old_logits = self._logits(model, cdw_batches) if cdw_batches else None
        optimizer = make_optimizer(model, self.cfg.train)
        metrics = train_epochs(model, loader, optimizer, self.cfg.train, self.device)
        if cdw_batches:
            metrics["cdw_distance"] = logit_distance(old_logits, self._logits(model, cdw_batches))
        self.state.save("head", head_state(model))
        out = shared_state(model)
        if self.local_only or self.keep_bn:
            self.state.save("local_model", out)
        if evaluate_local:
            metrics.update(ranking_metrics(model, self.dataset, self.cfg, self.device, "local_"))
        # The reply carries the keys received, in their order (what Flower's strategies and
        # DP clipping mods expect), never BatchNorm statistics under bn_policy=local, and
        # nothing when training locally.
        out = {k: out[k] for k in (shared or {}) if not (self.keep_bn and is_bn_buffer(k))}
        return FitResult(
            shared={k: v.cpu().contiguous() for k, v in out.items()},
            num_examples=len(self.dataset.train),
            metrics=metrics,
        )

    def evaluate(self, shared: dict[str, torch.Tensor] | None) -> dict[str, float]:
        """Rank the client's query/gallery with the global model (its own, when local)."""
        if not self.dataset.query or not self.dataset.gallery:
            raise DatasetError(f"client {self.name}: no query or gallery images to evaluate")
        model = self.build_model(shared)
        return ranking_metrics(model, self.dataset, self.cfg, self.device)

    def _cdw_batches(self) -> list[torch.Tensor]:
        """The first ``cdw_batches`` batches of training images, un-augmented, in file order."""
        loader = plain_loader(self.dataset.train, self.cfg.data, self.cfg.data.batch_size)
        batches = []
        for images, _, _ in loader:
            batches.append(images)
            if len(batches) >= self.cfg.strategy.cdw_batches:
                break
        return batches

    @torch.no_grad()
    def _logits(self, model: ReIDNet, batches: list[torch.Tensor]) -> torch.Tensor:
        """Logits in eval mode (no dropout, running BN stats) so the distance is not noise."""
        was_training = model.training
        model.eval()
        out = torch.cat([model(b.to(self.device)).float().cpu() for b in batches])
        model.train(was_training)
        return out
