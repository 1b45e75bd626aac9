"""Run state an operator can trust: overwrite clears, resume refuses a changed config or a
corrupt or crafted checkpoint, an unwritable folder and unknown keys end with one line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedreid.config import compose
from fedreid.errors import ConfigError
from fedreid.server_app import prepare_output_dir

ROOT = Path(__file__).resolve().parent.parent


def fake_run(folder: Path, cfg) -> None:
    """A finished run's files, as the loop writes them."""
    (folder / "clients" / "market1501" / "abc").mkdir(parents=True)
    (folder / "clients" / "market1501" / "abc" / "head@2.pt").write_bytes(b"x")
    (folder / "results.json").write_text("{}")
    torch.save({"round": 2, "results": {"config": cfg.to_dict()}}, folder / "checkpoint.pt")


def test_overwrite_removes_the_old_run_and_its_client_state(tmp_path: Path) -> None:
    cfg = compose(["data=tiny", f"output_dir={tmp_path}"])
    fake_run(tmp_path, cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_output_dir(compose(["data=tiny", f"output_dir={tmp_path}"]))
    prepare_output_dir(compose(["data=tiny", f"output_dir={tmp_path}", "overwrite=true"]))
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "clients").exists()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_refuses_a_changed_config_unless_forced(tmp_path: Path) -> None:
    fake_run(tmp_path, compose(["data=tiny", f"output_dir={tmp_path}"]))
    prepare_output_dir(compose(["data=tiny", f"output_dir={tmp_path}", "resume=true"]))
    prepare_output_dir(
        compose(["data=tiny", f"output_dir={tmp_path}", "resume=true", "num_rounds=20"])
    )  # more rounds is what resuming is for
    changed = ["data=tiny", f"output_dir={tmp_path}", "resume=true", "seed=3"]
    with pytest.raises(ConfigError, match=r"changed config \(seed: 0 -> 3\).*resume_force") as e:
        prepare_output_dir(compose(changed))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="strategy.name: 'fedpav' -> 'local'"):
        prepare_output_dir(compose([*changed[:3], "strategy=local"]))
    prepare_output_dir(compose([*changed, "resume_force=true"]))


def test_resume_refuses_corrupt_and_crafted_checkpoints(tmp_path: Path) -> None:
    cfg = compose(["data=tiny", f"output_dir={tmp_path}", "resume=true"])
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot resume: .*checkpoint.pt is corrupt"):
        prepare_output_dir(cfg)

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with (tmp_path / "checkpoint.pt").open("wb") as fh:
        pickle.dump({"round": 1, "results": Payload()}, fh)
    with pytest.raises(ConfigError, match="corrupt"):
        prepare_output_dir(cfg)
    assert not marker.exists(), "a crafted checkpoint ran code"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        prepare_output_dir(compose(["data=tiny", f"output_dir={locked / 'run'}"]))


def test_unwritable_output_folder_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        prepare_output_dir(compose(["data=tiny", f"output_dir={tmp_path / 'file' / 'run'}"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nonsense=1", "error: invalid overrides"),
        ("train.lr_backbone=nan", "train.lr_backbone must be a finite number > 0"),
        ("data.batch_size=1", "data.batch_size must be >= 2"),
        ("train.momentum=7", "train.momentum must be in [0, 1)"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
        ("client_cpus=0", "client_cpus must be a finite number > 0"),
        ("round_timeout_s=0", "round_timeout_s must be a finite number > 0"),
    ],
)
def test_bad_command_lines_are_one_error_line_and_exit_2(override: str, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_simulation.py"), override],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert message in lines[0]
