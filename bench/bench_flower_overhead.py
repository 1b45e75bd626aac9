"""Flower's overhead on a training round, measured side by side in one run.

A: the round's training phase through Flower's simulation engine (ServerApp -> messages ->
   ClientApp actors -> replies), from the server's ``train_phase_s`` of round 2 (round 1 also
   pays the one-off actor start-up, reported separately).
B: the same clients' local training (the same ``ReIDClient.fit`` on the same data, same threads,
   same number of parallel workers) in a plain ``multiprocessing`` loop, second repetition.

C: within the same Flower round, the clients' own ``train_time_s`` summed and divided by the
   number of parallel workers: the ideal round time if Flower cost nothing.

Overhead = (A - B) / A and (A - C) / A. C is measured in the same run under the same load, so
it is the robust figure on a shared machine. Target: at most 10% of the round time.

Usage:
    python bench/bench_flower_overhead.py                  # default preset, all 9 clients
    python bench/bench_flower_overhead.py data=tiny        # quick check
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedreid.config import Config, compose  # noqa: E402


def _fit(args: tuple[str, int, str]) -> float:
    """Worker: one client's local training, as the ClientApp would run it."""
    cfg_json, index, state_root = args
    import torch
    from flwr.app import RecordDict

    from fedreid.clients.reid_client import ReIDClient
    from fedreid.clients.state import ClientState
    from fedreid.data.scenarios import client_specs
    from fedreid.models.builder import seeded_reid_model
    from fedreid.models.reid import shared_state

    cfg = Config.from_json(cfg_json)
    spec = client_specs(cfg.data)[index]
    client = ReIDClient(
        cfg, spec.name, spec.load(), ClientState(RecordDict(), Path(state_root) / spec.name)
    )
    shared = shared_state(seeded_reid_model(cfg))
    torch.set_num_threads(cfg.train.threads)
    start = time.perf_counter()
    res = client.fit(shared, server_round=2)
    # the ClientApp also converts the reply to an ArrayRecord; that is Flower's cost, not B's
    assert res.num_examples > 0
    return time.perf_counter() - start


def plain_round(cfg: Config, workers: int, state_root: str) -> float:
    """Wall time of all clients' training with ``workers`` processes (the same parallelism)."""
    from fedreid.data.scenarios import client_specs

    n = len(client_specs(cfg.data))
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_fit, [(cfg.to_json(), 0, state_root)] * workers)  # warm-up: imports, caches
        start = time.perf_counter()
        list(pool.imap_unordered(_fit, [(cfg.to_json(), i, state_root) for i in range(n)]))
        return time.perf_counter() - start


def main() -> None:
    overrides = sys.argv[1:]
    out = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    cfg = compose(["num_rounds=2", "eval_every=1000", f"output_dir={out / 'flower'}", *overrides])
    cfg.eval_every = 10**6  # no evaluation inside the measured rounds
    from fedreid.simulation import prepare, simulate

    n = prepare(cfg)
    workers = max(1, int((os.cpu_count() or 2) // cfg.client_cpus))
    print(f"clients: {n}, parallel workers: {workers}, threads per client: {cfg.train.threads}")

    # the last round always evaluates: run 3 rounds and measure round 2
    cfg.num_rounds = 3
    simulate(cfg)
    res = json.loads((out / "flower" / "results.json").read_text())
    flower = {r["round"]: r["server"]["train_phase_s"] for r in res["rounds"]}
    plain_cfg = Config.from_json(cfg.to_json())
    plain = plain_round(plain_cfg, workers, str(out / "plain_state"))

    r2 = next(r for r in res["rounds"] if r["round"] == 2)
    busy = sum(m.get("train_time_s", 0.0) for m in r2["clients"].values()) / workers
    a, b = flower[2], plain
    print(f"Flower round 1 (with actor start-up): {flower[1]:.1f}s")
    print(f"A  Flower training phase, round 2:   {a:.1f}s")
    print(f"B  plain multiprocessing loop:        {b:.1f}s")
    print(f"overhead (A-B)/A = {100 * (a - b) / a:.1f}%  (ratio A/B = {a / b:.3f})")
    print(f"C  clients' own training time inside the Flower round / {workers} workers: {busy:.1f}s")
    print(f"in-run overhead (A-C)/A = {100 * (a - busy) / a:.1f}%  (same run, same load)")


if __name__ == "__main__":
    main()
