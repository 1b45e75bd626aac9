"""Clients of the image classification task (HideNseek's own setting) and its seeded models.

Two clients share the data (:mod:`fedreid.data.classification`) and the evaluation (accuracy
on the client's held-out split):

* :class:`ClassificationClient` trains the whole network densely: the ``fedavg`` baseline
  (FedPav's weighted mean; with no local head FedPav *is* FedAvg).
* :class:`HideNseekClassificationClient` masks **every** conv/linear layer, the last
  (classifier) layer included, so the classifier is shared through the 1-bit votes too; there
  is no local head. It uses the same :class:`~fedreid.clients.hidenseek_client.SignProtocol`
  as the ReID client.

Models (:func:`classification_model`, seeded with the run's ``seed`` so server and clients
build identical ``w0``): ``conv4`` (:class:`~fedreid.models.convnet.Conv4`, bias-free, no
BatchNorm; works at 28x28 and at the digits' native 8x8), ``conv6``
(:class:`~fedreid.models.convnet.Conv6`, for 32x32 input) or ``resnet18`` (torchvision's,
with the CIFAR stem: 3x3 stride-1 first conv and no max-pool, so small images keep their
resolution).

Optimiser: SGD with the run's momentum, Nesterov and weight decay; dense training at
``classification.lr``, scores at ``strategy.score_lr``. Batch size
``classification.batch_size``; ``train.local_epochs`` and ``train.max_batches`` apply.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedreid.batching import drops_last
from fedreid.clients.hidenseek_client import SignProtocol, score_optimizer
from fedreid.clients.reid_client import FitResult
from fedreid.clients.state import ClientState
from fedreid.config import Config
from fedreid.data.classification import ClientData, client_data, resolve_client
from fedreid.errors import ConfigError, DatasetError
from fedreid.models.builder import classification_model
from fedreid.models.reid import is_bn_buffer
from fedreid.models.supermask import to_dense
from fedreid.protocol import Upload, round_seed
from fedreid.training import make_optimizer, resolve_device, train_epochs

log = logging.getLogger(__name__)


def _loader(data: ClientData, cfg: Config, seed: int) -> DataLoader:
    """Shuffled training batches as ``(images, labels, dummy camera)`` for ``train_epochs``."""
    ds = TensorDataset(data.train_x, data.train_y, torch.zeros_like(data.train_y))
    n = len(ds)
    bs = cfg.classification.batch_size
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drops_last(n, bs, drop_last=False),  # HideNseek's setting keeps the rest
    )


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 512
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb).float()
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(len(y), 1)
    return {"accuracy": correct / n, "loss": loss / n}


class _Base:
    """What both classification clients share: data, device, seeded loaders, evaluation."""

    def __init__(self, cfg: Config, name: str, data: ClientData, state: ClientState) -> None:
        if data.num_train == 0 or data.num_test == 0:
            raise DatasetError(f"client {name}: empty training or test split")
        self.cfg = cfg
        self.name = name
        self.dataset = data
        self.state = state
        self.device = resolve_device(cfg.train.device)
        torch.set_num_threads(max(1, cfg.train.threads))

    @property
    def num_eval_examples(self) -> int:
        """Evaluation weight: the size of the held-out split."""
        return self.dataset.num_test

    def _train(self, model: nn.Module, optimizer: torch.optim.Optimizer, server_round: int):
        loader = _loader(self.dataset, self.cfg, seed=round_seed(self.cfg.seed, server_round))
        return train_epochs(model, loader, optimizer, self.cfg.train, self.device)

    def _evaluate(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        res = accuracy(model, self.dataset.test_x, self.dataset.test_y, self.device)
        return {f"{prefix}{k}": v for k, v in res.items()}


class ClassificationClient(_Base):
    """Dense training of the whole shared network (the ``fedavg`` baseline).

    With ``strategy.bn_policy=local`` (ResNet-18 only) the client keeps its own BatchNorm
    running statistics and does not upload them, as :class:`~fedreid.clients.reid_client.
    ReIDClient` does.
    """

    @property
    def keep_bn(self) -> bool:
        return self.cfg.strategy.bn_policy == "local"

    def build_model(self, shared: Mapping[str, torch.Tensor] | None) -> nn.Module:
        model = classification_model(self.cfg)
        if shared is not None:
            # BatchNorm statistics may be absent (bn_policy=local; counters are never sent)
            missing = {k for k in set(model.state_dict()) - set(shared) if not is_bn_buffer(k)}
            if missing:
                raise ConfigError(f"client {self.name}: global model lacks {sorted(missing)[:3]}")
            model.load_state_dict(dict(shared), strict=False)
        own = self.state.load("bn") if self.keep_bn else None
        if own is not None:
            model.load_state_dict(own, strict=False)
        return model.to(self.device)

    def fit(
        self,
        shared: Mapping[str, torch.Tensor] | None,
        server_round: int,
        evaluate_local: bool = False,
    ) -> FitResult:
        """Local epochs of dense training; returns every shared tensor."""
        model = self.build_model(shared)
        train = dataclasses.replace(self.cfg.train, lr_backbone=self.cfg.classification.lr)
        optimizer = make_optimizer(
            model, train, params=lambda m: {"backbone": list(m.parameters()), "head": []}
        )
        metrics = self._train(model, optimizer, server_round)
        if evaluate_local:
            metrics.update(self._evaluate(model, "local_"))
        out = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if self.keep_bn:
            bn = {k: v for k, v in out.items() if is_bn_buffer(k)}
            if bn:
                self.state.save("bn", bn)
        out = {k: out[k] for k in (shared or {})}  # exactly the keys received, in order
        return FitResult(shared=out, num_examples=self.dataset.num_train, metrics=metrics)

    def evaluate(self, shared: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        """Accuracy and loss of the global model on the held-out split."""
        return self._evaluate(self.build_model(shared))


class HideNseekClassificationClient(_Base):
    """Sign supermask over every layer (shared classifier, no local head)."""

    def __init__(
        self,
        cfg: Config,
        name: str,
        data: ClientData,
        state: ClientState,
        server_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(cfg, name, data, state)
        self.protocol = SignProtocol(cfg, name, state, server_config)

    def build_model(self, received: Mapping[str, torch.Tensor] | None) -> nn.Module:
        model = self.protocol.build(classification_model(self.cfg), received, trainable_prefixes=())
        return model.to(self.device)

    def fit(
        self,
        received: Mapping[str, torch.Tensor] | None,
        server_round: int,
        evaluate_local: bool = False,
    ) -> FitResult:
        """Train the scores from the global signs (or FedPM probabilities); return the upload."""
        model = self.build_model(received)
        seed = self.protocol.seed_draws(server_round)
        metrics = self._train(model, score_optimizer(model, self.cfg, []), server_round)
        self.protocol.save_bn(model)
        upload, flips = self.protocol.upload(model, seed)
        metrics.update(flips)
        if evaluate_local:
            metrics.update(self._evaluate(to_dense(model), "local_"))
        return FitResult(shared=upload, num_examples=self.dataset.num_train, metrics=metrics)

    def evaluate(self, received: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        """Accuracy of the global signs (with this client's BN statistics) on its test split."""
        return self._evaluate(to_dense(self.build_model(received)))


def build_classification_client(
    cfg: Config,
    upload: Upload,
    node_config: Mapping[str, Any],
    context_state: RecordDict | None,
    server_config: Mapping[str, Any] | None = None,
    scope: Mapping[str, Any] | None = None,
) -> ClassificationClient | HideNseekClassificationClient:
    """The classification client for this node (``partition-id``) and the upload it must send."""
    index, name, state_dir = resolve_client(dict(node_config), cfg)
    data = client_data(cfg, index)
    state = ClientState(context_state, state_dir, **dict(scope or {}))
    if upload == Upload.SIGNS:
        return HideNseekClassificationClient(cfg, name, data, state, server_config)
    if upload == Upload.SHARED:
        return ClassificationClient(cfg, name, data, state)
    raise ConfigError(f"task=classification cannot answer with upload {upload!r}")
