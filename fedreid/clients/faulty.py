"""Fault injection for reliability tests: a client that misbehaves on purpose.

Selected by the ``fault`` section of the config (off by default). A fault is a *kind*, the
*client* (by name) that shows it and the *rounds* in which it does::

    fault.kind=nan fault.client=ilids fault.rounds=[2,3]          # one kind
    fault.schedule=[1:raise:ilids,2:shape:ilids,3:nan:cuhk03]     # ROUND:KIND:CLIENT entries

Kinds (the server must exclude the reply with a logged reason, or time it out):

============== ================================================================================
``raise``      the ClientApp raises: Flower sends an error reply
``timeout``    the client sleeps ``fault.sleep_s`` (0: ``round_timeout_s + 10``), then
               trains: its reply comes after the server stopped waiting
``nan``        one floating-point tensor of the update is all NaN
``inf``        one floating-point tensor of the update holds +Inf
``shape``      one tensor loses its last row (wrong shape)
``dtype``      one floating-point tensor is sent as int32
``missing_key`` one expected tensor is left out
``extra_key``  an unexpected tensor is added (as if the private head leaked)
``num_examples`` the reply claims ``-num_examples`` training images (impossible)
============== ================================================================================

Attacks that stay within valid shapes and dtypes (a hostile site, not a broken one), with
``u = trained - received`` the honest update:

==================== ==========================================================================
``scale``            sends ``received + 1e3 * u`` (a boosted update)
``negate``           sends ``received - 10 * u`` (reverses and boosts the step)
``signflip``         sends ``received - sign(u) * |u|.mean()`` per tensor
``inflate_cdw``      reports ``cdw_distance = 1e9`` (CDW weights by it)
``inflate_examples`` reports ``num-examples = 10**7`` (sample-count weights)
==================== ==========================================================================

``fault.phase`` picks the message type: ``train`` (default), ``evaluate`` or ``both``. In
evaluation replies (no tensors are uploaded) ``raise`` and ``timeout`` act as above and ``nan``
makes every ranking metric NaN; the other kinds do nothing there.

The wrapper changes nothing but the reply, so the faulty client's data, head and state are
those of a healthy client (a fault in one round does not leak into the next).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedreid.config import (
    EVALUATE_KINDS,
    FAULT_KINDS,
    Config,
    Fault,
    fault_for,
    scheduled_faults,
)
from fedreid.errors import ConfigError, FedReIDError

__all__ = ["FAULT_KINDS", "Fault", "FaultyClient", "InjectedFault", "corrupt", "maybe_faulty"]
__all__ += ["fault_for", "scheduled_faults"]

log = logging.getLogger("fedreid")

EXTRA_KEY = "classifier.weight"


class InjectedFault(FedReIDError, RuntimeError):
    """Raised by a client told to fail (``fault.kind=raise``)."""


def maybe_faulty(cfg: Config, client: Any, server_round: int) -> Any:
    """``client`` itself, or a :class:`FaultyClient` when a fault is scheduled for it now."""
    kind = fault_for(cfg, client.name, server_round)
    if not kind:
        return client
    sleep_s = cfg.fault.sleep_s or float(cfg.round_timeout_s) + 10
    return FaultyClient(client, kind, server_round, sleep_s=sleep_s, phase=cfg.fault.phase)


class FaultyClient:
    """Wraps a client (``fit``/``evaluate`` like :class:`~fedreid.clients.reid_client.ReIDClient`)
    and corrupts its reply in one of the :data:`FAULT_KINDS` ways.

    Args:
        inner: the healthy client.
        kind: one of :data:`FAULT_KINDS`.
        server_round: the round this message belongs to (for the log line).
        sleep_s: how long ``timeout`` sleeps.
        phase: ``train``, ``evaluate`` or ``both``.

    Every other attribute (``name``, ``dataset``, ...) is the inner client's.
    """

    def __init__(
        self, inner: Any, kind: str, server_round: int, sleep_s: float = 30.0, phase: str = "train"
    ) -> None:
        if kind not in FAULT_KINDS:
            raise ConfigError(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        self.inner = inner
        self.kind = kind
        self.server_round = server_round
        self.sleep_s = sleep_s
        self.phase = phase

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _active(self, phase: str) -> bool:
        if self.phase not in (phase, "both"):
            return False
        return phase == "train" or self.kind in EVALUATE_KINDS

    def _before(self, phase: str) -> None:
        log.warning(
            "fault injection: client %s, round %d, %s: %s",
            self.inner.name,
            self.server_round,
            phase,
            self.kind,
        )
        if self.kind == "raise":
            raise InjectedFault(
                f"injected fault: client {self.inner.name} fails in round "
                f"{self.server_round} ({phase})"
            )
        if self.kind == "timeout":
            time.sleep(self.sleep_s)

    def fit(self, shared: Any, server_round: int, evaluate_local: bool = False) -> Any:
        """The inner client's fit, with the reply corrupted."""
        if not self._active("train"):
            return self.inner.fit(shared, server_round, evaluate_local=evaluate_local)
        self._before("train")
        result = self.inner.fit(shared, server_round, evaluate_local=evaluate_local)
        if self.kind in ATTACKS:
            return attack(result, shared, self.kind)
        if self.kind == "num_examples":
            return replace(result, num_examples=-max(1, int(result.num_examples)))
        if hasattr(result, "shared"):
            return replace(result, shared=corrupt(result.shared, self.kind))
        if hasattr(result, "arrays"):  # mask-bit clients reply with an ArrayRecord
            from flwr.app import Array, ArrayRecord

            arrays = {k: v.numpy() for k, v in result.arrays.items()}
            bad = corrupt({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, self.kind)
            record = ArrayRecord(
                array_dict={k: Array(np.asarray(v.numpy(), order="C")) for k, v in bad.items()}
            )
            return replace(result, arrays=record)
        return result

    def evaluate(self, shared: Any) -> dict[str, float]:
        """The inner client's evaluation; ``raise``/``timeout`` apply, ``nan`` NaNs the metrics."""
        if not self._active("evaluate"):
            return self.inner.evaluate(shared)
        self._before("evaluate")
        metrics = self.inner.evaluate(shared)
        if self.kind == "nan":
            return {k: float("nan") for k in metrics}
        return metrics


ATTACKS = ("scale", "negate", "signflip", "inflate_cdw", "inflate_examples")


def attack(result: Any, received: dict[str, torch.Tensor] | None, kind: str) -> Any:
    """A hostile reply of valid shape: the update scaled, reversed or sign-flipped, or an
    inflated aggregation weight (see the module docstring)."""
    if kind == "inflate_cdw":
        return replace(result, metrics={**result.metrics, "cdw_distance": 1e9})
    if kind == "inflate_examples":
        return replace(result, num_examples=10**7)
    if not hasattr(result, "shared") or not received:
        return result
    out = {}
    for key, value in result.shared.items():
        base = received[key].to(value.dtype)
        if not value.is_floating_point():
            out[key] = value
            continue
        update = value - base
        if kind == "scale":
            out[key] = base + 1e3 * update
        elif kind == "negate":
            out[key] = base - 10.0 * update
        else:  # signflip
            out[key] = base - torch.sign(update) * update.abs().mean()
    return replace(result, shared=out)


def corrupt(tensors: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """A copy of an update with one ``kind`` fault (tensor kinds only; others: unchanged)."""
    out = dict(tensors)
    if not out:
        if kind == "extra_key":
            out[EXTRA_KEY] = torch.zeros(2, 2)
        return out
    floats = [k for k, v in out.items() if v.is_floating_point() and v.numel() > 0]
    key = floats[0] if floats else next(iter(out))
    if kind == "nan":
        out[key] = torch.full_like(out[key], float("nan"))
    elif kind == "inf":
        bad = out[key].clone()
        bad.view(-1)[0] = float("inf")
        out[key] = bad
    elif kind == "shape":
        big = max(out, key=lambda k: out[k].dim())
        t = out[big]
        out[big] = t[:-1].clone() if t.dim() > 0 and t.shape[0] > 1 else torch.zeros(3, 3)
    elif kind == "dtype":
        out[key] = out[key].to(torch.int32)
    elif kind == "missing_key":
        del out[key]
    elif kind == "extra_key":
        out[EXTRA_KEY] = torch.zeros(2, 2)
    return out
