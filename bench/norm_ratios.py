"""Honest clients' update norm per local step against the round's median, from saved runs.

The norm screen (``trust.norm_screen``, default 5) excludes an update whose norm per local
step exceeds that many times the round's median. This prints, per run folder, the largest
ratio any client reached in any round, computed the server's way: ``update_norm`` over
:func:`fedreid.tasks.local_steps` of the client's pinned example count, under the run's own
config (a setting the saved config lacks takes its legacy value, :mod:`fedreid.recipe`).

Usage::

    python bench/norm_ratios.py outputs/main_job_v3 "outputs/poisoning/no attack"
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedreid.config import from_container  # noqa: E402
from fedreid.recipe import LEGACY_VALUES  # noqa: E402
from fedreid.tasks import TASKS, local_steps  # noqa: E402


def worst_ratio(run_dir: Path) -> tuple[float, int, str]:
    """(largest per-step ratio to the round's median, its round, its client)."""
    payload = json.loads((run_dir / "results.json").read_text())
    config = payload["config"]
    cfg = from_container(config)
    for key, value in LEGACY_VALUES.items():  # what the run did before the key existed
        section, name = key.split(".", 1)
        if name not in config.get(section, {}):
            setattr(getattr(cfg, section), name, value)
    worst = (0.0, 0, "")
    for rnd in payload["rounds"]:
        per_step = {
            client: m["update_norm"] / local_steps(TASKS[cfg.task], cfg, int(m["num_examples"]))
            for client, m in rnd["clients"].items()
            if "update_norm" in m
        }
        if len(per_step) < 2:
            continue
        median = statistics.median(per_step.values())
        client = max(per_step, key=per_step.__getitem__)
        worst = max(worst, (per_step[client] / median, int(rnd["round"]), client))
    return worst


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not folders:
        print(__doc__)
        return 2
    for folder in folders:
        ratio, rnd, client = worst_ratio(folder)
        print(f"{ratio:5.2f}x  (round {rnd}, {client})  {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
