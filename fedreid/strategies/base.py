"""The shared server loop of every fedreid strategy, on Flower's Message API.

:class:`ReIDStrategy` subclasses Flower's ``FedAvg`` and keeps its sampling and message
construction; it overrides ``start`` to add what a ReID benchmark needs around Flower's round
loop: the run config shipped to clients, evaluation every k rounds, per-client metrics and
message sizes, progress lines with ETA, and an atomic checkpoint after every round (resume).
Subclasses decide what is sent and how replies are aggregated.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedreid.config import Config
from fedreid.errors import UpdateError
from fedreid.results import RunRecorder, atomic_torch_save
from fedreid.strategies.replies import ClientReply, parse_reply

log = logging.getLogger("fedreid")

CONFIG_KEY = "fedreid-config"


def to_numpy_dict(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as ``{key: ndarray}``, keys in record order."""
    return {k: v.numpy() for k, v in arrays.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """``{key: ndarray}`` as an ArrayRecord (keys kept)."""
    return ArrayRecord(array_dict={k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ReIDStrategy(FedAvg):
    """Base strategy: every client trains every round; evaluation every ``eval_every`` rounds.

    Args:
        cfg: the run config (shipped to clients in every message).
        recorder: where per-client metrics and checkpoints go.
        num_clients: clients expected (all are sampled every round, as in FedReID).
    """

    def __init__(self, cfg: Config, recorder: RunRecorder, num_clients: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=num_clients,
            min_evaluate_nodes=num_clients,
            min_available_nodes=num_clients,
        )
        self.cfg = cfg
        self.recorder = recorder
        self.num_clients = num_clients
        self.global_arrays: dict[str, np.ndarray] = {}
        self._config_json = cfg.to_json()
        self._bytes_down: dict[int, int] = {}
        self.checkpoint_path = recorder.output_dir / "checkpoint.pt"

    # -- hooks for subclasses ---------------------------------------------------------------
    def expected_upload(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Keys, shapes and dtypes every training reply must carry."""
        return {k: (v.shape, v.dtype) for k, v in self.global_arrays.items()}

    def downlink(self, server_round: int) -> ArrayRecord:
        """What the clients receive for training this round (default: the global arrays)."""
        return to_record(self.global_arrays)

    def aggregate_replies(
        self, server_round: int, replies: list[ClientReply]
    ) -> dict[str, np.ndarray] | None:
        """New global arrays from the valid replies; None keeps the current model."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Strategy state saved in the per-round checkpoint (subclasses extend)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

    def extra_train_config(self, server_round: int) -> dict[str, Any]:
        """Per-round config values added to the training messages."""
        return {}

    # -- Flower Strategy API ------------------------------------------------------------------
    def is_eval_round(self, server_round: int) -> bool:
        return server_round % self.cfg.eval_every == 0 or server_round == self.cfg.num_rounds

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[CONFIG_KEY] = self._config_json
        config["evaluate-local"] = self.is_eval_round(server_round)
        for k, v in self.extra_train_config(server_round).items():
            config[k] = v
        down = self.downlink(server_round)
        messages = list(super().configure_train(server_round, down, config, grid))
        size = int(down.count_bytes())
        self._bytes_down = {m.metadata.dst_node_id: size for m in messages}
        return messages

    def _valid(
        self, server_round: int, replies: Iterable[Message], expected: dict | None
    ) -> list[ClientReply]:
        valid: list[ClientReply] = []
        for msg in replies:
            try:
                valid.append(parse_reply(msg, expected))
            except UpdateError as err:
                log.warning("round %d: excluded reply: %s", server_round, err)
                self.recorder.server_metric(
                    server_round,
                    {
                        "excluded": 1
                        + self.recorder._round(server_round)["server"].get("excluded", 0)
                    },
                )
        return valid

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self._valid(server_round, replies, self.expected_upload())
        for r in valid:
            self.recorder.client(
                server_round,
                r.name,
                {
                    **{k: v for k, v in r.metrics.items() if k != "num-examples"},
                    "num_examples": r.num_examples,
                    "bytes_up": r.bytes_up,
                    "bytes_down": self._bytes_down.get(r.node_id, 0),
                },
            )
        if len(valid) < self.cfg.strategy.min_replies:
            log.warning(
                "round %d: %d valid replies < strategy.min_replies=%d; round skipped, "
                "global model kept",
                server_round,
                len(valid),
                self.cfg.strategy.min_replies,
            )
            self.recorder.server_metric(server_round, {"skipped": 1})
            return None, None
        new = self.aggregate_replies(server_round, valid)
        if new is None:
            return None, None
        self.global_arrays = new
        total = sum(r.num_examples for r in valid)
        keys = set.intersection(*(set(r.metrics) for r in valid)) - {"num-examples"}
        agg = {k: sum(r.metrics[k] * r.num_examples for r in valid) / total for k in sorted(keys)}
        return to_record(new), MetricRecord({**agg, "num-examples": total})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.is_eval_round(server_round):
            return []
        config[CONFIG_KEY] = self._config_json
        return super().configure_evaluate(server_round, self.downlink(server_round), config, grid)

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        valid = self._valid(server_round, replies, None)
        for r in valid:
            self.recorder.client(
                server_round, r.name, {k: v for k, v in r.metrics.items() if k != "num-examples"}
            )
        if not valid:
            return None
        total = sum(r.num_examples for r in valid)
        keys = set.intersection(*(set(r.metrics) for r in valid)) - {"num-examples"}
        return MetricRecord(
            {k: sum(r.metrics[k] * r.num_examples for r in valid) / total for k in sorted(keys)}
        )

    # -- the round loop -------------------------------------------------------------------------
    def _exchange(
        self, grid: Grid, messages: list[Message], server_round: int, phase: str, timeout: float
    ) -> list[Message]:
        """Push messages, then pull replies as they come, logging progress and ETA."""
        if not messages:
            return []
        ids = [i for i in grid.push_messages(messages) if i]
        pending, replies = set(ids), []
        start = time.time()
        while pending and time.time() - start < timeout:
            got = list(grid.pull_messages(list(pending)))
            for msg in got:
                pending.discard(msg.metadata.reply_to_message_id)
                replies.append(msg)
            if got:
                self._progress(server_round, phase, len(replies), len(ids))
            if pending:
                time.sleep(0.2)
        if pending:
            log.warning(
                "round %d %s: %d client(s) timed out after %.0fs",
                server_round,
                phase,
                len(pending),
                timeout,
            )
            self.recorder.server_metric(server_round, {f"{phase}_timeouts": len(pending)})
        return replies

    def _progress(self, server_round: int, phase: str, done: int, total: int) -> None:
        elapsed = self.recorder.elapsed()
        span = elapsed - self._elapsed_at_start
        completed = server_round - self._first_round + done / max(1, total)
        remaining = self.cfg.num_rounds - self._first_round + 1 - completed
        eta = span / completed * remaining if completed > 0 else 0.0
        log.info(
            "round %d/%d %s: %d/%d clients done | elapsed %s | ETA %s",
            server_round,
            self.cfg.num_rounds,
            phase,
            done,
            total,
            _fmt(elapsed),
            _fmt(eta),
        )

    def save_checkpoint(self, server_round: int) -> None:
        """Atomically save everything needed to continue after ``server_round``."""
        atomic_torch_save(
            {
                "round": server_round,
                "arrays": {k: torch.from_numpy(np.array(v)) for k, v in self.global_arrays.items()},
                "strategy": self.state_dict(),
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                },
                "results": self.recorder.payload("running"),
            },
            self.checkpoint_path,
        )

    def load_checkpoint(self, path: Path) -> int:
        """Restore from ``path``; returns the last completed round."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        self.global_arrays = {k: v.numpy() for k, v in ckpt["arrays"].items()}
        self.load_state_dict(ckpt["strategy"])
        random.setstate(ckpt["rng"]["python"])
        np.random.set_state(ckpt["rng"]["numpy"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.recorder.load(ckpt["results"])
        return int(ckpt["round"])

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn=None,
    ) -> Result:
        """Flower's round loop plus per-round checkpoints and resume (``cfg.resume``)."""
        result = Result()
        self.global_arrays = to_numpy_dict(initial_arrays)
        first = 1
        if self.cfg.resume and self.checkpoint_path.is_file():
            first = self.load_checkpoint(self.checkpoint_path) + 1
            log.info("resuming after round %d from %s", first - 1, self.checkpoint_path)
        self._first_round = first
        self._elapsed_at_start = self.recorder.elapsed()
        log.info(
            "%s: %d clients, rounds %d..%d",
            self.__class__.__name__,
            self.num_clients,
            first,
            num_rounds,
        )
        for rnd in range(first, num_rounds + 1):
            msgs = list(
                self.configure_train(
                    rnd, to_record(self.global_arrays), ConfigRecord(dict(train_config or {})), grid
                )
            )
            t0 = time.perf_counter()
            replies = self._exchange(grid, msgs, rnd, "train", timeout)
            t1 = time.perf_counter()
            arrays, metrics = self.aggregate_train(rnd, replies)
            t2 = time.perf_counter()
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            msgs = list(
                self.configure_evaluate(
                    rnd,
                    to_record(self.global_arrays),
                    ConfigRecord(dict(evaluate_config or {})),
                    grid,
                )
            )
            replies = self._exchange(grid, msgs, rnd, "evaluate", timeout)
            eval_metrics = self.aggregate_evaluate(rnd, replies) if msgs else None
            self.recorder.server_metric(
                rnd,
                {
                    "train_phase_s": t1 - t0,
                    "aggregate_s": t2 - t1,
                    "evaluate_phase_s": time.perf_counter() - t2,
                },
            )
            if eval_metrics is not None:
                result.evaluate_metrics_clientapp[rnd] = eval_metrics
                if "accuracy" in eval_metrics:
                    log.info("round %d: mean accuracy %.1f%%", rnd, 100 * eval_metrics["accuracy"])
                else:
                    log.info(
                        "round %d: mean rank-1 %.1f%% mAP %.1f%%",
                        rnd,
                        100 * eval_metrics.get("rank1", 0.0),
                        100 * eval_metrics.get("mAP", 0.0),
                    )
            self.recorder.end_round(rnd)
            self.save_checkpoint(rnd)
        result.arrays = to_record(self.global_arrays)
        return result
