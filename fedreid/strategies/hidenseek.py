"""HideNseek: server-side SynFlow pruning, client sign supermasks, 1-bit messages both ways.

The protocol (no public code exists; this is our reconstruction of the paper's description,
with the wire format in :mod:`fedreid.protocol`):

1. **Once, on the server.** Build the seeded network ``w0`` exactly as every client will
   (the task's ``seeded_model``, :mod:`fedreid.tasks`: ReID = the shared part of
   :func:`fedreid.models.builder.seeded_reid_model`; classification = Conv4 / ResNet-18 from
   ``cfg.seed``), prune it with SynFlow (data-free) to ``strategy.density`` at the
   training resolution, and keep the packed pruning mask plus two SHA-256 checksums: one of
   ``w0`` (every tensor but a ReID client's ``classifier``), one of the mask.
   ``strategy.mask_mode=binary`` (the FedMask-style baseline) learns a {0, 1} keep-mask
   instead of signs, on the same SynFlow subnetwork and density (``strategy.binary_scope=
   pruned``, the default: the same bits per round) or over every maskable weight
   (``binary_scope=all``: no pruning, the mask is all ones). ``mask_mode=fedpm`` (FedPM-style)
   learns keep-probabilities on the same subnetwork (or over all weights, likewise).
2. **Downlink.** Every message carries the global signs, packed 1 bit per surviving weight
   (``"signs"``, uint8); in ``fedpm`` mode the global keep-probabilities instead (``"probs"``,
   ``strategy.fedpm_downlink_bits``: uint8 ``round(255 p)``, 8 bits per surviving weight, or
   float32, 32 bits). A node that has not yet answered a training round of this server
   process validly (so: every node in the first round of a run, of a resumed run, and a node
   whose last training reply was an error, e.g. one that lost its state) also gets the packed
   pruning mask (``"mask"``, 1 bit per maskable weight). The checksums travel in the config
   record (:data:`W0_KEY`, :data:`MASK_KEY`); the seed is the shipped config's ``seed``.
3. **Uplink.** A client answers with exactly one array, ``"signs"``: the bits of its trained
   scores at the surviving positions (``fedpm``: one Bernoulli draw from its keep-probabilities),
   plus ``num-examples`` and metrics. Its head (ReID) and BatchNorm statistics stay on the
   client. With ``strategy.upload_coding=auto`` (the default; the server announces it under
   :data:`~fedreid.protocol.CODING_KEY`) the array is a coded upload
   (:mod:`fedreid.utils.signcode`): a header byte, a CRC-32 of the bits, and either the packed
   bits (raw) or their XOR against the bits the client received (``fedpm``: ``p >= 0.5``),
   Golomb-Rice or zlib coded, whichever is smallest; at most ``ceil(n_surviving / 8) + 5``
   bytes. With ``packed`` it is the packed bits, exactly ``ceil(n_surviving / 8)`` bytes.
4. **Aggregation.** A sample-weighted majority vote per surviving weight (:func:`weighted_vote`):
   ``vote = sum_k n_k * (+1 if bit_k else -1)``; positive -> +1, negative -> -1, an exact tie
   keeps the previous global sign. ``fedpm``: the sample-weighted mean of the received bits,
   Beta(``strategy.fedpm_prior``)-smoothed (:func:`fedreid.utils.fedpm.estimate`). A reply
   whose upload does not decode (wrong length, non-zero padding, an unknown coding, a body
   that does not decode to exactly ``n_surviving`` bits, a CRC-32 mismatch) is excluded with
   the reason, like any invalid reply.
5. **Metrics per round** (``results.json``, ``server``): ``agreement`` (mean over surviving
   weights of the weighted share of clients that agree with the new global sign, 1.0 =
   unanimous), ``unanimous`` (share of weights where all clients agree), ``ties``, ``flipped``
   (share of global signs that changed), ``ones`` (share of +1 / kept bits) and ``bits``;
   per client ``agg_weight`` and ``sign_agreement`` (share of its bits equal to the result).
   Uploads: ``upload_bpw`` (payload bits per surviving weight, header included), ``xor_rate``
   (share of a client's bits that differ from the bits it received) and ``xor_entropy``
   (``H(xor_rate)``, the i.i.d. coding floor), per client and as the mean over clients;
   per client ``upload_coding`` (the header's id). ``fedpm`` adds ``p_entropy`` (the mean
   binary entropy of the new keep-probabilities).

Decisions:

* BatchNorm (``strategy.bn_policy``): only ``local`` is accepted. Running statistics stay on
  each client (1-bit messages cannot carry them), and BatchNorm affine parameters stay frozen
  at their seeded values (gamma 1, beta 0), so a HideNseek model is fully described by the
  seed, the mask, the signs, and each client's statistics (plus its head, for ReID).
* The initial global signs are all +1 (all kept, in binary mode): round 1 starts from the
  SynFlow-pruned random network itself. ``fedpm`` starts at ``p = sigmoid(1)``, the
  probability of a score ``+magnitude``.
* The protocol options the clients follow come from the run config the server ships in every
  message (:data:`~fedreid.protocol.CONFIG_KEY`); when the strategy sees that config it takes
  its own options from it too (:meth:`HideNseek.adopt`), so both ends always agree. Build it
  with :meth:`HideNseek.from_config`; the constructor's options serve runs without a shipped
  config (unit tests).
* The run loop holds the global arrays ``signs`` and ``mask``; the strategy decodes the mask
  it is given (and checks it against the checksums), so a resumed run takes the mask from the
  checkpoint (no second SynFlow) and re-sends it in its first round.
* The final ``global_model.pt`` holds ``signs`` and ``mask`` (packed); with the seed and the
  config they rebuild the global model (:func:`fedreid.clients.hidenseek_client.global_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    CODING_KEY,
    CONFIG_KEY,
    MASK,
    MASK_KEY,
    NUM_EXAMPLES,
    PROBS,
    SIGNS,
    UPLOAD_KEY,
    W0_KEY,
    AnyLength,
    Upload,
    frozen_state,
    mask_layout,
)
from fedreid.strategies.report import Reporting
from fedreid.tasks import get_task
from fedreid.utils import fedpm, signcode
from fedreid.utils.bitpack import (
    Layout,
    checksum,
    pack_bits,
    pack_tensors,
    packed_size,
    unpack_bits,
    unpack_tensors,
)

log = logging.getLogger("fedreid")


SCOPES = ("pruned", "all")
CODINGS = ("auto", "packed")
INITIAL_PROB = 1.0 / (1.0 + math.exp(-1.0))
"""FedPM's first global keep-probability: ``sigmoid(1)``, a score of ``+magnitude``."""


@dataclass(frozen=True)
class Options:
    """The protocol settings both ends follow (``strategy.*`` of the run config)."""

    mask_mode: str = "sign"
    binary_scope: str = "pruned"
    upload_coding: str = "packed"
    fedpm_prior: float = 1.0
    fedpm_downlink_bits: int = 8
    keep_scores: bool = False

    def check(self) -> Options:
        """Reject unknown or contradictory settings with one line."""
        if self.mask_mode not in MODES:
            raise ConfigError(f"strategy.mask_mode={self.mask_mode!r} must be one of {MODES}")
        if self.binary_scope not in SCOPES:
            raise ConfigError(
                f"strategy.binary_scope={self.binary_scope!r} must be one of {SCOPES}"
            )
        if self.upload_coding not in CODINGS:
            raise ConfigError(
                f"strategy.upload_coding={self.upload_coding!r} must be one of {CODINGS}"
            )
        if not math.isfinite(self.fedpm_prior) or self.fedpm_prior < 0:
            raise ConfigError(f"strategy.fedpm_prior must be >= 0, got {self.fedpm_prior}")
        fedpm.check_bits(self.fedpm_downlink_bits)
        if self.keep_scores and self.mask_mode == "fedpm":
            raise ConfigError(
                "strategy.keep_scores=true keeps score magnitudes under the global signs; "
                "mask_mode=fedpm sends the probabilities themselves (drop one of them)"
            )
        return self

    @property
    def pruned(self) -> bool:
        """Whether SynFlow prunes (sign mode always; binary/fedpm unless scope ``all``)."""
        return self.mask_mode == "sign" or self.binary_scope == "pruned"

    @property
    def global_key(self) -> str:
        """The downlink array: ``probs`` for fedpm, else ``signs``."""
        return PROBS if self.mask_mode == "fedpm" else SIGNS


def options(cfg: Config) -> Options:
    """The protocol options of a run config (checked)."""
    s = cfg.strategy
    return Options(
        mask_mode=s.mask_mode,
        binary_scope=s.binary_scope,
        upload_coding=s.upload_coding,
        fedpm_prior=float(s.fedpm_prior),
        fedpm_downlink_bits=int(s.fedpm_downlink_bits),
        keep_scores=bool(s.keep_scores),
    ).check()


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
    """Build ``w0`` from the seed and prune it once (all-ones mask for ``binary_scope=all``)."""
    s = cfg.strategy
    task = get_task(cfg)
    model = task.seeded_model(cfg)
    layout = mask_layout(model)
    start = time.perf_counter()
    if not options(cfg).pruned:
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
    """Prune once; the global arrays are the all-+1 signs (fedpm: ``p = sigmoid(1)``) and the
    packed mask.

    Returns ``(arrays, server metrics of the first round)``.
    """
    opts = options(cfg)
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
    if opts.mask_mode == "fedpm":
        first = fedpm.encode_probs(np.full(p.n_surviving, INITIAL_PROB), opts.fedpm_downlink_bits)
    else:
        first = pack_bits(np.ones(p.n_surviving, dtype=bool))
    arrays = ArrayRecord(
        {
            opts.global_key: Array(np.ascontiguousarray(first)),
            MASK: Array(np.ascontiguousarray(p.packed_mask)),
        }
    )
    return arrays, {"synflow_s": p.seconds, "mask_bytes": float(p.packed_mask.size)}


# -- the strategy --------------------------------------------------------------------
class HideNseek(Reporting, FedAvg):
    """The HideNseek server (see the module docstring for the protocol and its decisions).

    The global arrays (held by the run loop) are ``signs`` (``fedpm``: ``probs``) and ``mask``;
    the strategy derives the layout and checksums from the mask it is given, so it keeps no
    copy of the model.

    Args:
        w0: the seeded network every client rebuilds (its checksum and maskable layout).
        mask_mode: ``sign`` (HideNseek), ``binary`` (the FedMask-style baseline) or ``fedpm``.
        bn_policy: must be ``local``: 1-bit messages cannot carry BatchNorm statistics.
        upload_coding: ``packed`` (fixed-length packed bits) or ``auto`` (coded uploads).
        fedpm_prior: ``fedpm``: Beta smoothing of the estimated keep-probabilities.
        fedpm_downlink_bits: ``fedpm``: 8 (uint8) or 32 (float32) per surviving weight.
        **flower_kwargs: FedAvg's sampling settings.
    """

    def __init__(
        self,
        *,
        w0: torch.nn.Module,
        mask_mode: str = "sign",
        bn_policy: str = "local",
        upload_coding: str = "packed",
        fedpm_prior: float = 1.0,
        fedpm_downlink_bits: int = 8,
        **flower_kwargs,
    ) -> None:
        opts = Options(
            mask_mode=mask_mode,
            upload_coding=upload_coding,
            fedpm_prior=float(fedpm_prior),
            fedpm_downlink_bits=int(fedpm_downlink_bits),
        ).check()
        if bn_policy != "local":
            raise ConfigError(
                "strategy=hidenseek sends only mask bits, so BatchNorm statistics cannot be "
                "averaged: use strategy.bn_policy=local"
            )
        super().__init__(**flower_kwargs)
        self.options = opts
        self.layout = mask_layout(w0)
        self.w0_checksum = checksum(frozen_state(w0))
        self._pruning: Pruning | None = None
        self._has_mask: set[int] = set()
        self._global: np.ndarray | None = None  # the global array sent this round
        self._shipped = ""  # the last shipped run config adopted

    @classmethod
    def from_config(cls, cfg: Config, w0: torch.nn.Module, **flower_kwargs) -> HideNseek:
        """The strategy with every protocol option taken from the run config."""
        opts = options(cfg)
        return cls(
            w0=w0,
            mask_mode=opts.mask_mode,
            bn_policy=cfg.strategy.bn_policy,
            upload_coding=opts.upload_coding,
            fedpm_prior=opts.fedpm_prior,
            fedpm_downlink_bits=opts.fedpm_downlink_bits,
            **flower_kwargs,
        )

    @property
    def mask_mode(self) -> str:
        return self.options.mask_mode

    def adopt(self, config: ConfigRecord) -> None:
        """Follow the protocol options of the run config shipped to the clients, if any."""
        text = config.get(CONFIG_KEY)
        if not isinstance(text, str) or not text or text == self._shipped:
            return
        opts = dataclasses.replace(options(Config.from_json(text)), keep_scores=False)
        if opts != self.options:
            log.info("HideNseek follows the shipped run config: %s", opts)
        self.options = opts
        self._shipped = text

    def summary(self) -> None:
        o = self.options
        log.info(
            "HideNseek: mask_mode=%s, upload_coding=%s, %d maskable layers%s",
            o.mask_mode,
            o.upload_coding,
            len(self.layout),
            f", keep-probabilities as {o.fedpm_downlink_bits}-bit, prior {o.fedpm_prior}"
            if o.mask_mode == "fedpm"
            else "",
        )
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
        config[CODING_KEY] = self.options.upload_coding
        return config

    def reference(self, sent: np.ndarray, n: int) -> np.ndarray:
        """The bits a client received (the XOR reference of a coded upload)."""
        if self.mask_mode == "fedpm":
            return fedpm.reference_bits(sent)
        return unpack_bits(np.asarray(sent, dtype=np.uint8), n)

    def upload_shape(self, n: int) -> tuple[int | AnyLength, ...]:
        """The shape of a valid upload of ``n`` bits."""
        if self.options.upload_coding == "auto":
            return (AnyLength(signcode.max_payload(n)),)
        return (packed_size(n),)

    def expected_reply(self, sent: ArrayRecord) -> dict[str, tuple[tuple[Any, ...], np.dtype]]:
        """A training reply carries one uint8 array ``signs`` (never the mask)."""
        if self._pruning is not None:
            n = self._pruning.n_surviving
        elif PROBS in sent:
            n = int(sent[PROBS].numpy().size)
        else:  # packed signs: the byte count bounds n
            n = int(sent[SIGNS].numpy().size) * 8
        return {SIGNS: (self.upload_shape(n), np.dtype(np.uint8))}

    def decode_upload(self, record: ArrayRecord, n: int) -> tuple[np.ndarray, int, int]:
        """``(bits, payload bytes, coding id)`` of one reply; raises on anything malformed."""
        payload = np.asarray(record[SIGNS].numpy())
        if self.options.upload_coding == "packed":
            return unpack_bits(payload, n), int(payload.size), -1
        if self._global is None:
            raise RuntimeError("HideNseek.configure_train must run before aggregate_train")
        bits = signcode.decode(payload, n, self.reference(self._global, n))
        return bits, int(payload.size), int(payload[0])

    # -- messages -------------------------------------------------------------------------------
    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, train: bool
    ) -> list[Message]:
        self.adopt(config)
        p = self.pruning(arrays)
        config = self._protocol(config, p)
        key = self.options.global_key
        if key not in arrays:
            raise ConfigError(
                f"HideNseek ({self.mask_mode}) needs the global array {key!r}; the run holds "
                f"{sorted(arrays.keys())} (a checkpoint of another mask_mode?)"
            )
        global_only = ArrayRecord({key: arrays[key]})
        if train:
            self._global = np.asarray(arrays[key].numpy()).copy()
            messages = super().configure_train(server_round, global_only, config, grid)
        else:
            messages = super().configure_evaluate(server_round, global_only, config, grid)
        out: list[Message] = []
        with_mask = ArrayRecord({key: arrays[key], MASK: arrays[MASK]})
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
        """Weighted sign vote (fedpm: weighted mean) over the replies whose uploads decode."""
        replies = list(replies)
        for msg in replies:  # an error reply may come from a node that lost its mask
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._has_mask.discard(node)
            else:
                self._has_mask.add(node)
        p = self._pruning
        if p is None or self._global is None:
            raise RuntimeError("HideNseek.configure_train must run before aggregate_train")
        n = p.n_surviving
        previous = self.reference(self._global, n)
        kept: list[Message] = []
        bits: list[np.ndarray] = []
        uploads: list[dict[str, float]] = []
        for msg in replies:
            if msg.has_error():
                continue
            node = msg.metadata.src_node_id
            try:
                record = msg.content[self.arrayrecord_key]
                b, size, coding = self.decode_upload(record, n)
            except (UpdateError, KeyError, ValueError) as err:
                log.warning("round %d: excluded node %d: %s", server_round, node, err)
                self.note_excluded(node, str(err))
                continue
            kept.append(msg)
            bits.append(b)
            xor = float(np.count_nonzero(b != previous) / max(n, 1))
            uploads.append(
                {
                    "upload_bpw": 8.0 * size / max(n, 1),
                    "xor_rate": xor,
                    "xor_entropy": signcode.entropy_bits(xor),
                    "upload_coding": float(coding),
                }
            )
        if not kept:
            return None, None
        weights = [float(_metrics(m)[NUM_EXAMPLES]) for m in kept]
        new, metrics, per_client = weighted_vote(bits, weights, previous)
        if self.mask_mode == "fedpm":
            probs = fedpm.estimate(bits, weights, self.options.fedpm_prior)
            sent = fedpm.encode_probs(probs, self.options.fedpm_downlink_bits)
            new = fedpm.reference_bits(sent)  # the most likely mask, as the clients see it
            metrics.update(self._agreement(bits, weights, new, previous))
            metrics["p_entropy"] = fedpm.entropy(fedpm.decode_probs(sent))
            per_client = [float(np.count_nonzero(b == new) / max(n, 1)) for b in bits]
            global_array = sent
        else:
            global_array = pack_bits(new)
        for key in ("upload_bpw", "xor_rate", "xor_entropy"):
            metrics[key] = float(np.mean([u[key] for u in uploads]))
        self.note_server(**metrics)
        total = sum(weights)
        for msg, w, agree, up in zip(kept, weights, per_client, uploads, strict=True):
            self.note_client(
                msg.metadata.src_node_id, agg_weight=w / total, sign_agreement=agree, **up
            )
        log.info(
            "round %d: %s of %d clients: agreement %.3f, flipped %.4f, upload %.3f bits/weight",
            server_round,
            "FedPM estimate" if self.mask_mode == "fedpm" else "sign vote",
            len(kept),
            metrics["agreement"],
            metrics["flipped"],
            metrics["upload_bpw"],
        )
        arrays = ArrayRecord(
            {
                self.options.global_key: Array(np.ascontiguousarray(global_array)),
                MASK: Array(p.packed_mask.copy()),
            }
        )
        train_metrics = self.train_metrics_aggr_fn([m.content for m in kept], NUM_EXAMPLES)
        return arrays, train_metrics

    @staticmethod
    def _agreement(
        bits: Sequence[np.ndarray], weights: Sequence[float], new: np.ndarray, previous: np.ndarray
    ) -> dict[str, float]:
        """The vote's metrics recomputed against FedPM's most likely mask ``new``."""
        w = np.asarray(weights, dtype=np.float64)
        agree = np.zeros(new.shape, dtype=np.float64)
        for b, wk in zip(bits, w, strict=True):
            agree += wk * (b == new)
        n = max(new.size, 1)
        return {
            "agreement": float(agree.sum() / w.sum() / n),
            "unanimous": float(np.count_nonzero(agree == w.sum()) / n),
            "flipped": float(np.count_nonzero(new != previous) / n),
            "ones": float(np.count_nonzero(new) / n),
        }


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))
