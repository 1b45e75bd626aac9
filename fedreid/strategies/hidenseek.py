"""HideNseek: server-side SynFlow pruning, client sign supermasks, 1-bit messages both ways.

The protocol (DESIGN.md section 6; no public code exists, this is our reconstruction):

1. **Once, on the server.** Build the seeded network ``w0`` exactly as every client will
   (:func:`seeded_model`: ReID = ``fedreid.server_app.initial_model``; classification = Conv4 /
   ResNet-18 from ``cfg.seed``), prune it with SynFlow (data-free) to ``strategy.density`` at the
   training resolution, and keep the packed pruning mask plus two SHA-256 checksums: one of
   ``w0`` (every tensor but a ReID client's ``classifier``), one of the mask.
   ``strategy.mask_mode=binary`` (the FedMask-style baseline) skips pruning: the mask is all
   ones over every maskable weight and clients learn a {0, 1} keep-mask instead of signs.
2. **Downlink.** Every message carries the global signs, packed 1 bit per surviving weight
   (``"signs"``, uint8). A node that has not yet answered a training round of this server
   process validly (so: every node in the first round of a run, of a resumed run, and a node
   whose last training reply was an error, e.g. one that lost its state) also gets the packed
   pruning mask (``"mask"``, 1 bit per maskable weight). The checksums travel in the config
   record (:data:`W0_KEY`, :data:`MASK_KEY`); the seed is the shipped config's ``seed``.
3. **Uplink.** A client answers with exactly one array, ``"signs"``: the packed bits of its
   trained scores at the surviving positions, ``ceil(n_surviving / 8)`` bytes, plus
   ``num-examples`` and metrics. Its head (ReID) and BatchNorm statistics stay on the client.
4. **Aggregation.** A sample-weighted majority vote per surviving weight (:func:`weighted_vote`):
   ``vote = sum_k n_k * (+1 if bit_k else -1)``; positive -> +1, negative -> -1, an exact tie
   keeps the previous global sign. A reply whose packed bits are malformed (wrong length,
   non-zero padding) is excluded with a warning, like any invalid reply.
5. **Metrics per round** (``results.json``, ``server``): ``agreement`` (mean over surviving
   weights of the weighted share of clients that agree with the new global sign, 1.0 =
   unanimous), ``unanimous`` (share of weights where all clients agree), ``ties``, ``flipped``
   (share of global signs that changed), ``ones`` (share of +1 / kept bits) and ``bits``;
   per client ``agg_weight`` and ``sign_agreement`` (share of its bits equal to the result).

Decisions:

* BatchNorm (``strategy.bn_policy``): only ``local`` is accepted. Running statistics stay on
  each client (1-bit messages cannot carry them), and BatchNorm affine parameters stay frozen
  at their seeded values (gamma 1, beta 0), so a HideNseek model is fully described by the
  seed, the mask, the signs, and each client's statistics (plus its head, for ReID).
* The initial global signs are all +1 (all kept, in binary mode): round 1 starts from the
  SynFlow-pruned random network itself.
* Resume: the checkpoint stores the packed mask and checksums; a resumed run reuses them
  (no second SynFlow) and re-sends the mask in its first round.
* The final ``global_model.pt`` holds ``signs`` and ``mask`` (packed); with the seed and the
  config they rebuild the global model (:func:`fedreid.clients.hidenseek_client.global_model`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from torch import nn

from fedreid.config import Config
from fedreid.errors import ConfigError, UpdateError
from fedreid.models.reid import HEAD_PREFIX
from fedreid.models.supermask import MODES
from fedreid.models.synflow import prunable_layers, synflow_masks
from fedreid.results import RunRecorder
from fedreid.strategies.base import ReIDStrategy, to_record
from fedreid.strategies.replies import ClientReply
from fedreid.utils.bitpack import (
    Layout,
    checksum,
    pack_bits,
    pack_tensors,
    unpack_bits,
    unpack_tensors,
)

log = logging.getLogger("fedreid")

SIGNS = "signs"
"""Array key of the packed sign bits (both directions)."""
MASK = "mask"
"""Array key of the packed pruning mask (downlink, once per node)."""
W0_KEY = "hidenseek-w0-sha256"
"""Config key: checksum of the seeded initial weights the client must rebuild."""
MASK_KEY = "hidenseek-mask-sha256"
"""Config key: checksum of the unpacked pruning mask."""
BITS_KEY = "hidenseek-bits"
"""Config key: number of surviving weights (= bits per sign message)."""


# -- the model both ends build ------------------------------------------------------------------
def seeded_model(cfg: Config, num_classes: int = 0) -> nn.Module:
    """The network ``w0`` that the server prunes and every client rebuilds from ``cfg.seed``.

    Args:
        cfg: the run config.
        num_classes: ReID only: add a client head for this many identities; it is created
            after the seeded shared part, so the shared weights do not depend on it.
    """
    if cfg.task == "classification":
        from fedreid.clients.classification_client import classification_model

        return classification_model(cfg)
    from fedreid.server_app import initial_model

    model = initial_model(cfg)
    if num_classes > 0:
        model.set_head(num_classes)
    return model


def input_shape(cfg: Config) -> tuple[int, int, int]:
    """One training sample's shape: SynFlow scores at the training resolution."""
    if cfg.task == "classification":
        from fedreid.data.classification import dataset_info

        info = dataset_info(cfg.classification.dataset)
        return info.channels, info.image_size, info.image_size
    return 3, cfg.data.height, cfg.data.width


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the w0 checksum covers: every tensor except a ReID client's own head."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}


def mask_layout(model: nn.Module) -> Layout:
    """``[("<layer>.weight", weight shape)]`` of the maskable layers, in model order."""
    return [
        (f"{name}.weight", tuple(mod.weight.shape)) for name, mod in prunable_layers(model).items()
    ]


def signs_layout(masks: dict[str, torch.Tensor], order: Sequence[str]) -> Layout:
    """Layout of a sign message: one flat run of ``mask.sum()`` bits per layer, in ``order``."""
    return [(name, (int(masks[name].sum()),)) for name in order]


@dataclass
class Pruning:
    """The server's one-time product: the mask, how it is laid out, and the checksums."""

    masks: dict[str, torch.Tensor]
    layout: Layout
    packed_mask: np.ndarray
    w0_checksum: str
    mask_checksum: str
    seconds: float = 0.0

    @property
    def order(self) -> list[str]:
        return [name for name, _ in self.layout]

    @property
    def n_surviving(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def n_maskable(self) -> int:
        return sum(m.numel() for m in self.masks.values())


def prune(cfg: Config) -> Pruning:
    """Build ``w0`` from the seed and prune it once (all-ones mask for ``mask_mode=binary``)."""
    s = cfg.strategy
    model = seeded_model(cfg)
    layout = mask_layout(model)
    start = time.perf_counter()
    if s.mask_mode == "binary":
        masks = {name: torch.ones(shape, dtype=torch.bool) for name, shape in layout}
    else:
        masks = synflow_masks(
            model,
            input_shape(cfg),
            s.density,
            s.synflow_iterations,
            min_per_layer=s.synflow_min_per_layer,
        )
    seconds = time.perf_counter() - start
    packed, layout2 = pack_tensors(masks, [name for name, _ in layout])
    assert layout2 == layout
    return Pruning(
        masks=masks,
        layout=layout,
        packed_mask=packed,
        w0_checksum=checksum(frozen_state(model)),
        mask_checksum=checksum(masks),
        seconds=seconds,
    )


# -- aggregation ---------------------------------------------------------------------------------
def weighted_vote(
    bits: Sequence[np.ndarray], weights: Sequence[float], previous: np.ndarray
) -> tuple[np.ndarray, dict[str, float], list[float]]:
    """Sample-weighted majority vote of sign bits; exact ties keep ``previous``.

    Args:
        bits: one flat bool array per client (True = +1, or kept in binary mode).
        weights: one non-negative weight per client (training-set sizes); float64 sums of
            integers are exact, so ties between integer weights are detected exactly.
        previous: the current global bits.

    Returns:
        ``(new bits, round metrics, per-client share of bits equal to the new bits)``; the
        metrics are ``agreement``, ``unanimous``, ``ties``, ``flipped``, ``ones``, ``bits``.

    Examples:
        >>> new, m, _ = weighted_vote(
        ...     [np.array([True, True, False]), np.array([False, True, True])],
        ...     [3, 1], np.array([False, False, False]))
        >>> new.tolist(), m["agreement"], m["flipped"]
        ([True, True, False], 0.75, 0.6666666666666666)
    """
    if not bits or len(bits) != len(weights):
        raise ValueError(f"{len(bits)} bit vectors but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"vote weights must be finite, >= 0 and not all zero: {list(weights)}")
    previous = np.asarray(previous, dtype=bool)
    plus = np.zeros(previous.shape, dtype=np.float64)
    for b, wk in zip(bits, w, strict=True):
        if b.shape != previous.shape:
            raise ValueError(f"bit vector of shape {b.shape}, expected {previous.shape}")
        plus += wk * b
    total = float(w.sum())
    minus = total - plus
    new = np.where(plus > minus, True, np.where(plus < minus, False, previous))
    n = max(previous.size, 1)
    metrics = {
        "agreement": float(np.maximum(plus, minus).sum() / total / n),
        "unanimous": float(np.count_nonzero((plus == total) | (minus == total)) / n),
        "ties": float(np.count_nonzero(plus == minus) / n),
        "flipped": float(np.count_nonzero(new != previous) / n),
        "ones": float(np.count_nonzero(new) / n),
        "bits": float(previous.size),
    }
    per_client = [float(np.count_nonzero(b == new) / n) for b in bits]
    return new, metrics, per_client


# -- the strategy ------------------------------------------------------------------------------
class HideNseek(ReIDStrategy):
    """The HideNseek server (see the module docstring for the protocol and its decisions).

    Args:
        cfg: the run config (``strategy.density``, ``synflow_iterations``,
            ``synflow_min_per_layer``, ``mask_mode``; ``bn_policy`` must be ``local``).
        recorder: where per-round metrics go.
        num_clients: clients expected every round.
    """

    def __init__(self, cfg: Config, recorder: RunRecorder, num_clients: int) -> None:
        super().__init__(cfg, recorder, num_clients)
        s = cfg.strategy
        if s.mask_mode not in MODES:
            raise ConfigError(f"strategy.mask_mode={s.mask_mode!r} must be one of {MODES}")
        if s.bn_policy != "local":
            raise ConfigError(
                "strategy=hidenseek sends only mask bits, so BatchNorm statistics cannot be "
                "averaged: use strategy.bn_policy=local"
            )
        if s.score_lr <= 0:
            raise ConfigError(f"strategy.score_lr must be > 0, got {s.score_lr}")
        self.pruning: Pruning | None = None
        self._has_mask: set[int] = set()

    # -- set-up ---------------------------------------------------------------------------------
    def initial_arrays(self) -> ArrayRecord:
        """Prune once (or take the mask from the checkpoint on resume); all-+1 initial signs."""
        self.pruning = self._pruning_from_checkpoint() or prune(self.cfg)
        p = self.pruning
        log.info(
            "HideNseek (%s): %d of %d maskable weights survive (density %.4f), SynFlow %.1fs; "
            "sign message %d bytes, mask %d bytes",
            self.cfg.strategy.mask_mode,
            p.n_surviving,
            p.n_maskable,
            p.n_surviving / max(p.n_maskable, 1),
            p.seconds,
            math.ceil(p.n_surviving / 8),
            p.packed_mask.size,
        )
        return to_record({SIGNS: pack_bits(np.ones(p.n_surviving, dtype=bool))})

    def _pruning_from_checkpoint(self) -> Pruning | None:
        if not (self.cfg.resume and self.checkpoint_path.is_file()):
            return None
        ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        state = ckpt.get("strategy", {})
        if MASK not in state:
            return None
        model = seeded_model(self.cfg)
        self.pruning = None
        self._restore(state, model)
        return self.pruning

    def _restore(self, state: dict[str, Any], model: nn.Module | None = None) -> None:
        """Rebuild :attr:`pruning` from a checkpoint's strategy state."""
        layout = [(str(n), tuple(int(d) for d in shape)) for n, shape in state["layout"]]
        packed = state[MASK].numpy() if isinstance(state[MASK], torch.Tensor) else state[MASK]
        masks = unpack_tensors(np.asarray(packed, dtype=np.uint8), layout)
        if checksum(masks) != state["mask_checksum"]:
            raise ConfigError("the checkpoint's pruning mask is corrupt (checksum mismatch)")
        w0 = state["w0_checksum"]
        if model is not None and checksum(frozen_state(model)) != w0:
            raise ConfigError(
                "the checkpoint was made with other initial weights (seed, model or torch "
                "version changed); start a new run"
            )
        self.pruning = Pruning(
            masks=masks,
            layout=layout,
            packed_mask=np.asarray(packed, dtype=np.uint8),
            w0_checksum=w0,
            mask_checksum=state["mask_checksum"],
        )

    def _require_pruning(self) -> Pruning:
        if self.pruning is None:
            raise RuntimeError("HideNseek.initial_arrays() must run before the first round")
        return self.pruning

    # -- checkpoint hooks -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        p = self._require_pruning()
        return {
            MASK: torch.from_numpy(p.packed_mask.copy()),
            "layout": [(n, list(shape)) for n, shape in p.layout],
            "w0_checksum": p.w0_checksum,
            "mask_checksum": p.mask_checksum,
            "mask_mode": self.cfg.strategy.mask_mode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if MASK not in state:
            raise ConfigError("the checkpoint holds no HideNseek mask (made by another strategy?)")
        if self.pruning is not None and self.pruning.mask_checksum == state["mask_checksum"]:
            return
        self._restore(state, seeded_model(self.cfg))

    # -- messages -------------------------------------------------------------------------------
    def protocol_config(self) -> dict[str, Any]:
        """Config values every HideNseek message carries (checksums and bit count)."""
        p = self._require_pruning()
        return {W0_KEY: p.w0_checksum, MASK_KEY: p.mask_checksum, BITS_KEY: p.n_surviving}

    def extra_train_config(self, server_round: int) -> dict[str, Any]:
        return self.protocol_config()

    def downlink(self, server_round: int) -> ArrayRecord:
        """The global signs only; :meth:`_attach_mask` adds the mask where it is needed."""
        return to_record({SIGNS: self.global_arrays[SIGNS]})

    def _with_mask(self) -> ArrayRecord:
        return to_record(
            {SIGNS: self.global_arrays[SIGNS], MASK: self._require_pruning().packed_mask}
        )

    def _attach_mask(self, messages: list[Message], train: bool) -> list[Message]:
        """Replace the messages to nodes that may lack the mask with copies that carry it."""
        out: list[Message] = []
        with_mask: ArrayRecord | None = None
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self._has_mask:
                out.append(msg)
                continue
            with_mask = with_mask or self._with_mask()
            content = RecordDict(
                {
                    self.arrayrecord_key: with_mask,
                    self.configrecord_key: msg.content[self.configrecord_key],
                }
            )
            out.append(
                Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type)
            )
            if train:
                self._bytes_down[node] = int(with_mask.count_bytes())
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        return self._attach_mask(messages, train=True)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        for k, v in self.protocol_config().items():
            config[k] = v
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        return self._attach_mask(messages, train=False)

    # -- aggregation ----------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:  # an error reply may come from a node that lost its mask
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._has_mask.discard(node)
            else:
                self._has_mask.add(node)
        return super().aggregate_train(server_round, replies)

    def _exclude(self, server_round: int, reason: str) -> None:
        log.warning("round %d: excluded reply: %s", server_round, reason)
        server = self.recorder._round(server_round)["server"]
        self.recorder.server_metric(server_round, {"excluded": 1 + server.get("excluded", 0)})

    def aggregate_replies(
        self, server_round: int, replies: list[ClientReply]
    ) -> dict[str, np.ndarray] | None:
        """Weighted sign vote over the replies whose packed bits decode."""
        n = self._require_pruning().n_surviving
        previous = unpack_bits(self.global_arrays[SIGNS], n)
        kept: list[ClientReply] = []
        bits: list[np.ndarray] = []
        for r in replies:
            try:
                bits.append(unpack_bits(r.arrays[SIGNS], n))
                kept.append(r)
            except UpdateError as err:
                self._exclude(server_round, f"{r.name}: {err}")
        if len(kept) < self.cfg.strategy.min_replies:
            log.warning("round %d: too few decodable replies; global signs kept", server_round)
            return None
        weights = [float(r.num_examples) for r in kept]
        new, metrics, per_client = weighted_vote(bits, weights, previous)
        self.recorder.server_metric(server_round, metrics)
        if server_round == self._first_round and self.pruning is not None:
            self.recorder.server_metric(
                server_round,
                {
                    "synflow_s": self.pruning.seconds,
                    "mask_bytes": float(self.pruning.packed_mask.size),
                },
            )
        total = sum(weights)
        for r, w, agree in zip(kept, weights, per_client, strict=True):
            self.recorder.client(
                server_round, r.name, {"agg_weight": w / total, "sign_agreement": agree}
            )
        log.info(
            "round %d: sign vote of %d clients: agreement %.3f, flipped %.4f",
            server_round,
            len(kept),
            metrics["agreement"],
            metrics["flipped"],
        )
        return {SIGNS: pack_bits(new)}

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Result:
        """Flower's round loop (the base's); the final arrays carry the mask as well."""
        if self.pruning is None:  # started without initial_arrays(): prune now
            self.pruning = prune(self.cfg)
        self._has_mask = set()
        result = super().start(grid, initial_arrays, *args, **kwargs)
        result.arrays = self._with_mask()
        return result
