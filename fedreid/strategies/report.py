"""How a strategy tells the run loop what happened inside its aggregation (weights, votes, KD).

Flower's ``aggregate_train`` returns only arrays and aggregated metrics. Our strategies also
note per-client figures (``agg_weight``, ``sign_agreement``) and server figures (``kd_time_s``,
``agreement``, ``cdw_fallback``) in a :class:`RoundReport`; the loop collects the reports of
every layer of a wrapped strategy (:func:`collect_report`) and records them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundReport:
    """Figures of one round: per client (by Flower node id) and for the server."""

    clients: dict[int, dict[str, float]] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)
    excluded: dict[int, str] = field(default_factory=dict)

    def merge(self, other: RoundReport) -> None:
        for node, metrics in other.clients.items():
            self.clients.setdefault(node, {}).update(metrics)
        self.server.update(other.server)
        self.excluded.update(other.excluded)


class Reporting:
    """Mixin: note figures during a round; the loop takes them with :meth:`take_report`."""

    _report: RoundReport | None = None

    def note_client(self, node_id: int, **metrics: float) -> None:
        """Per-client figures of the current round."""
        self._current_report().clients.setdefault(node_id, {}).update(metrics)

    def note_server(self, **metrics: float) -> None:
        """Server figures of the current round."""
        self._current_report().server.update(metrics)

    def note_excluded(self, node_id: int, reason: str) -> None:
        """A reply the strategy left out of the aggregate, with the reason."""
        self._current_report().excluded[node_id] = reason

    def _current_report(self) -> RoundReport:
        if self._report is None:
            self._report = RoundReport()
        return self._report

    def take_report(self) -> RoundReport:
        """This round's figures; the next round starts empty."""
        report, self._report = self._current_report(), None
        return report


def layers(strategy: Any) -> Iterator[Any]:
    """The strategy and every strategy it wraps (Flower's DP wrappers keep ``.strategy``)."""
    seen: set[int] = set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        yield strategy
        strategy = getattr(strategy, "strategy", None)


def collect_report(strategy: Any) -> RoundReport:
    """The merged reports of every layer that keeps one."""
    report = RoundReport()
    for layer in layers(strategy):
        if isinstance(layer, Reporting):
            report.merge(layer.take_report())
    return report


def find_hook(strategy: Any, name: str) -> Any:
    """The first layer's method ``name`` (e.g. ``expected_reply``), or None."""
    for layer in layers(strategy):
        hook = getattr(layer, name, None)
        if callable(hook):
            return hook
    return None
