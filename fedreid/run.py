"""The run loop: drives any Flower ``Strategy`` through its public methods, round by round.

Flower's ``Strategy.start`` runs rounds and nothing else. :class:`RunLoop` calls the same
public methods (``configure_train`` -> push/pull -> ``aggregate_train`` ->
``configure_evaluate`` -> push/pull -> ``aggregate_evaluate`` -> ``evaluate_fn``) and adds
what a ReID benchmark needs around them:

* the model state lives here, not in the strategy: the global arrays are handed to the
  strategy as ``arrays`` every round, and its (possibly partial) aggregate is merged back;
* every reply is checked before the strategy sees it (:mod:`fedreid.strategies.replies`), so
  one malformed update is excluded with a logged reason instead of breaking Flower's checks;
* per-client recording (metrics, bytes each way, the strategy's :class:`RoundReport`);
* evaluation every ``eval_every`` rounds (and at the last), progress lines with ETA, phase
  timings, waits bounded by ``round_timeout_s``;
* an atomic checkpoint after every round (the arrays, the strategy's optimiser/clipping state,
  the RNG states and the results so far), loaded with ``weights_only=True``, so a run resumes
  at round k exactly, whatever strategy or Flower wrapper it runs.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedreid.errors import ConfigError, FedReIDError, UpdateError
from fedreid.protocol import (
    CONFIG_KEY,
    EVAL_LOCAL_KEY,
    EVALUATE_METRICS,
    NUM_EXAMPLES,
    RUN_KEY,
    TRAIN_METRICS,
)
from fedreid.results import RunRecorder, atomic_torch_save
from fedreid.strategies.replies import ClientReply, message_bytes, parse_reply
from fedreid.strategies.report import collect_report, find_hook, layers

log = logging.getLogger("fedreid")

Arrays = dict[str, np.ndarray]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
"""Flower's server-side ``evaluate_fn(server_round, arrays)``."""

BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
"""Key suffixes of BatchNorm running statistics (not weights: left out of the norm screen)."""

STATE_ATTRS = ("current_arrays", "m_t", "v_t", "momentum_vector", "clipping_norm")
"""Attributes of Flower's strategies and wrappers that carry state from round to round
(FedOpt's moments, FedAvgM's momentum, adaptive DP's clipping norm): checkpointed."""


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def to_numpy(record: ArrayRecord) -> Arrays:
    """An ArrayRecord as ``{key: ndarray}``, keys in record order."""
    return {k: v.numpy() for k, v in record.items()}


def to_record(arrays: Arrays) -> ArrayRecord:
    """``{key: ndarray}`` as an ArrayRecord (keys and order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def merge(global_arrays: Arrays, update: Arrays) -> Arrays:
    """The global arrays with ``update``'s keys replaced, cast to the global dtypes.

    Raises:
        UpdateError: an unknown key, a changed shape or a non-finite value.
    """
    out = dict(global_arrays)
    for key, value in update.items():
        if key not in global_arrays:
            raise UpdateError(f"the aggregate holds unknown key {key!r}")
        ref = global_arrays[key]
        value = np.asarray(value)
        if value.shape != ref.shape:
            raise UpdateError(f"the aggregate's {key} has shape {value.shape}, not {ref.shape}")
        if np.issubdtype(ref.dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
            value = np.rint(value)
        cast = value.astype(ref.dtype, copy=False)
        if cast.dtype.kind == "f" and not np.all(np.isfinite(cast)):
            raise UpdateError(f"the aggregate's {key} is not finite")
        out[key] = cast
    return out


# -- checkpointable strategy state ---------------------------------------------------------------
def _pack(value: Any) -> Any:
    """Strategy state as tensors, dicts, lists and numbers (loadable with weights_only=True)."""
    if isinstance(value, ArrayRecord):
        return {
            "__arrayrecord__": {k: torch.from_numpy(v.numpy().copy()) for k, v in value.items()}
        }
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v) for v in value]
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict) and "__arrayrecord__" in value:
        return to_record({k: v.numpy() for k, v in value["__arrayrecord__"].items()})
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v) for v in value]
    return value


def strategy_state(strategy: Strategy) -> list[dict[str, Any]]:
    """The round-to-round state of every layer of a (wrapped) strategy."""
    return [
        {a: _pack(getattr(layer, a)) for a in STATE_ATTRS if hasattr(layer, a)}
        for layer in layers(strategy)
    ]


def load_strategy_state(strategy: Strategy, state: list[dict[str, Any]]) -> None:
    """Inverse of :func:`strategy_state` (the same composition must be rebuilt first)."""
    chain = list(layers(strategy))
    if len(chain) != len(state):
        raise ConfigError("the checkpoint was made by another strategy composition")
    for layer, attrs in zip(chain, state, strict=True):
        for name, value in attrs.items():
            setattr(layer, name, _unpack(value))


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.array(keys)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


STOP = threading.Event()
"""Set (by the SIGINT handler of :func:`fedreid.simulation.simulate`) to stop the run: the loop
leaves its current wait within a fraction of a second and the run ends ``interrupted``."""


class RunInterrupted(FedReIDError):
    """The run was asked to stop (Ctrl-C); its last complete round is checkpointed."""


class RoundFailed(FedReIDError):
    """A round had fewer valid replies than ``strategy.min_replies`` (``trust.on_too_few=fail``)."""


# -- the loop --------------------------------------------------------------------
@dataclass
class LoopSettings:
    """How the loop runs (from the config's top level)."""

    num_rounds: int
    eval_every: int = 1
    eval_local: str = "every"  # rank the clients' pre-aggregation models: every | last | off
    round_timeout_s: float = 3600.0
    node_wait_s: float = 120.0
    min_replies: int = 1
    resume: bool = False
    config_json: str = ""  # the run config shipped to clients (CONFIG_KEY); "" = none
    seed: int = 0  # seeds the server's RNGs (DP noise, sampling) at the start of a fresh run
    # defences (config section ``trust``)
    strict_metrics: bool = True
    norm_screen: float = 5.0
    pin_examples: bool = True
    pin_tolerance: float = 0.01
    max_bytes: int = 0
    on_too_few: str = "fail"
    known_examples: dict[str, int] = field(default_factory=dict)  # name -> training-set size
    # optimizer steps of a client with n examples (the norm screen's unit); default: n
    local_steps: Callable[[int], int] = lambda n: n


class RunLoop:
    """Runs ``strategy`` for ``settings.num_rounds`` rounds on ``grid``.

    Args:
        strategy: any Flower strategy (ours, Flower's, or a wrapper such as DP).
        grid: Flower's Grid (simulation or deployment).
        recorder: where per-client metrics, results.json and checkpoints go.
        settings: rounds, evaluation cadence, timeouts, resume.
        evaluate_fn: Flower-style server-side evaluation, called after every round.
    """

    def __init__(
        self,
        strategy: Strategy,
        grid: Grid,
        recorder: RunRecorder,
        settings: LoopSettings,
        evaluate_fn: EvaluateFn | None = None,
    ) -> None:
        self.strategy = strategy
        self.grid = grid
        self.recorder = recorder
        self.settings = settings
        self.evaluate_fn = evaluate_fn
        self.arrays: Arrays = {}
        self.checkpoint_path: Path = recorder.output_dir / "checkpoint.pt"
        self._names: dict[int, str] = {}
        self._owners: dict[str, int] = {}  # client name -> the node that claimed it first
        # by client name: node ids change when a run resumes in a new process
        self._pinned: dict[tuple[str, str], int] = {}  # (phase, name) -> num-examples
        self._valid_rounds: dict[str, int] = {}  # name -> training rounds with a valid reply
        self._sampled: set[int] = set()  # nodes asked to train at least once
        self._first_round = 1
        self._elapsed_at_start = 0.0
        self.run_id = ""  # set at a fresh start, restored on resume
        self._min_nodes: dict[tuple[int, str], int] = {}  # the strategies' own node minimums

    # -- public --------------------------------------------------------------------------------
    def run(self, initial: Callable[[], tuple[ArrayRecord, dict[str, float]]]) -> ArrayRecord:
        """Run (or resume) every round; returns the final global arrays.

        Args:
            initial: builds the initial arrays and first-round server metrics; not called
                when resuming from a checkpoint.
        """
        first = 1
        if self.settings.resume and self.checkpoint_path.is_file():
            first = self.load_checkpoint(self.checkpoint_path) + 1
            log.info("resuming after round %d from %s", first - 1, self.checkpoint_path)
        else:
            # a fresh run's server-side randomness (Flower's DP noise draws from numpy's global
            # RNG, sampling from Python's) depends on the seed only, not on what ran before
            self.run_id = uuid.uuid4().hex[:12]
            random.seed(self.settings.seed)
            np.random.seed(self.settings.seed % 2**32)
            torch.manual_seed(self.settings.seed)
            record, metrics = initial()
            self.arrays = to_numpy(record)
            if metrics:
                self.recorder.server_metric(1, metrics)
        self._first_round = first
        self._elapsed_at_start = self.recorder.elapsed()
        log.info("%s: rounds %d..%d", type(self.strategy).__name__, first, self.settings.num_rounds)
        self.strategy.summary()
        for rnd in range(first, self.settings.num_rounds + 1):
            self._check_stop(rnd)
            self.round(rnd)
            self.recorder.end_round(rnd)
            self.save_checkpoint(rnd)
        return to_record(self.arrays)

    def is_eval_round(self, server_round: int) -> bool:
        s = self.settings
        return server_round % s.eval_every == 0 or server_round == s.num_rounds

    def is_local_eval_round(self, server_round: int) -> bool:
        """Do the clients rank their trained models before aggregation this round?"""
        local = self.settings.eval_local
        if local == "last":
            return server_round == self.settings.num_rounds
        return local == "every" and self.is_eval_round(server_round)

    # -- one round -----------------------------------------------------------------------------
    def _config(self, server_round: int, train: bool) -> ConfigRecord:
        config = ConfigRecord({RUN_KEY: self.run_id})
        if self.settings.config_json:
            config[CONFIG_KEY] = self.settings.config_json
        if train:
            config[EVAL_LOCAL_KEY] = self.is_local_eval_round(server_round)
        return config

    def handed(self) -> ArrayRecord:
        """The global arrays the strategy is given: the part that travels, when the strategy
        says (FedPav's ``exchanged``), so wrappers such as Flower's DP clipping see exactly
        what the clients receive and return."""
        record = to_record(self.arrays)
        hook = find_hook(self.strategy, "exchanged")
        return hook(record) if hook is not None else record

    NODE_MINIMUMS = ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")

    def wait_for_nodes(self, rnd: int) -> None:
        """Wait at most ``node_wait_s`` for the nodes the strategy wants, then go on with those
        online (Flower's sampling would otherwise wait forever for a dead node)."""
        if not self._min_nodes:
            for layer in layers(self.strategy):
                for attr in self.NODE_MINIMUMS:
                    if isinstance(getattr(layer, attr, None), int):
                        self._min_nodes[(id(layer), attr)] = getattr(layer, attr)
        need = max(self._min_nodes.values(), default=0)
        deadline = time.time() + self.settings.node_wait_s
        online = len(list(self.grid.get_node_ids()))
        while online < need and time.time() < deadline:
            self._check_stop(rnd)
            time.sleep(0.5)
            online = len(list(self.grid.get_node_ids()))
        if online < need:
            if online < self.settings.min_replies:
                raise RoundFailed(
                    f"round {rnd}: {online} node(s) online after {self.settings.node_wait_s:g}s, "
                    f"fewer than strategy.min_replies={self.settings.min_replies}"
                )
            log.warning(
                "round %d: %d of %d nodes online after %.0fs; the round goes on without the others",
                rnd,
                online,
                need,
                self.settings.node_wait_s,
            )
            self.recorder.server_metric(rnd, {"missing_nodes": need - online})
        for layer in layers(self.strategy):  # a node that comes back is sampled again
            for attr in self.NODE_MINIMUMS:
                wanted = self._min_nodes.get((id(layer), attr))
                if wanted is not None:
                    setattr(layer, attr, min(wanted, max(online, 1)))

    def round(self, rnd: int) -> None:
        """Train, aggregate, merge, record; then evaluate if it is an evaluation round."""
        self.wait_for_nodes(rnd)
        t0 = time.perf_counter()
        messages = list(
            self.strategy.configure_train(rnd, self.handed(), self._config(rnd, True), self.grid)
        )
        sent = {m.metadata.dst_node_id: m for m in messages}
        self._sampled.update(sent)
        replies = self._exchange(messages, rnd, "train")
        t1 = time.perf_counter()
        valid = self._validate(rnd, replies, sent, train=True)
        for r in valid:
            down = sent.get(r.node_id)
            self.recorder.client(
                rnd,
                r.name,
                {
                    **{k: v for k, v in r.metrics.items() if k != NUM_EXAMPLES},
                    "num_examples": r.num_examples,
                    "bytes_up": r.bytes_up,
                    "bytes_up_arrays": _array_bytes(r.message) if r.message is not None else 0,
                    "bytes_down": message_bytes(down) if down is not None else 0,
                    "bytes_down_arrays": _array_bytes(down) if down is not None else 0,
                },
            )
        self._aggregate(rnd, valid)
        t2 = time.perf_counter()
        self._evaluate(rnd)
        self.recorder.server_metric(
            rnd,
            {
                "train_phase_s": t1 - t0,
                "aggregate_s": t2 - t1,
                "evaluate_phase_s": time.perf_counter() - t2,
            },
        )

    def _aggregate(self, rnd: int, valid: list[ClientReply]) -> None:
        if len(valid) < self.settings.min_replies:
            reason = (
                f"round {rnd}: {len(valid)} valid replies < strategy.min_replies="
                f"{self.settings.min_replies}"
            )
            if self.settings.on_too_few == "fail":
                self.recorder.server_metric(rnd, {"failed": 1})
                raise RoundFailed(f"{reason} (trust.on_too_few=skip would skip such rounds)")
            log.warning("%s; round skipped, global model kept", reason)
            self.recorder.server_metric(rnd, {"skipped": 1})
            return
        try:
            new, _metrics = self.strategy.aggregate_train(
                rnd, _consistent([r.message for r in valid if r.message is not None])
            )
            self._record_report(rnd)
            if new is None:
                log.warning("round %d: the strategy produced no aggregate; model kept", rnd)
                self.recorder.server_metric(rnd, {"skipped": 1})
                return
            self.arrays = merge(self.arrays, to_numpy(new))
        except Exception as err:  # an aggregate we cannot use must not end or corrupt the run
            log.warning("round %d: aggregation failed (%s); global model kept", rnd, err)
            self._record_report(rnd)
            self.recorder.server_metric(rnd, {"skipped": 1, "aggregation_failed": 1})

    def _record_report(self, rnd: int) -> None:
        report = collect_report(self.strategy)
        for node, metrics in report.clients.items():
            if node in self._names:
                self.recorder.client(rnd, self._names[node], metrics)
        if report.server:
            self.recorder.server_metric(rnd, report.server)
        for node, reason in report.excluded.items():
            self._count_excluded(rnd)
            log.warning(
                "round %d: %s excluded by the strategy: %s",
                rnd,
                self._names.get(node, node),
                reason,
            )

    def _evaluate(self, rnd: int) -> None:
        if self.is_eval_round(rnd):
            self.wait_for_nodes(rnd)  # a node may have died during training
            messages = list(
                self.strategy.configure_evaluate(
                    rnd, self.handed(), self._config(rnd, False), self.grid
                )
            )
            replies = self._exchange(messages, rnd, "evaluate")
            valid = self._validate(rnd, replies, {}, train=False)
            for r in valid:
                self.recorder.client(
                    rnd, r.name, {k: v for k, v in r.metrics.items() if k != NUM_EXAMPLES}
                )
            if valid:
                self._log_evaluation(rnd, valid)
                try:
                    self.strategy.aggregate_evaluate(
                        rnd, _consistent([r.message for r in valid if r.message is not None])
                    )
                except Exception as err:
                    log.warning("round %d: aggregate_evaluate failed: %s", rnd, err)
        if self.evaluate_fn is not None:
            result = self.evaluate_fn(rnd, to_record(self.arrays))
            if result is not None:
                self.recorder.server_metric(
                    rnd, {f"server_{k}": float(v) for k, v in result.items()}
                )

    def _log_evaluation(self, rnd: int, valid: list[ClientReply]) -> None:
        """Mean over clients (unweighted), as the README's tables report it."""
        keys = ("accuracy",) if "accuracy" in valid[0].metrics else ("rank1", "mAP")
        means = {k: float(np.mean([r.metrics.get(k, np.nan) for r in valid])) for k in keys}
        text = " ".join(f"{k} {100 * v:.1f}%" for k, v in means.items())
        log.info("round %d: mean over %d clients: %s", rnd, len(valid), text)

    # -- replies -------------------------------------------------------------------------------
    def _validate(
        self, rnd: int, replies: list[Message], sent: dict[int, Message], train: bool
    ) -> list[ClientReply]:
        """Per-reply checks, then the run-level ones (names, pinned counts, norm screen)."""
        s = self.settings
        expected_hook = find_hook(self.strategy, "expected_reply")
        allowed = (TRAIN_METRICS if train else EVALUATE_METRICS) if s.strict_metrics else None
        valid: list[ClientReply] = []
        specs: dict[int, dict[str, tuple[tuple[int, ...], Any]]] = {}  # one per sent record
        for msg in replies:
            expected = None
            if train:
                out = sent.get(msg.metadata.src_node_id)
                record = _array_record(out) if out is not None else ArrayRecord()
                if id(record) not in specs:  # the server's own arrays: their header suffices
                    specs[id(record)] = (
                        expected_hook(record) if expected_hook is not None else _spec(record)
                    )
                expected = specs[id(record)]
            try:
                reply = parse_reply(msg, expected, allowed_metrics=allowed, max_bytes=s.max_bytes)
                self._check_identity(reply, "train" if train else "evaluate")
            except UpdateError as err:
                self._exclude(rnd, f"excluded reply: {err}")
                continue
            valid.append(reply)
        # arrival order is timing: sort, so sums (and so the model) are reproducible
        valid.sort(key=lambda r: (r.name, r.node_id))
        if train:
            valid = self._screen_norms(rnd, valid, sent)
            for reply in valid:
                self._valid_rounds[reply.name] = self._valid_rounds.get(reply.name, 0) + 1
        return valid

    def _check_identity(self, reply: ClientReply, phase: str) -> None:
        """One name per node for the whole run; a node's sample count stays what it said."""
        owner = self._owners.get(reply.name)
        if owner is not None and owner != reply.node_id:
            raise UpdateError(f"{reply.name}: name already taken by node {owner}")
        known = self._names.get(reply.node_id)
        if known is not None and known != reply.name:
            raise UpdateError(f"{reply.name}: node {reply.node_id} answered as {known!r} before")
        if self.settings.pin_examples:
            known = self.settings.known_examples.get(reply.name) if phase == "train" else None
            pinned = self._pinned.get((phase, reply.name), known)
            tolerance = self.settings.pin_tolerance * (pinned or 0)
            if pinned is not None and abs(reply.num_examples - pinned) > tolerance:
                raise UpdateError(
                    f"{reply.name}: num-examples {reply.num_examples} in {phase}, expected "
                    f"{pinned} (its first report or the scenario's count; trust.pin_examples)"
                )
            self._pinned.setdefault((phase, reply.name), reply.num_examples)
        self._owners.setdefault(reply.name, reply.node_id)
        self._names[reply.node_id] = reply.name

    def _screen_norms(
        self, rnd: int, valid: list[ClientReply], sent: dict[int, Message]
    ) -> list[ClientReply]:
        """Drop updates far larger than the round's median (a scaled-up attack).

        The screened quantity is the update norm over the weights (BatchNorm running
        statistics left out: they are not weights and move with the data) per local
        optimizer step, the steps computed by the server from the client's (pinned) sample
        count and the training schedule (``settings.local_steps``): an honest client's update
        grows with its number of steps, so raw norms would single out the largest honest
        clients, and norms per example would let a large client boost its update when a
        step cap (``train.max_batches``) makes every client take the same steps.
        """
        factor = self.settings.norm_screen
        floating = [
            r for r in valid if r.arrays and all(a.dtype.kind == "f" for a in r.arrays.values())
        ]
        if factor <= 0 or len(floating) < 3:
            return valid
        norms, scaled = {}, {}
        bases: dict[int, Arrays] = {}  # the sent arrays, decoded once per distinct record
        for r in floating:
            base: Arrays = {}
            if r.node_id in sent:
                record = _array_record(sent[r.node_id])
                if id(record) not in bases:
                    bases[id(record)] = to_numpy(record)
                base = bases[id(record)]
            total = 0.0
            for key, value in r.arrays.items():
                if key.endswith(BN_STATISTICS):
                    continue
                # float32 difference, squares summed in float64 (pairwise): 1e-8 relative to
                # the float64 product and 10x faster, without BLAS threads on a busy server
                total += float(np.square(value - base.get(key, 0.0)).sum(dtype=np.float64))
            norms[r.node_id] = math.sqrt(total)
            scaled[r.node_id] = norms[r.node_id] / max(self.settings.local_steps(r.num_examples), 1)
        median = float(np.median(list(scaled.values())))
        kept = []
        for r in valid:
            value = scaled.get(r.node_id)
            if value is not None and median > 0 and value > factor * median:
                self._exclude(
                    rnd,
                    f"excluded reply: {r.name}: update norm per local step {value:.4g} > "
                    f"{factor:g} x the round's median {median:.4g} (trust.norm_screen)",
                )
                continue
            if value is not None:
                self.recorder.client(rnd, r.name, {"update_norm": norms[r.node_id]})
            kept.append(r)
        return kept

    def _exclude(self, rnd: int, reason: str) -> None:
        log.warning("round %d: %s", rnd, reason)
        self._count_excluded(rnd)

    def failed_clients(self) -> list[str]:
        """Clients (by name, else node id) that never sent a valid training reply."""
        names = {self._names.get(n, f"node-{n}") for n in self._sampled}
        names |= set(self._valid_rounds)
        return sorted(n for n in names if self._valid_rounds.get(n, 0) == 0)

    def _count_excluded(self, rnd: int) -> None:
        server = self.recorder._round(rnd)["server"]
        self.recorder.server_metric(rnd, {"excluded": 1 + server.get("excluded", 0)})

    def _exchange(self, messages: list[Message], rnd: int, phase: str) -> list[Message]:
        """Push messages, then pull replies as they come, logging progress and ETA."""
        if not messages:
            return []
        timeout = self.settings.round_timeout_s
        ids = [i for i in self.grid.push_messages(messages) if i]
        pending, replies = set(ids), []
        start = time.time()
        while pending and time.time() - start < timeout:
            self._check_stop(rnd)
            got = list(self.grid.pull_messages(list(pending)))
            for msg in got:
                pending.discard(msg.metadata.reply_to_message_id)
                replies.append(msg)
            if got:
                self._progress(rnd, phase, len(replies), len(ids))
            if pending:
                time.sleep(0.2)
        if pending:
            log.warning(
                "round %d %s: %d client(s) timed out after %.0fs", rnd, phase, len(pending), timeout
            )
            self.recorder.server_metric(rnd, {f"{phase}_timeouts": len(pending)})
        return replies

    def _check_stop(self, rnd: int) -> None:
        if STOP.is_set():
            raise RunInterrupted(
                f"interrupted in round {rnd}; resume with resume=true (the last complete round "
                "is checkpointed)"
            )

    def _progress(self, rnd: int, phase: str, done: int, total: int) -> None:
        elapsed = self.recorder.elapsed()
        span = elapsed - self._elapsed_at_start
        completed = rnd - self._first_round + done / max(1, total)
        remaining = self.settings.num_rounds - self._first_round + 1 - completed
        eta = span / completed * remaining if completed > 0 else 0.0
        log.info(
            "round %d/%d %s: %d/%d clients done | elapsed %s | ETA %s",
            rnd,
            self.settings.num_rounds,
            phase,
            done,
            total,
            _fmt(elapsed),
            _fmt(eta),
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, server_round: int) -> None:
        """Atomically save everything needed to continue after ``server_round``."""
        atomic_torch_save(
            {
                "round": server_round,
                "run_id": self.run_id,
                "arrays": {k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()},
                "strategy": strategy_state(self.strategy),
                "rng": _rng_state(),
                "results": self.recorder.payload("running"),
                "trust": {  # by name: a resumed run's nodes get new ids
                    "pinned": [[phase, name, n] for (phase, name), n in self._pinned.items()],
                    "valid_rounds": dict(self._valid_rounds),
                },
            },
            self.checkpoint_path,
        )

    def load_checkpoint(self, path: Path) -> int:
        """Restore from ``path`` (no code runs from it); returns the last completed round."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            self.arrays = {k: v.numpy() for k, v in ckpt["arrays"].items()}
            self.run_id = str(ckpt.get("run_id", ""))
            load_strategy_state(self.strategy, ckpt["strategy"])
            _set_rng_state(ckpt["rng"])
            self.recorder.load(ckpt["results"])
            trust = ckpt.get("trust", {})
            self._pinned = {(str(p), str(n)): int(c) for p, n, c in trust.get("pinned", [])}
            self._valid_rounds = {str(k): int(v) for k, v in trust.get("valid_rounds", {}).items()}
            return int(ckpt["round"])
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"cannot resume from {path}: {str(err).splitlines()[0]}") from err


def _array_record(msg: Message) -> ArrayRecord:
    records = list(msg.content.array_records.values())
    return records[0] if records else ArrayRecord()


def _spec(record: ArrayRecord) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{key: (shape, dtype)}`` of a record, from the arrays' headers (nothing decoded)."""
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in record.items()}


def _array_bytes(msg: Message) -> int:
    return sum(int(r.count_bytes()) for r in msg.content.array_records.values())


def _consistent(messages: Iterable[Message]) -> list[Message]:
    """Replies whose MetricRecords hold only the metric keys all of them share.

    Flower's strategies require identical metric keys across replies; a key only some clients
    report (e.g. a fault's extra metric) is dropped here, not fatal there.
    """
    messages = list(messages)
    if len(messages) < 2:
        return messages
    keysets = [set(_metric_record(m)) for m in messages]
    common = set.intersection(*keysets)
    for msg, keys in zip(messages, keysets, strict=True):
        if keys != common:
            name, record = next(iter(msg.content.metric_records.items()))
            msg.content.metric_records[name] = MetricRecord(
                {k: v for k, v in record.items() if k in common}
            )
    return messages


def _metric_record(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))
