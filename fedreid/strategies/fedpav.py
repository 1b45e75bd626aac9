"""FedPav (Federated Partial Averaging), its CDW weighting, and local training, on Flower's classes.

The server averages only the shared part (backbone + bottleneck); each client's classifier
stays with the client. :class:`FedPavMixin` adds what FedPav needs to *any* Flower strategy of
the FedAvg family (FedAvg itself, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, FedAvgM,
FedAdam, FedYogi, FedAdagrad): which keys travel (the BatchNorm policy), what the
client must answer (:mod:`fedreid.protocol`), and, with ``cdw=True``, cosine-distance weights
through Flower's own ``weighted_by_key`` mechanism. :class:`FedPav` is the mixin on FedAvg;
:mod:`fedreid.strategies.registry` builds the other combinations.

BatchNorm running statistics (``bn_policy``): ``average`` (default) averages them like every
other shared tensor, weighted the same way, so the global model is self-consistent; ``local``
keeps them on each client (FedBN-style), so the server neither sends nor receives them. The
``num_batches_tracked`` counters never travel: they do not change a BatchNorm layer with a
momentum, and integer counters cannot be clipped, noised or moved by a server optimiser.
The reference code averaged ``named_parameters()`` only, which left the statistics of
whichever client came first: an accident we do not copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedreid.config import BN_POLICIES
from fedreid.errors import ConfigError
from fedreid.models.reid import is_bn_buffer
from fedreid.protocol import CDW_KEY, DP_KEY, NUM_EXAMPLES, UPLOAD_KEY, Upload
from fedreid.strategies.aggregation import weighted_average
from fedreid.strategies.cdw import CDW_METRIC, cdw_weights, valid_distance
from fedreid.strategies.report import Reporting

log = logging.getLogger("fedreid")

COUNTER_SUFFIX = "num_batches_tracked"


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as ``{key: ndarray}``, keys in record order."""
    return {k: v.numpy() for k, v in record.items()}


def reply_metric(msg: Message, key: str) -> Any:
    """``key`` of the reply's (only) MetricRecord, or None."""
    records = list(msg.content.metric_records.values())
    return records[0].get(key) if records else None


class FedPavMixin(Reporting):
    """FedPav's additions to a Flower FedAvg-family strategy (put it first in the bases).

    Args:
        bn_policy: ``average`` or ``local`` (see the module docstring).
        cdw: weight the aggregate by the clients' ``cdw_distance`` (cosine distance of their
            logits before/after training, in [0, 2]) instead of their sample counts; invalid
            distances exclude the reply, all-zero distances fall back to sample counts.
        report_weights: note each client's share of the aggregate (``agg_weight``); False for
            aggregators that do not weight (median, trimmed mean, Krum, Bulyan).
        client_dp: ``client_fixed``/``client_adaptive`` when a Flower client-side DP wrapper
            surrounds this strategy: clients then apply Flower's matching clipping mod.
        **flower_kwargs: the Flower strategy's own settings (``min_train_nodes``, ``beta``,
            ``server_momentum``, ...).
    """

    def __init__(
        self,
        *,
        bn_policy: str = "average",
        cdw: bool = False,
        report_weights: bool = True,
        client_dp: str = "",
        **flower_kwargs: Any,
    ) -> None:
        if bn_policy not in BN_POLICIES:
            raise ConfigError(f"strategy.bn_policy={bn_policy!r} must be one of {BN_POLICIES}")
        super().__init__(**flower_kwargs)
        self.bn_policy = bn_policy
        self.cdw = cdw
        self.report_weights = report_weights
        self.client_dp = client_dp
        if cdw:
            self.weighted_by_key = CDW_METRIC

    # -- what travels -----------------------------------------------------------------------------
    def travels(self, key: str) -> bool:
        """Whether a shared tensor is exchanged (counters never; BN statistics unless local)."""
        if key.endswith(COUNTER_SUFFIX):
            return False
        return not (self.bn_policy == "local" and is_bn_buffer(key))

    def exchanged(self, arrays: ArrayRecord) -> ArrayRecord:
        """The part of the global arrays that is sent (and must come back), in order."""
        return ArrayRecord({k: v for k, v in arrays.items() if self.travels(k)})

    def _protocol(self, config: ConfigRecord) -> ConfigRecord:
        config[UPLOAD_KEY] = str(Upload.SHARED)
        config[CDW_KEY] = self.cdw
        if self.client_dp:
            config[DP_KEY] = self.client_dp
        return config

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(
            server_round, self.exchanged(arrays), self._protocol(config), grid
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(
            server_round, self.exchanged(arrays), self._protocol(config), grid
        )

    # -- aggregation ------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if not m.has_error()]
        key = self.weighted_by_key
        if self.cdw:
            replies, fallback = self._screen_cdw(server_round, replies)
            if fallback:
                self.weighted_by_key = NUM_EXAMPLES
        try:
            if replies and self.report_weights:
                weights = [float(reply_metric(m, self.weighted_by_key)) for m in replies]
                total = sum(weights)
                for msg, w in zip(replies, weights, strict=True):
                    self.note_client(msg.metadata.src_node_id, agg_weight=w / total)
            return self.aggregate_arrays(server_round, replies)
        finally:
            self.weighted_by_key = key

    def aggregate_arrays(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The Flower base class's own aggregation (mean, median, Krum, FedAdam, ...)."""
        return super().aggregate_train(server_round, replies)

    def _screen_cdw(self, server_round: int, replies: list[Message]) -> tuple[list[Message], bool]:
        """Replies with a valid distance, and whether the weights must fall back to counts."""
        kept = []
        for msg in replies:
            d = reply_metric(msg, CDW_METRIC)
            if not valid_distance(d):
                reason = f"invalid {CDW_METRIC} {d!r} (a cosine distance lies in [0, 2])"
                log.warning(
                    "round %d: excluded node %d: %s", server_round, msg.metadata.src_node_id, reason
                )
                self.note_excluded(msg.metadata.src_node_id, reason)
                continue
            kept.append(msg)
        if kept and cdw_weights([float(reply_metric(m, CDW_METRIC)) for m in kept]) is None:
            log.warning(
                "round %d: all cosine distances are ~0; falling back to sample counts", server_round
            )
            self.note_server(cdw_fallback=1.0)
            return kept, True
        return kept, False

    def summary(self) -> None:
        log.info(
            "FedPav: bn_policy=%s, cdw=%s, weighted by %r",
            self.bn_policy,
            self.cdw,
            getattr(self, "weighted_by_key", None),
        )
        super().summary()


class FedPav(FedPavMixin, FedAvg):
    """FedPav: Flower's FedAvg over the shared keys the clients send (plus the mixin).

    One decision differs from Flower's FedAvg: the weighted mean is accumulated in float64
    and cast back (:func:`~fedreid.strategies.aggregation.weighted_average`), where Flower
    sums float32 products. Sampling, messages, reply checks and the metric aggregation are
    Flower's. (The server optimisers and robust aggregators run Flower's code unchanged.)
    """

    def aggregate_arrays(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [to_numpy(next(iter(c.array_records.values()))) for c in contents]
        weights = [float(reply_metric(m, self.weighted_by_key)) for m in valid]
        arrays = weighted_average(states, weights)
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
        return record, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class LocalTraining(Reporting, FedAvg):
    """Each client trains alone through the same Flower path (the paper's baseline).

    The server sends an empty ArrayRecord and asks for nothing back (0 bytes each way);
    clients keep their whole model in their state. Flower's FedAvg of empty records is empty,
    so the loop's model never changes.
    """

    def _local(self, config: ConfigRecord) -> ConfigRecord:
        config[UPLOAD_KEY] = str(Upload.NONE)
        config[CDW_KEY] = False
        return config

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, ArrayRecord(), self._local(config), grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round, ArrayRecord(), self._local(config), grid)

    def summary(self) -> None:
        log.info("LocalTraining: nothing is exchanged")
        super().summary()
