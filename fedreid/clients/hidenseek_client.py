"""The HideNseek client: frozen seeded weights, a fixed pruning mask, trained sign scores.

The client end of the protocol in :mod:`fedreid.strategies.hidenseek`:

* **w0** is rebuilt from the shipped config's seed with the server's own constructor
  (:func:`~fedreid.models.builder.seeded_reid_model`) and checked against the server's
  SHA-256 checksum; a mismatch (other torch/torchvision version, other model settings) stops
  the client with a :class:`~fedreid.errors.ConfigError` naming both checksums.
* **The pruning mask** arrives once (first message of a run, or after an error reply) and is
  kept in :class:`~fedreid.clients.state.ClientState` under ``hidenseek_mask`` (in
  ``context.state`` and the node's state directory), so later messages carry signs only and a
  restarted node reloads it from its state directory. Its checksum is verified every time.
* **Scores** (the only trained shared parameters) start each round from the global signs:
  ``+/-magnitude`` (``strategy.score_magnitude``; 0 = each layer's mean ``|w0|``), are trained
  with SGD at ``strategy.score_lr`` through the straight-through sign, and only their sign
  bits go back. With ``strategy.keep_scores=true`` (confidence-preserving) a client keeps its
  own score magnitudes between rounds (``hidenseek_scores`` in its state) and takes only the
  signs from the vote; the downlink stays 1 bit per weight. ``mask_mode=fedpm`` starts from
  ``scale * logit(p)`` of the global keep-probabilities and uploads one Bernoulli draw (seeded
  by the run seed, the round and the client's name).
* **The upload** is coded as the server announces (:data:`~fedreid.protocol.CODING_KEY`):
  ``auto`` = :func:`fedreid.utils.signcode.encode` of the bits against the bits received
  (``fedpm``: ``p >= 0.5``), raw or XOR-coded, whichever is smaller; ``packed`` (or no key:
  an older server) = the packed bits, ``ceil(n_surviving / 8)`` bytes.
* **Local parts** (``bn_policy=local``, the only policy HideNseek accepts): BatchNorm running
  statistics are the client's own (saved under ``hidenseek_bn`` after training, loaded before
  training and evaluation); BatchNorm affine parameters stay frozen at their seeded values;
  in the ReID task the identity classifier (``classifier.*``) is local, real-valued and trained
  at ``train.lr_head``, like FedPav's head.

:class:`HideNseekClient` is the ReID client (backbone and bottleneck masked, head local,
evaluated by ranking like FedPav); the classification variant lives in
:mod:`fedreid.clients.classification_client` and shares :class:`SignProtocol`.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedreid.clients.reid_client import FitResult, ranking_metrics
from fedreid.clients.state import ClientState, load_head
from fedreid.config import Config
from fedreid.data.types import ReIDDataset
from fedreid.errors import ConfigError, DatasetError, UpdateError
from fedreid.models.builder import seeded_reid_model
from fedreid.models.reid import HEAD_PREFIX, head_state, is_bn_buffer
from fedreid.models.supermask import (
    convert_to_supermask,
    get_scores,
    get_signs,
    mask_parameters,
    sample_bits,
    set_probs,
    set_signed_scores,
    set_signs,
    to_dense,
)
from fedreid.protocol import (
    CODING_KEY,
    MASK,
    MASK_KEY,
    PROBS,
    SIGNS,
    W0_KEY,
    frozen_state,
    mask_layout,
    round_seed,
    signs_layout,
)
from fedreid.training import make_optimizer, resolve_device, train_epochs, train_loader
from fedreid.utils import fedpm, signcode
from fedreid.utils.bitpack import Layout, checksum, pack_bits, unpack_tensors

log = logging.getLogger(__name__)

MASK_STATE = "hidenseek_mask"
BN_STATE = "hidenseek_bn"
SCORES_STATE = "hidenseek_scores"


def client_seed(seed: int, server_round: int, name: str) -> int:
    """The seed of one client's random draws in one round (FedPM's Bernoulli masks)."""
    return (round_seed(seed, server_round) * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def _split(flat: np.ndarray, layout: Layout) -> dict[str, torch.Tensor]:
    """A flat per-weight array cut into ``{name: 1-D tensor}`` by a signs layout."""
    out, start = {}, 0
    for name, (size,) in layout:
        out[name] = torch.from_numpy(np.ascontiguousarray(flat[start : start + size]))
        start += size
    return out


def _as_uint8(value: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise UpdateError(f"packed bits must be 1-D uint8, got {arr.dtype} {arr.shape}")
    return arr


class SignProtocol:
    """Turns a freshly seeded model into the round's sign supermask, and back into bits.

    Args:
        cfg: the run config (``strategy.mask_mode``, ``score_magnitude``, ``seed``).
        name: the client's name (for error messages).
        state: where the mask and BatchNorm statistics persist.
        server_config: the message's config record (the checksums of
            :func:`~fedreid.strategies.hidenseek.HideNseek.protocol_config`).
    """

    def __init__(
        self,
        cfg: Config,
        name: str,
        state: ClientState,
        server_config: Mapping[str, Any] | None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.state = state
        self.server_config = dict(server_config or {})
        self.order: list[str] = []
        self.received_bits: dict[str, torch.Tensor] = {}
        self.reference: np.ndarray | None = None  # the flat bits received (XOR reference)

    @property
    def mode(self) -> str:
        return self.cfg.strategy.mask_mode

    @property
    def coding(self) -> str:
        """How to code the upload: as the server says (``packed`` for a server that does not)."""
        coding = self.server_config.get(CODING_KEY, "packed")
        if coding not in ("packed", "auto"):
            raise ConfigError(f"client {self.name}: unknown upload coding {coding!r}")
        return str(coding)

    def _expect(self, key: str) -> str:
        value = self.server_config.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"client {self.name}: the message lacks {key!r}; the server is not running "
                "strategy=hidenseek of this version"
            )
        return value

    @property
    def magnitude(self) -> float | None:
        m = self.cfg.strategy.score_magnitude
        return None if m <= 0 else float(m)

    def verify_w0(self, model: nn.Module) -> None:
        """Reject a model whose seeded weights differ from the server's."""
        expected = self._expect(W0_KEY)
        got = checksum(frozen_state(model))
        if got != expected:
            raise ConfigError(
                f"client {self.name}: initial weights rebuilt from seed {self.cfg.seed} do not "
                f"match the server's (checksum {got[:16]}... != {expected[:16]}...): the client "
                "runs another torch/torchvision version or other model settings"
            )

    def masks(
        self, received: Mapping[str, torch.Tensor], layout: list[tuple[str, tuple[int, ...]]]
    ) -> dict[str, torch.Tensor]:
        """The pruning mask: from the message (then stored) or from this client's state."""
        expected = self._expect(MASK_KEY)
        if MASK in received:
            masks = unpack_tensors(_as_uint8(received[MASK]), layout)
            if checksum(masks) != expected:
                raise ConfigError(
                    f"client {self.name}: the received pruning mask does not match its "
                    "checksum (corrupted in transit?)"
                )
            self.state.save(MASK_STATE, {MASK: torch.from_numpy(_as_uint8(received[MASK]).copy())})
            return masks
        stored = self.state.load(MASK_STATE)
        if stored is None:
            raise ConfigError(
                f"client {self.name}: no pruning mask (the server sends it once per run and this "
                "node has none in context.state or its state dir); it is re-sent next round"
            )
        masks = unpack_tensors(_as_uint8(stored[MASK]), layout)
        if checksum(masks) != expected:
            raise ConfigError(
                f"client {self.name}: the stored pruning mask belongs to another run (checksum "
                "mismatch); clear this client's state dir"
            )
        return masks

    def build(
        self,
        model: nn.Module,
        received: Mapping[str, torch.Tensor] | None,
        trainable_prefixes: tuple[str, ...] = (HEAD_PREFIX,),
    ) -> nn.Module:
        """Verify ``w0``, apply the mask, load the global signs and the local BN statistics.

        Args:
            model: the freshly seeded network (:mod:`fedreid.models.builder`), on the CPU.
            received: the message's arrays: ``signs`` and, once, ``mask``.
            trainable_prefixes: parameters left trainable besides the scores (the ReID head).
        """
        key = PROBS if self.mode == "fedpm" else SIGNS
        if received is None or key not in received:
            raise UpdateError(f"client {self.name}: the message carries no {key!r}")
        self.verify_w0(model)
        layout = mask_layout(model)
        self.order = [n for n, _ in layout]
        masks = self.masks(received, layout)
        convert_to_supermask(
            model,
            masks,
            self.mode,
            magnitude=self.magnitude,
            train_bn=False,
            trainable_prefixes=trainable_prefixes,
        )
        slayout = signs_layout(masks, self.order)
        if self.mode == "fedpm":
            self._load_probs(model, received[PROBS], slayout)
        else:
            self.received_bits = unpack_tensors(_as_uint8(received[SIGNS]), slayout)
            self.reference = np.concatenate(
                [self.received_bits[k].numpy() for k in self.order] or [np.zeros(0, bool)]
            )
            own = self.state.load(SCORES_STATE) if self._keeps_scores() else None
            if own is not None and self._fits(own, slayout):
                set_signed_scores(model, self.received_bits, own)
            else:
                set_signs(model, self.received_bits, self.magnitude)
        bn = self.state.load(BN_STATE)
        if bn is not None:
            model.load_state_dict(bn, strict=False)
        return model

    def seed_draws(self, server_round: int) -> int:
        """Seed this round's random draws (FedPM's masks in training); returns the seed."""
        seed = client_seed(self.cfg.seed, server_round, self.name)
        if self.mode == "fedpm":
            torch.manual_seed(seed)
        return seed

    def _keeps_scores(self) -> bool:
        return bool(self.cfg.strategy.keep_scores) and self.state.phase == "train"

    def _fits(self, own: Mapping[str, torch.Tensor], slayout: Layout) -> bool:
        ok = set(own) == {n for n, _ in slayout} and all(
            own[n].numel() == shape[0] for n, shape in slayout
        )
        if not ok:
            log.warning("client %s: stored scores do not fit the mask; reset them", self.name)
        return ok

    def _load_probs(self, model: nn.Module, value: Any, slayout: Layout) -> None:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        n = sum(shape[0] for _, shape in slayout)
        if arr.ndim != 1 or arr.size != n:
            raise UpdateError(
                f"client {self.name}: {arr.size} keep-probabilities for {n} surviving weights"
            )
        p = fedpm.decode_probs(arr)
        set_probs(model, _split(p, slayout), self.magnitude)
        self.reference = fedpm.reference_bits(arr)
        self.received_bits = _split(self.reference, slayout)

    def upload(
        self, model: nn.Module, seed: int = 0
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The upload (the bits, coded as the server asks) and how many bits this client flipped.

        Args:
            model: the trained supermask model.
            seed: FedPM's draw (:func:`client_seed`); unused by sign and binary masks.
        """
        if self.mode == "fedpm":
            bits = sample_bits(model, torch.Generator().manual_seed(seed))
        else:
            bits = get_signs(model)
        flat = np.concatenate([bits[k].numpy() for k in self.order] or [np.zeros(0, bool)])
        n = flat.size
        changed = int(np.count_nonzero(flat != self.reference)) if self.reference is not None else 0
        if self._keeps_scores():
            self.state.save(SCORES_STATE, get_scores(model))
        if self.coding == "auto":
            payload = signcode.encode(flat, self.reference)
        else:
            payload = pack_bits(flat)
        return {SIGNS: torch.from_numpy(payload)}, {"local_flipped": changed / max(n, 1)}

    def save_bn(self, model: nn.Module) -> None:
        """Keep this client's BatchNorm running statistics (none for bias/BN-free nets)."""
        bn = {k: v for k, v in model.state_dict().items() if is_bn_buffer(k)}
        if bn:
            self.state.save(BN_STATE, bn)


def score_optimizer(
    model: nn.Module, cfg: Config, head: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """SGD (the run's momentum, Nesterov, weight decay): scores at ``strategy.score_lr``, the
    local head (if any) at ``train.lr_head``."""
    train = dataclasses.replace(cfg.train, lr_backbone=cfg.strategy.score_lr)
    return make_optimizer(
        model, train, params=lambda m: {"backbone": mask_parameters(m), "head": head}
    )


def global_model(cfg: Config, model: nn.Module, signs: np.ndarray, mask: np.ndarray) -> nn.Module:
    """The dense global model from the seeded ``model``, a packed mask and the global array
    (export): packed signs, or FedPM's keep-probabilities (then the most likely mask is used).

    BatchNorm running statistics are the seeded ones (each client has its own).
    """
    masks = unpack_tensors(mask, mask_layout(model))
    protocol = SignProtocol(
        cfg,
        "export",
        ClientState(None, None),
        {W0_KEY: checksum(frozen_state(model)), MASK_KEY: checksum(masks)},
    )
    key = PROBS if cfg.strategy.mask_mode == "fedpm" else SIGNS
    model = protocol.build(model, {key: torch.from_numpy(signs), MASK: torch.from_numpy(mask)})
    return to_dense(model)


class HideNseekClient:
    """ReID HideNseek client: masked backbone + bottleneck, local head, ranking evaluation.

    Args:
        cfg: the run's config (as shipped by the server).
        name: the client's name.
        dataset: its train/query/gallery lists.
        state: where the mask, the head and the BatchNorm statistics persist.
        server_config: the message's config record (checksums); see :class:`SignProtocol`.
    """

    def __init__(
        self,
        cfg: Config,
        name: str,
        dataset: ReIDDataset,
        state: ClientState,
        server_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not dataset.train:
            raise DatasetError(f"client {name}: empty training set under {dataset.root}")
        self.cfg = cfg
        self.name = name
        self.dataset = dataset
        self.state = state
        self.protocol = SignProtocol(cfg, name, state, server_config)
        self.device = resolve_device(cfg.train.device)
        torch.set_num_threads(max(1, cfg.train.threads))

    def build_model(self, received: Mapping[str, torch.Tensor] | None) -> nn.Module:
        """Seeded w0 -> sign supermask with the global signs, own BN statistics and head."""
        model = seeded_reid_model(self.cfg, self.dataset.num_train_pids)
        model = self.protocol.build(model, received)
        head = load_head(self.state, self.dataset.num_train_pids, self.name)
        if head is not None:
            model.load_state_dict(head, strict=False)
        return model.to(self.device)

    def fit(
        self,
        received: Mapping[str, torch.Tensor] | None,
        server_round: int,
        evaluate_local: bool = False,
    ) -> FitResult:
        """Train scores + head on the global signs; return the packed sign bits only."""
        model = self.build_model(received)
        loader = train_loader(
            self.dataset.train, self.cfg.data, seed=round_seed(self.cfg.seed, server_round)
        )
        optimizer = score_optimizer(model, self.cfg, list(model.classifier.parameters()))
        seed = self.protocol.seed_draws(server_round)
        metrics = train_epochs(model, loader, optimizer, self.cfg.train, self.device)
        self.state.save("head", head_state(model))
        self.protocol.save_bn(model)
        upload, flips = self.protocol.upload(model, seed)
        metrics.update(flips)
        if evaluate_local:
            metrics.update(
                ranking_metrics(to_dense(model), self.dataset, self.cfg, self.device, "local_")
            )
        return FitResult(shared=upload, num_examples=len(self.dataset.train), metrics=metrics)

    def evaluate(self, received: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        """Rank the client's query/gallery with the global signs (and its own BN statistics)."""
        if not self.dataset.query or not self.dataset.gallery:
            raise DatasetError(f"client {self.name}: no query or gallery images to evaluate")
        model = self.build_model(received)
        return ranking_metrics(to_dense(model), self.dataset, self.cfg, self.device)
