"""Per-client tensors that must survive between rounds (and node restarts), committed per round.

Within a run they live in Flower's ``context.state`` (a RecordDict that never leaves the node);
each save is also written atomically to a node-local state directory, so a restarted SuperNode
resumes with its head. Reads prefer ``context.state`` and fall back to the directory.

Two rules make a resumed run exact and a new run clean:

* **Versions per round.** A save in round ``r`` is stored as ``<key>@<r>``. Training in round
  ``r`` reads the newest version from an *earlier* round, evaluation in round ``r`` the newest
  up to ``r``. A round interrupted after some clients saved (SIGINT, a killed server) is
  therefore redone from the same state: its half-written versions are never read, and are
  overwritten. The two newest versions are kept.
* **One folder per run.** The server gives every run an id (kept in its checkpoint, so a
  resumed run keeps it); state lives under ``<state dir>/<run id>/`` and ``context.state``
  keys carry it too, so ``overwrite=true`` or another run on the same SuperNode never reads
  an old run's heads.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict

KEEP_VERSIONS = 2
_VERSION = re.compile(r"^(?P<key>.+)@(?P<round>\d+)$")


class ClientState:
    """Named groups of tensors (``head``, ``local_model``, ``bn``, ``scores`` ...).

    Args:
        record: the node's ``context.state``; None outside Flower (tests, local training).
        directory: node-local folder for copies that survive restarts; None to skip.
        run_id: the server's id of this run ("" outside Flower).
        server_round: the round of the message being served (0 = no rounds: every version).
        phase: ``train`` reads versions from earlier rounds; ``evaluate`` up to this round.
    """

    def __init__(
        self,
        record: RecordDict | None,
        directory: Path | None,
        *,
        run_id: str = "",
        server_round: int = 0,
        phase: str = "train",
    ) -> None:
        self.record = record
        self.directory = directory / run_id if (directory is not None and run_id) else directory
        tag = f"{directory}|{run_id}" if (directory is not None or run_id) else ""
        self.prefix = f"{hashlib.sha256(tag.encode()).hexdigest()[:12]}:" if tag else ""
        self.round = server_round
        self.phase = phase

    # -- versions --------------------------------------------------------------------------------
    def _visible(self, version: int) -> bool:
        if self.round <= 0:
            return True
        return version < self.round if self.phase == "train" else version <= self.round

    def _record_versions(self, key: str) -> dict[int, str]:
        if self.record is None:
            return {}
        out = {}
        for name in self.record.array_records:
            if not name.startswith(self.prefix):
                continue
            m = _VERSION.match(name[len(self.prefix) :])
            if m and m["key"] == key:
                out[int(m["round"])] = name
        return out

    def _file_versions(self, key: str) -> dict[int, Path]:
        if self.directory is None or not self.directory.is_dir():
            return {}
        out = {}
        for path in self.directory.glob(f"{key}@*.pt"):
            m = _VERSION.match(path.stem)
            if m and m["key"] == key:
                out[int(m["round"])] = path
        return out

    # -- public ------------------------------------------------------------------------------------
    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The newest visible tensors saved under ``key``, or None if there are none."""
        in_record = {r: n for r, n in self._record_versions(key).items() if self._visible(r)}
        on_disk = {r: p for r, p in self._file_versions(key).items() if self._visible(r)}
        newest = max([*in_record, *on_disk], default=None)
        if newest is None:
            return None
        if newest in in_record:
            return self.record.array_records[in_record[newest]].to_torch_state_dict()
        tensors = torch.load(on_disk[newest], map_location="cpu", weights_only=True)
        if self.record is not None:
            name = f"{self.prefix}{key}@{newest}"
            self.record.array_records[name] = ArrayRecord(torch_state_dict=tensors)
        return tensors

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` as this round's version of ``key`` (context.state and disk)."""
        cpu = {k: v.detach().cpu().clone() for k, v in tensors.items()}
        name = f"{key}@{self.round}"
        if self.record is not None:
            self.record.array_records[self.prefix + name] = ArrayRecord(torch_state_dict=cpu)
            for r, old in self._record_versions(key).items():
                if r < self.round and r not in self._keep(self._record_versions(key)):
                    del self.record.array_records[old]
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{name}.pt"
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(cpu, tmp)
            os.replace(tmp, path)
            versions = self._file_versions(key)
            keep = self._keep(versions)
            for r, old in versions.items():
                if r not in keep:
                    old.unlink(missing_ok=True)

    def _keep(self, versions: dict[int, object]) -> set[int]:
        """The versions kept: this round's and the newest earlier ones."""
        return set(sorted(versions, reverse=True)[:KEEP_VERSIONS]) | {self.round}


def load_head(state: ClientState, num_ids: int, client: str) -> dict[str, torch.Tensor] | None:
    """The client's saved classifier, checked against its current number of identities."""
    from fedreid.errors import DatasetError

    head = state.load("head")
    if head is not None and head["classifier.weight"].shape[0] != num_ids:
        raise DatasetError(
            f"client {client}: saved head has {head['classifier.weight'].shape[0]} "
            f"identities, dataset has {num_ids}; clear its state dir"
        )
    return head
