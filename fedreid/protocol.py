"""What the server and the clients agree on: record names, config keys and the HideNseek wire.

Both ends import this module; it imports no server or client code. A message from the server
carries one ArrayRecord (:data:`ARRAYS`) and one ConfigRecord (:data:`CONFIG`); a reply carries
one ArrayRecord (training only), one MetricRecord (:data:`METRICS`, with :data:`NUM_EXAMPLES`)
and a ConfigRecord (:data:`CLIENT`) with the client's name.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn

from fedreid.models.reid import HEAD_PREFIX
from fedreid.models.synflow import prunable_layers
from fedreid.utils.bitpack import Layout

# -- record names --------------------------------------------------------------------
ARRAYS = "arrays"
"""The ArrayRecord of a message (Flower's ``arrayrecord_key`` default)."""
CONFIG = "config"
"""The server's ConfigRecord (Flower's ``configrecord_key`` default)."""
METRICS = "metrics"
"""The reply's MetricRecord."""
CLIENT = "client"
"""The reply's ConfigRecord holding the client's ``name``."""
NUM_EXAMPLES = "num-examples"
"""Flower's default weighting key: the client's training-set size."""

# -- config keys the server sets ------------------------------------------------------------------
CONFIG_KEY = "fedreid-config"
"""The resolved run config (JSON); clients never read a second copy."""
ROUND_KEY = "server-round"
"""Set by Flower's strategies in every message."""
RUN_KEY = "fedreid-run-id"
"""The server's id of this run: clients keep their state per run (a resumed run keeps it)."""
EVAL_LOCAL_KEY = "evaluate-local"
"""Training messages: also rank the trained model before aggregation ("FedPav Local")."""
UPLOAD_KEY = "fedreid-upload"
"""What the client sends back: one of :class:`Upload`."""
CDW_KEY = "fedreid-cdw"
"""Training messages: report the cosine distance ``cdw_distance`` of CDW."""
DP_KEY = "fedreid-dp"
"""Client-side differential-privacy clipping to apply (``client_fixed``/``client_adaptive``)."""


class Upload(StrEnum):
    """What a client uploads after training; chosen by the server's strategy."""

    SHARED = "shared"  # the shared tensors it received (backbone + bottleneck), trained
    NONE = "none"  # nothing: local training, each client keeps its whole model
    SIGNS = "signs"  # HideNseek: packed sign (or keep) bits of the surviving weights


# -- the metrics a reply may carry, and their ranges --------------------------------------------
INF = float("inf")
_RANKING = {k: (0.0, 1.0) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}
_CLASSIFICATION = {"accuracy": (0.0, 1.0), "loss": (0.0, INF)}
EVALUATE_METRICS: dict[str, tuple[float, float]] = {**_RANKING, **_CLASSIFICATION}
"""Evaluation replies: metric -> allowed [low, high]."""
TRAIN_METRICS: dict[str, tuple[float, float]] = {
    "train_loss": (0.0, INF),
    "train_acc": (0.0, 1.0),
    "train_images": (0.0, INF),
    "train_time_s": (0.0, INF),
    "cdw_distance": (0.0, 2.0),  # a cosine distance 1 - cos lies in [0, 2]
    "local_flipped": (0.0, 1.0),
    "norm_bit": (0.0, 1.0),  # Flower's adaptiveclipping_mod: was the update clipped
    **{f"local_{k}": v for k, v in EVALUATE_METRICS.items()},  # "FedPav Local"
}
"""Training replies: metric -> allowed [low, high] (``num-examples`` is checked apart)."""


# -- HideNseek wire format --------------------------------------------------------------------
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


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the w0 checksum covers: every tensor except a ReID client's own head."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}


def mask_layout(model: nn.Module) -> Layout:
    """``[("<layer>.weight", weight shape)]`` of the maskable layers, in model order."""
    return [
        (f"{name}.weight", tuple(mod.weight.shape)) for name, mod in prunable_layers(model).items()
    ]


def signs_layout(masks: dict[str, torch.Tensor], order: list[str]) -> Layout:
    """Layout of a sign message: one flat run of ``mask.sum()`` bits per layer, in ``order``."""
    return [(name, (int(masks[name].sum()),)) for name in order]


# -- seeds --------------------------------------------------------------------
def round_seed(seed: int, server_round: int) -> int:
    """The seed of one round's random draws (data order, dropout, KD shuffling).

    Examples:
        >>> round_seed(0, 3), round_seed(1, 0)
        (3, 100003)
    """
    return seed * 100_003 + server_round


# -- HideNseek: the probabilistic mask (FedPM) and coded uploads ------------------------------
PROBS = "probs"
"""Array key of FedPM's global keep-probabilities (downlink; uint8 = round(255 p) or float32)."""
CODING_KEY = "hidenseek-upload-coding"
"""Config key: ``packed`` (the packed bits, fixed length) or ``auto`` (a coded upload,
:mod:`fedreid.utils.signcode`: raw or the XOR against the received bits, whichever is smaller)."""


class AnyLength:
    """A shape entry matching any length from 1 to ``most`` (a variable-size coded upload).

    ``expected_reply`` puts it where a fixed length would stand; ``parse_reply``'s shape check
    ``tuple(arr.shape) != tuple(shape)`` then accepts ``(L,)`` for every ``1 <= L <= most``.

    Examples:
        >>> (7,) == (AnyLength(10),), (11,) == (AnyLength(10),)
        (True, False)
    """

    def __init__(self, most: int) -> None:
        self.most = int(most)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AnyLength):
            return other.most == self.most
        if isinstance(other, bool) or not hasattr(other, "__index__"):
            return False
        return 1 <= int(other) <= self.most  # type: ignore[call-overload]

    def __hash__(self) -> int:
        return hash(("AnyLength", self.most))

    def __repr__(self) -> str:
        return f"1..{self.most}"
