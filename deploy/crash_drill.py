"""Reliability drill on loopback: a SuperNode crashes mid-run and is restarted.

Starts a TLS SuperLink with SuperNode authentication and one SuperNode per ``--node``, submits
a run, SIGKILLs the ``--kill`` node (its whole process tree) once ``--after-round`` rounds are
in ``results.json``, restarts it with the same key and state folder (retrying while the
SuperLink still holds the dead node as online) and waits for the run to finish. Prints what
every round saw. Not part of CI (about four minutes on two cores); see docs/deployment.md.

Example::

    python deploy/crash_drill.py /tmp/drill --data-root /tmp/tiny \\
        --node market1501 --node cuhk03 --kill cuhk03 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from fedreid.deploy import Deployment, NodeSpec, _read_status, descendants


def rounds_of(results: Path) -> list[dict]:
    """The rounds recorded so far (empty while results.json does not exist)."""
    try:
        return list(json.loads(results.read_text()).get("rounds", []))
    except (OSError, ValueError):
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL a process group and every descendant (a crash, not a shutdown)."""
    tree = descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--data-root", type=Path, required=True, help="synthetic tiny root")
    parser.add_argument("--node", action="append", required=True, help="dataset name")
    parser.add_argument("--kill", required=True)
    parser.add_argument("--after-round", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-restart", action="store_true", help="leave the node dead")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    from fedreid.data.synthetic import generate

    root = generate(args.data_root, preset="tiny", seed=0, progress=False)
    shutil.rmtree(args.dir, ignore_errors=True)
    dep = Deployment(args.dir)
    start = time.time()

    def say(*parts: object) -> None:
        print(f"[{time.time() - start:6.1f}s]", *parts, flush=True)

    out = dep.dir / "run"
    specs = {n: NodeSpec(n, n, str(root), str(dep.dir / "state")) for n in args.node}
    try:
        dep.start_superlink()
        nodes = {n: dep.start_supernode(spec) for n, spec in specs.items()}
        dep.wait_for_nodes(len(nodes))
        overrides = (
            f"data=tiny data.root={root} data.datasets=[{','.join(args.node)}] "
            f"num_rounds={args.rounds} eval_every={args.rounds} train.max_batches=2 "
            "data.batch_size=16 data.height=64 data.width=32 round_timeout_s=180"
        )
        run_id = dep.submit({"overrides": overrides, "output-dir": str(out)})
        say("run", run_id, "submitted")
        while len(rounds_of(out / "results.json")) < args.after_round:
            time.sleep(1)
        kill_tree(nodes[args.kill].proc.pid)
        nodes[args.kill].proc.wait()
        say(f"killed {args.kill} after round {args.after_round}")
        if not args.no_restart:
            before = sum(m.name == f"supernode-{args.kill}" for m in dep.procs)
            dep.restart_supernode(specs[args.kill])
            tries = sum(m.name == f"supernode-{args.kill}" for m in dep.procs) - before
            say(f"{args.kill} taken back after {tries} start(s)")
        seen = 0
        deadline = time.time() + args.timeout
        while time.time() < deadline and _read_status(out / "results.json") != "finished":
            rounds = rounds_of(out / "results.json")
            for r in rounds[seen:]:
                server = {k: v for k, v in r["server"].items() if not k.endswith("_s")}
                say(f"round {r['round']}: clients {sorted(r['clients'])} server {server}")
            seen = len(rounds)
            time.sleep(2)
        for r in rounds_of(out / "results.json")[seen:]:
            server = {k: v for k, v in r["server"].items() if not k.endswith("_s")}
            say(f"round {r['round']}: clients {sorted(r['clients'])} server {server}")
        say("run status:", dep.run_status(run_id), "| log:", dep.save_run_log(run_id))
    finally:
        dep.stop()
    return 0 if _read_status(out / "results.json") == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
