"""Server-side knowledge distillation as a strategy wrapper that composes with any aggregator.

:class:`ServerDistillation` wraps a Flower strategy the way Flower's DifferentialPrivacy*
wrappers do: it passes every call through and, every ``every`` rounds, distils the wrapped
strategy's aggregate towards this round's client models (:func:`fedreid.strategies.distill.
distill_round`) before handing it back. The teachers are the arrays the clients uploaded, so
KD adds no client traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedreid.errors import ConfigError
from fedreid.strategies.report import Reporting

log = logging.getLogger("fedreid")

Arrays = dict[str, np.ndarray]
DistillFn = Callable[[int, Arrays, list[Arrays]], tuple[Arrays, dict[str, float]]]
"""``(server_round, student, teachers) -> (distilled student, server metrics)``."""


def _numpy(record: ArrayRecord) -> Arrays:
    return {k: v.numpy() for k, v in record.items()}


def _only_record(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


class ServerDistillation(Reporting, Strategy):
    """Distil the wrapped strategy's aggregate every ``every`` rounds.

    Args:
        strategy: any Flower strategy whose training replies carry the clients' models.
        distill: the distillation step (settings bound, e.g. with :func:`functools.partial`).
        every: distil in rounds divisible by this (the reference: 10).
    """

    def __init__(self, strategy: Strategy, distill: DistillFn, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ConfigError(f"strategy.kd_every must be >= 1, got {every}")
        self.strategy = strategy
        self.distill = distill
        self.every = every
        self.current_arrays: ArrayRecord | None = None

    def summary(self) -> None:
        log.info("ServerDistillation: every %d rounds, wrapping:", self.every)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        distil = server_round % self.every == 0 and self.current_arrays is not None
        # Take the teachers first: Flower's aggregators may consume the replies' arrays
        # (FedMedian pops them to save memory).
        uploads = (
            [
                {k: np.array(v.numpy()) for k, v in _only_record(m).items()}
                for m in replies
                if not m.has_error() and len(m.content.array_records) == 1
            ]
            if distil
            else []
        )
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None or not distil or self.current_arrays is None:
            return arrays, metrics
        current = _numpy(self.current_arrays)
        student = {**current, **_numpy(arrays)}
        teachers = [{**current, **upload} for upload in uploads]
        distilled, kd_metrics = self.distill(server_round, student, teachers)
        self.note_server(**kd_metrics)
        out = ArrayRecord({k: Array(np.ascontiguousarray(distilled[k])) for k in arrays})
        return out, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
