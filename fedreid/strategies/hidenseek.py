"""HideNseek: server-side SynFlow pruning, client sign supermasks, 1-bit messages both ways.

The protocol (no public code exists; this is our reconstruction of the paper's description,
with the wire format in :mod:`fedreid.protocol`):

1. **Once, on the server.** Build the seeded network ``w0`` exactly as every client will
   (the task's ``seeded_model``, :mod:`fedreid.tasks`: ReID = the shared part of
   :func:`fedreid.models.builder.seeded_reid_model`; classification = Conv4 / ResNet-18 from
   ``cfg.seed``), prune it with SynFlow (data-free) to ``strategy.density`` at the
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
* The run loop holds the global arrays ``signs`` and ``mask``; the strategy decodes the mask
  it is given (and checks it against the checksums), so a resumed run takes the mask from the
  checkpoint (no second SynFlow) and re-sends it in its first round.
* The final ``global_model.pt`` holds ``signs`` and ``mask`` (packed); with the seed and the
  config they rebuild the global model (:func:`fedreid.clients.hidenseek_client.global_model`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedreid.config import Config
from fedreid.errors import ConfigError, UpdateError
from fedreid.models.supermask import MODES
from fedreid.models.synflow import synflow_masks
from fedreid.protocol import (
    BITS_KEY,
    MASK,
    MASK_KEY,
    NUM_EXAMPLES,
    SIGNS,
    UPLOAD_KEY,
    W0_KEY,
    Upload,
    frozen_state,
    mask_layout,
)
from fedreid.strategies.report import Reporting
from fedreid.tasks import get_task
from fedreid.utils.bitpack import (
    Layout,
    checksum,
    pack_bits,
    pack_tensors,
    unpack_bits,
    unpack_tensors,
)

log = logging.getLogger("fedreid")


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
    task = get_task(cfg)
    model = task.seeded_model(cfg)
    layout = mask_layout(model)
    start = time.perf_counter()
    if s.mask_mode == "binary":
        masks = {name: torch.ones(shape, dtype=torch.bool) for name, shape in layout}
    else:
        masks = synflow_masks(
            model,
            task.input_shape(cfg),
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


# -- aggregation --------------------------------------------------------------------
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


def initial_arrays(cfg: Config) -> tuple[ArrayRecord, dict[str, float]]:
    """Prune once; the global arrays are the all-+1 signs and the packed mask.

    Returns ``(arrays, server metrics of the first round)``.
    """
    p = prune(cfg)
    log.info(
        "HideNseek (%s): %d of %d maskable weights survive (density %.4f), SynFlow %.1fs; "
        "sign message %d bytes, mask %d bytes",
        cfg.strategy.mask_mode,
        p.n_surviving,
        p.n_maskable,
        p.n_surviving / max(p.n_maskable, 1),
        p.seconds,
        math.ceil(p.n_surviving / 8),
        p.packed_mask.size,
    )
    arrays = ArrayRecord(
        {
            SIGNS: Array(pack_bits(np.ones(p.n_surviving, dtype=bool))),
            MASK: Array(np.ascontiguousarray(p.packed_mask)),
        }
    )
    return arrays, {"synflow_s": p.seconds, "mask_bytes": float(p.packed_mask.size)}


# -- the strategy --------------------------------------------------------------------
class HideNseek(Reporting, FedAvg):
    """The HideNseek server (see the module docstring for the protocol and its decisions).

    The global arrays (held by the run loop) are ``signs`` and ``mask``; the strategy derives
    the layout and checksums from the mask it is given, so it keeps no copy of the model.

    Args:
        w0: the seeded network every client rebuilds (its checksum and maskable layout).
        mask_mode: ``sign`` (HideNseek) or ``binary`` (the FedMask-style baseline).
        bn_policy: must be ``local``: 1-bit messages cannot carry BatchNorm statistics.
        **flower_kwargs: FedAvg's sampling settings.
    """

    def __init__(
        self,
        *,
        w0: torch.nn.Module,
        mask_mode: str = "sign",
        bn_policy: str = "local",
        **flower_kwargs,
    ) -> None:
        if mask_mode not in MODES:
            raise ConfigError(f"strategy.mask_mode={mask_mode!r} must be one of {MODES}")
        if bn_policy != "local":
            raise ConfigError(
                "strategy=hidenseek sends only mask bits, so BatchNorm statistics cannot be "
                "averaged: use strategy.bn_policy=local"
            )
        super().__init__(**flower_kwargs)
        self.mask_mode = mask_mode
        self.layout = mask_layout(w0)
        self.w0_checksum = checksum(frozen_state(w0))
        self._pruning: Pruning | None = None
        self._has_mask: set[int] = set()
        self._signs: np.ndarray | None = None

    def summary(self) -> None:
        log.info("HideNseek: mask_mode=%s, %d maskable layers", self.mask_mode, len(self.layout))
        super().summary()

    # -- protocol state from the arrays --------------------------------------------------------
    def pruning(self, arrays: ArrayRecord) -> Pruning:
        """The pruning the mask in ``arrays`` describes (decoded once, checked every time)."""
        packed = np.asarray(arrays[MASK].numpy(), dtype=np.uint8)
        p = self._pruning
        if p is not None and np.array_equal(p.packed_mask, packed):
            return p
        masks = unpack_tensors(packed, self.layout)
        self._pruning = Pruning(
            masks=masks,
            layout=self.layout,
            packed_mask=packed.copy(),
            w0_checksum=self.w0_checksum,
            mask_checksum=checksum(masks),
        )
        return self._pruning

    def _protocol(self, config: ConfigRecord, p: Pruning) -> ConfigRecord:
        config[W0_KEY] = p.w0_checksum
        config[MASK_KEY] = p.mask_checksum
        config[BITS_KEY] = p.n_surviving
        config[UPLOAD_KEY] = str(Upload.SIGNS)
        return config

    def expected_reply(self, sent: ArrayRecord) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """A training reply carries the packed signs only (never the mask)."""
        signs = sent[SIGNS].numpy()
        return {SIGNS: (tuple(signs.shape), signs.dtype)}

    # -- messages -------------------------------------------------------------------------------
    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, train: bool
    ) -> list[Message]:
        p = self.pruning(arrays)
        config = self._protocol(config, p)
        signs_only = ArrayRecord({SIGNS: arrays[SIGNS]})
        if train:
            self._signs = np.asarray(arrays[SIGNS].numpy(), dtype=np.uint8)
            messages = super().configure_train(server_round, signs_only, config, grid)
        else:
            messages = super().configure_evaluate(server_round, signs_only, config, grid)
        out: list[Message] = []
        with_mask = ArrayRecord({SIGNS: arrays[SIGNS], MASK: arrays[MASK]})
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self._has_mask:
                out.append(msg)
                continue
            content = RecordDict(
                {
                    self.arrayrecord_key: with_mask,
                    self.configrecord_key: msg.content[self.configrecord_key],
                }
            )
            out.append(
                Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type)
            )
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, train=True)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, train=False)

    # -- aggregation ----------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted sign vote over the replies whose packed bits decode."""
        replies = list(replies)
        for msg in replies:  # an error reply may come from a node that lost its mask
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._has_mask.discard(node)
            else:
                self._has_mask.add(node)
        p = self._pruning
        if p is None or self._signs is None:
            raise RuntimeError("HideNseek.configure_train must run before aggregate_train")
        n = p.n_surviving
        previous = unpack_bits(self._signs, n)
        kept: list[Message] = []
        bits: list[np.ndarray] = []
        for msg in replies:
            if msg.has_error():
                continue
            try:
                record = msg.content[self.arrayrecord_key]
                bits.append(unpack_bits(np.asarray(record[SIGNS].numpy()), n))
                kept.append(msg)
            except (UpdateError, KeyError, ValueError) as err:
                node = msg.metadata.src_node_id
                log.warning("round %d: excluded node %d: %s", server_round, node, err)
                self.note_excluded(node, str(err))
        if not kept:
            return None, None
        weights = [float(_metrics(m)[NUM_EXAMPLES]) for m in kept]
        new, metrics, per_client = weighted_vote(bits, weights, previous)
        self.note_server(**metrics)
        total = sum(weights)
        for msg, w, agree in zip(kept, weights, per_client, strict=True):
            self.note_client(msg.metadata.src_node_id, agg_weight=w / total, sign_agreement=agree)
        log.info(
            "round %d: sign vote of %d clients: agreement %.3f, flipped %.4f",
            server_round,
            len(kept),
            metrics["agreement"],
            metrics["flipped"],
        )
        arrays = ArrayRecord({SIGNS: Array(pack_bits(new)), MASK: Array(p.packed_mask.copy())})
        train_metrics = self.train_metrics_aggr_fn([m.content for m in kept], NUM_EXAMPLES)
        return arrays, train_metrics


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))
