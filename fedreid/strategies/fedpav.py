"""FedPav (Federated Partial Averaging) and its optimisations, composed by flags.

The server averages only the shared part (backbone + bottleneck); each client's classifier
stays with the client. Weights are the clients' training-set sizes, or the cosine distances of
CDW (``strategy.cdw``); ``strategy.kd`` distils the aggregate towards the client models on the
server's public data. ``fedpav``, ``fedpav_cdw``, ``fedpav_kd`` and ``fedpav_cdw_kd`` are this
one class with different flags.

BatchNorm running statistics (``strategy.bn_policy``): ``average`` (default) averages them like
every other shared tensor, weighted the same way, so the global model is self-consistent;
``local`` keeps them on each client (FedBN-style), so clients neither send nor load them and the
server's copy stays at its initial value. The reference code averaged ``named_parameters()``
only, which left the statistics of whichever client came first: an accident we do not copy.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fedreid.models.reid import is_bn_buffer
from fedreid.strategies.aggregation import weighted_average
from fedreid.strategies.base import ReIDStrategy
from fedreid.strategies.cdw import cdw_weights
from fedreid.strategies.replies import ClientReply

log = logging.getLogger("fedreid")


class FedPav(ReIDStrategy):
    """Weighted mean of the shared tensors; optional CDW weights and server-side KD."""

    def expected_upload(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        keys = self.global_arrays
        if self.cfg.strategy.bn_policy == "local":
            return {k: (v.shape, v.dtype) for k, v in keys.items() if not is_bn_buffer(k)}
        return {k: (v.shape, v.dtype) for k, v in keys.items()}

    def client_weights(
        self, server_round: int, replies: list[ClientReply]
    ) -> tuple[list[ClientReply], list[float]]:
        """Sample-count weights, or CDW distances (invalid ones excluded with a reason)."""
        if not self.cfg.strategy.cdw:
            return replies, [float(r.num_examples) for r in replies]
        kept: list[ClientReply] = []
        for r in replies:
            d = r.metrics.get("cdw_distance")
            if d is None or not math.isfinite(d) or d < 0:
                log.warning(
                    "round %d: excluded %s: invalid cdw_distance %r", server_round, r.name, d
                )
                continue
            kept.append(r)
        if not kept:
            return [], []
        weights = cdw_weights([r.metrics["cdw_distance"] for r in kept])
        if weights is None:
            log.warning(
                "round %d: all cosine distances are ~0; falling back to sample counts", server_round
            )
            self.recorder.server_metric(server_round, {"cdw_fallback": 1})
            return kept, [float(r.num_examples) for r in kept]
        return kept, weights

    def aggregate_replies(
        self, server_round: int, replies: list[ClientReply]
    ) -> dict[str, np.ndarray] | None:
        replies, weights = self.client_weights(server_round, replies)
        if len(replies) < self.cfg.strategy.min_replies:
            log.warning("round %d: too few usable replies; global model kept", server_round)
            return None
        keys = list(self.expected_upload())
        new = dict(self.global_arrays)
        new.update(weighted_average([r.arrays for r in replies], weights, keys))
        for r, w in zip(replies, weights, strict=True):
            self.recorder.client(server_round, r.name, {"agg_weight": w / sum(weights)})
        if self.cfg.strategy.kd and server_round % self.cfg.strategy.kd_every == 0:
            new = self.distill(server_round, new, replies)
        return new

    def distill(
        self, server_round: int, student: dict[str, np.ndarray], teachers: list[ClientReply]
    ) -> dict[str, np.ndarray]:
        """Server-side knowledge distillation (see :mod:`fedreid.strategies.distill`)."""
        from fedreid.strategies.distill import distill_round

        return distill_round(self, server_round, student, teachers)


class LocalTraining(FedPav):
    """``strategy=local``: each client trains alone through the same Flower path.

    Nothing is averaged or exchanged: the server sends an empty ArrayRecord, clients keep
    their whole model in their state and reply with an empty one (0 bytes each way).
    """

    def expected_upload(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {}

    def downlink(self, server_round: int):
        from flwr.app import ArrayRecord

        return ArrayRecord()

    def aggregate_replies(
        self, server_round: int, replies: list[ClientReply]
    ) -> dict[str, np.ndarray] | None:
        return dict(self.global_arrays)
