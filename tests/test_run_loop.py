"""The run loop alone, on an in-process grid: any Flower strategy, merge, reply checks,
evaluate_fn, timings, and exact resume of a stateful Flower strategy (FedAdam)."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedreid.errors import UpdateError
from fedreid.results import RunRecorder
from fedreid.run import LoopSettings, RoundFailed, RunLoop, merge, to_record

Client = Callable[[int, Message], Message | None]


def reply_to(msg: Message, node: int, arrays: dict | None, metrics: dict, n: int) -> Message:
    """A reply to ``msg`` from ``node`` (what Flower's Grid would hand back)."""
    content = RecordDict(
        {
            "metrics": MetricRecord({**metrics, "num-examples": n}),
            "client": ConfigRecord({"name": f"c{node}"}),
        }
    )
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    metadata = Metadata(
        run_id=1,
        message_id=f"r-{msg.metadata.message_id}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=msg.metadata.message_id,
        group_id="",
        created_at=0.0,
        ttl=60,
        message_type=msg.metadata.message_type,
    )
    return Message(content=content, metadata=metadata)


class LocalGrid:
    """A Grid whose nodes are Python functions (no Ray, no network)."""

    def __init__(self, clients: dict[int, Client]) -> None:
        self.clients = clients
        self.pending: dict[str, Message] = {}
        self.sent: list[Message] = []
        self._count = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            self._count += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._count}"
            self.pending[msg.metadata.message_id] = msg
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in list(message_ids):
            msg = self.pending.pop(mid, None)
            if msg is None:
                continue
            node = msg.metadata.dst_node_id
            reply = self.clients[node](node, msg)
            if reply is not None:
                out.append(reply)
        return out


@pytest.fixture(autouse=True)
def in_serverapp(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity  # set inside a real ServerApp

    for key in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)


def step_client(delta: float, n: int = 10) -> Client:
    """Returns the received arrays plus ``delta`` (a fixed 'training step')."""

    def client(node: int, msg: Message) -> Message:
        if msg.metadata.message_type == "evaluate":
            return reply_to(msg, node, None, {"accuracy": 0.5}, n)
        arrays = {k: v.numpy() + delta for k, v in msg.content["arrays"].items()}
        return reply_to(msg, node, arrays, {"train_loss": 1.0}, n)

    return client


def initial() -> tuple[ArrayRecord, dict[str, float]]:
    return to_record({"w": np.zeros(3, np.float32)}), {"setup_s": 1.0}


def test_flowers_fedavg_runs_under_the_loop_with_evaluate_fn(tmp_path: Path) -> None:
    grid = LocalGrid({1: step_client(1.0, 10), 2: step_client(3.0, 30)})
    calls = []

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        calls.append((rnd, arrays["w"].numpy().copy()))
        return MetricRecord({"loss": float(rnd)})

    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    run = RunLoop(
        strategy, grid, RunRecorder(tmp_path, {}), LoopSettings(num_rounds=2), evaluate_fn
    )
    final = run.run(initial)
    # each round: +1 (weight 10) and +3 (weight 30) -> mean step 2.5
    np.testing.assert_allclose(final["w"].numpy(), [5.0, 5.0, 5.0])
    assert [c[0] for c in calls] == [1, 2]
    np.testing.assert_allclose(calls[0][1], [2.5] * 3)
    rounds = {r["round"]: r for r in run.recorder.rounds}
    assert rounds[1]["server"]["server_loss"] == 1.0 and rounds[1]["server"]["setup_s"] == 1.0
    assert rounds[2]["clients"]["c2"]["accuracy"] == 0.5
    assert rounds[2]["clients"]["c1"]["bytes_down"] > 0
    assert {"train_phase_s", "aggregate_s", "evaluate_phase_s"} <= set(rounds[2]["server"])
    assert (tmp_path / "checkpoint.pt").is_file()


def test_a_bad_reply_is_excluded_and_the_round_goes_on(tmp_path: Path, caplog) -> None:
    def bad(node: int, msg: Message) -> Message:
        if msg.metadata.message_type == "evaluate":
            return reply_to(msg, node, None, {"accuracy": 0.5}, 10)
        return reply_to(msg, node, {"w": np.full(4, 9.0, np.float32)}, {"train_loss": 1.0}, 10)

    grid = LocalGrid({1: step_client(1.0), 2: bad})
    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    run = RunLoop(strategy, grid, RunRecorder(tmp_path, {}), LoopSettings(num_rounds=1))
    final = run.run(initial)
    np.testing.assert_allclose(final["w"].numpy(), [1.0] * 3)  # the good client only
    assert run.recorder.rounds[0]["server"]["excluded"] == 1
    assert any("has shape (4,)" in m for m in caplog.messages)


def test_too_few_replies_fail_the_run_or_skip_the_round(tmp_path: Path) -> None:
    def make(on_too_few: str, folder: str) -> RunLoop:
        grid = LocalGrid({1: step_client(1.0), 2: lambda node, msg: None})  # 2 never answers
        strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
        settings = LoopSettings(
            num_rounds=1, min_replies=2, round_timeout_s=0.5, on_too_few=on_too_few
        )
        return RunLoop(strategy, grid, RunRecorder(tmp_path / folder, {}), settings)

    with pytest.raises(RoundFailed, match="round 1: 1 valid replies < strategy.min_replies=2"):
        make("fail", "a").run(initial)
    run = make("skip", "b")
    final = run.run(initial)
    np.testing.assert_array_equal(final["w"].numpy(), np.zeros(3))
    server = run.recorder.rounds[0]["server"]
    assert server["skipped"] == 1 and server["train_timeouts"] == 1
    assert run.failed_clients() == ["node-2"]  # never sent a valid training reply


def test_fedadam_resumes_exactly(tmp_path: Path) -> None:
    """FedAdam's moments live in the strategy: the checkpoint carries them."""

    def make() -> tuple[FedAdam, LocalGrid]:
        grid = LocalGrid({1: step_client(1.0), 2: step_client(-0.5)})
        return FedAdam(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2), grid

    s, g = make()
    full = RunLoop(s, g, RunRecorder(tmp_path / "full", {}), LoopSettings(num_rounds=4)).run(
        initial
    )
    s, g = make()
    RunLoop(s, g, RunRecorder(tmp_path / "part", {}), LoopSettings(num_rounds=2)).run(initial)
    s, g = make()  # a new process would build a fresh strategy
    settings = LoopSettings(num_rounds=4, resume=True)
    resumed = RunLoop(s, g, RunRecorder(tmp_path / "part", {}), settings)
    out = resumed.run(lambda: pytest.fail("a resumed run must not rebuild the initial arrays"))
    np.testing.assert_array_equal(out["w"].numpy(), full["w"].numpy())
    assert s.m_t is not None
    payload = json.loads((tmp_path / "part" / "results.json").read_text())
    assert [r["round"] for r in payload["rounds"]] == [1, 2, 3, 4]


def test_merge_casts_and_rejects() -> None:
    g = {"w": np.zeros(2, np.float32), "n": np.array(3, np.int64)}
    out = merge(g, {"w": np.array([1.5, 2.5], np.float64), "n": np.array(4.6)})
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64 and int(out["n"]) == 5
    with pytest.raises(UpdateError, match="unknown key"):
        merge(g, {"x": np.zeros(1)})
    with pytest.raises(UpdateError, match="shape"):
        merge(g, {"w": np.zeros(3)})
    with pytest.raises(UpdateError, match="not finite"):
        merge(g, {"w": np.array([np.inf, 0.0])})


# -- trust: run-level checks ---------------------------------------------------------------------
def named_client(name: str, delta: float, sizes: list[int] | None = None) -> Client:
    """Like step_client, but answers under ``name`` and with per-round sample counts."""
    calls = {"train": 0}

    def client(node: int, msg: Message) -> Message:
        if msg.metadata.message_type == "evaluate":
            reply = reply_to(msg, node, None, {"accuracy": 0.5}, 10)
        else:
            n = sizes[calls["train"]] if sizes else 10
            calls["train"] += 1
            arrays = {k: v.numpy() + delta for k, v in msg.content["arrays"].items()}
            reply = reply_to(msg, node, arrays, {"train_loss": 1.0}, n)
        reply.content["client"] = ConfigRecord({"name": name})
        return reply

    return client


def run_clients(tmp_path: Path, clients: dict[int, Client], rounds: int = 1) -> RunLoop:
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    settings = LoopSettings(num_rounds=rounds, on_too_few="skip")
    run = RunLoop(strategy, LocalGrid(clients), RunRecorder(tmp_path, {}), settings)
    run.final = run.run(initial)
    return run


def test_a_node_claiming_a_taken_name_is_rejected(tmp_path: Path, caplog) -> None:
    run = run_clients(tmp_path, {1: named_client("alice", 1.0), 2: named_client("alice", 5.0)})
    assert any("name already taken by node" in m for m in caplog.messages)
    assert set(run.recorder.rounds[0]["clients"]) == {"alice"}
    assert run.recorder.rounds[0]["server"]["excluded"] == 2  # its train and evaluate replies
    # whoever answered first keeps the name; the other's update is left out of the mean
    assert float(run.final["w"].numpy()[0]) in (1.0, 5.0)


def test_num_examples_is_pinned_per_node(tmp_path: Path, caplog) -> None:
    clients = {1: named_client("a", 1.0), 2: named_client("b", 1.0, sizes=[10, 10**7])}
    run = run_clients(tmp_path, clients, rounds=2)
    assert any("num-examples 10000000 in train, expected 10" in m for m in caplog.messages)
    rounds = {r["round"]: r for r in run.recorder.rounds}
    assert rounds[2]["server"]["excluded"] == 1
    assert "train_loss" not in rounds[2]["clients"]["b"]  # its evaluation still counts


def test_scaled_update_fails_the_norm_screen(tmp_path: Path, caplog) -> None:
    clients = {i: named_client(f"c{i}", 1.0) for i in (1, 2, 3)}
    clients[4] = named_client("attacker", 1e6)
    run = run_clients(tmp_path, clients)
    np.testing.assert_allclose(run.final["w"].numpy(), [1.0] * 3)
    assert any("attacker: update norm per local step" in m for m in caplog.messages)
    server = run.recorder.rounds[0]["server"]
    assert server["excluded"] == 1
    assert run.recorder.rounds[0]["clients"]["c1"]["update_norm"] == pytest.approx(3**0.5)


class FlakyGrid(LocalGrid):
    """Node 2 is offline in round 1 (a dead SuperNode) and back from round 2."""

    def __init__(self, clients: dict[int, Client]) -> None:
        super().__init__(clients)
        self.round = 0

    def get_node_ids(self) -> Iterable[int]:
        return [1] if self.round == 1 else [1, 2]


def test_a_missing_node_is_waited_for_boundedly_then_rejoins(tmp_path: Path, caplog) -> None:
    grid = FlakyGrid({1: step_client(1.0), 2: step_client(3.0)})
    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    settings = LoopSettings(num_rounds=2, node_wait_s=0.5)
    run = RunLoop(strategy, grid, RunRecorder(tmp_path, {}), settings)
    original = run.round

    def counted(rnd: int) -> None:
        grid.round = rnd
        original(rnd)

    run.round = counted
    started = time.time()
    final = run.run(initial)
    assert time.time() - started < 30  # Flower's own sampling would wait forever
    rounds = {r["round"]: r for r in run.recorder.rounds}
    assert rounds[1]["server"]["missing_nodes"] == 1 and set(rounds[1]["clients"]) == {"c1"}
    assert set(rounds[2]["clients"]) == {"c1", "c2"} and "missing_nodes" not in rounds[2]["server"]
    np.testing.assert_allclose(final["w"].numpy(), [1.0 + 2.0] * 3)  # +1, then mean(+1, +3)
    assert any("1 of 2 nodes online" in m for m in caplog.messages)


def test_num_examples_is_pinned_to_the_scenarios_count_from_round_one(tmp_path: Path, caplog):
    clients = {1: named_client("a", 1.0), 2: named_client("b", 1.0, sizes=[10**7])}
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    settings = LoopSettings(num_rounds=1, known_examples={"a": 10, "b": 10})
    run = RunLoop(strategy, LocalGrid(clients), RunRecorder(tmp_path, {}), settings)
    run.run(initial)
    assert any("b: num-examples 10000000 in train, expected 10" in m for m in caplog.messages)
    assert "train_loss" not in run.recorder.rounds[0]["clients"]["b"]


def test_norm_screen_spares_large_honest_clients(tmp_path: Path) -> None:
    """An honest client with 100x the data moves ~100x further (100x the steps); per step it is
    alike."""
    clients = {i: named_client(f"c{i}", 1.0) for i in (1, 2, 3)}
    clients[4] = named_client("big", 100.0, sizes=[1000])
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    settings = LoopSettings(num_rounds=1)
    run = RunLoop(strategy, LocalGrid(clients), RunRecorder(tmp_path, {}), settings)
    run.run(initial)
    assert "excluded" not in run.recorder.rounds[0]["server"]
    assert run.recorder.rounds[0]["clients"]["big"]["update_norm"] == pytest.approx(100 * 3**0.5)


def test_norm_screen_counts_steps_not_examples_under_a_step_cap(tmp_path: Path, caplog) -> None:
    """With ``train.max_batches`` every client takes the same steps whatever its size: a large
    client that boosts its update 20x stands out per step (per example it would hide)."""
    from fedreid.config import compose
    from fedreid.tasks import TASKS, local_steps

    cfg = compose(["train.max_batches=3", "data.batch_size=32"])
    steps = functools.partial(local_steps, TASKS["reid"], cfg)
    # 10: one short batch; 33, 34: the incomplete last batch is dropped; 1000: capped at 3
    assert [steps(n) for n in (10, 33, 34, 1000)] == [1, 1, 1, 3]
    clients = {i: named_client(f"c{i}", 1.0, sizes=[100]) for i in (1, 2, 3)}
    clients[4] = named_client("big", 20.0, sizes=[1000])  # 10x the data, same 3 steps
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    settings = LoopSettings(num_rounds=1, local_steps=steps)
    run = RunLoop(strategy, LocalGrid(clients), RunRecorder(tmp_path, {}), settings)
    final = run.run(initial)
    assert any("big: update norm per local step" in m for m in caplog.messages)
    np.testing.assert_allclose(final["w"].numpy(), [1.0] * 3)


@pytest.mark.parametrize(
    ("eval_local", "expected"),
    [("every", [False, True, False, True, True]), ("last", [False] * 4 + [True]), ("off", [])],
)
def test_local_models_are_ranked_per_eval_local(eval_local: str, expected: list[bool]) -> None:
    """eval_every=2 over 5 rounds: evaluation at 2, 4 and 5; "FedPav Local" per eval_local."""
    loop = object.__new__(RunLoop)  # only the settings matter here
    loop.settings = LoopSettings(num_rounds=5, eval_every=2, eval_local=eval_local)
    flags = [loop.is_local_eval_round(r) for r in range(1, 6)]
    assert flags == (expected or [False] * 5)


def test_a_setting_added_since_the_checkpoint_is_unchanged_at_its_default() -> None:
    from fedreid.config import compose
    from fedreid.server_app import config_changes

    saved = compose(["data=tiny"]).to_dict()
    del saved["eval_local"]  # a checkpoint from before the setting existed
    assert config_changes(saved, compose(["data=tiny", "eval_local=every"])) == []
    changes = config_changes(saved, compose(["data=tiny", "eval_local=last"]))
    assert changes == ["eval_local: 'every' -> 'last'"]


def test_eval_local_is_validated() -> None:
    from fedreid.config import compose, validate
    from fedreid.errors import ConfigError

    cfg = compose(["data=tiny"])
    assert cfg.eval_local == "last", "the default recipe ranks the local models at the end"
    cfg.eval_local = "sometimes"
    with pytest.raises(ConfigError, match="eval_local='sometimes' must be one of"):
        validate(cfg)
