"""Per-client tensors that must survive between rounds (and node restarts).

Within a run they live in Flower's ``context.state`` (a RecordDict that never leaves the node);
each save is also written atomically to a node-local state directory, so a restarted SuperNode
resumes with its head. Reads prefer ``context.state`` and fall back to the directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict


class ClientState:
    """Named groups of tensors (``head``, ``local_model``, ``bn``, ``scores`` ...).

    Args:
        record: the node's ``context.state``; None outside Flower (tests, local training).
        directory: node-local folder for copies that survive restarts; None to skip.
    """

    def __init__(self, record: RecordDict | None, directory: Path | None) -> None:
        self.record = record
        self.directory = directory
        # context.state outlives a run (a SuperNode serves many runs, a simulation many
        # sub-runs): entries are keyed by the state directory, so a new run starts clean.
        tag = hashlib.sha256(str(directory).encode()).hexdigest()[:12] if directory else ""
        self.prefix = f"{tag}:" if tag else ""

    def _file(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors saved under ``key``, or None if this client has none yet."""
        if self.record is not None and self.prefix + key in self.record.array_records:
            return self.record.array_records[self.prefix + key].to_torch_state_dict()
        path = self._file(key)
        if path is not None and path.is_file():
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            if self.record is not None:
                self.record.array_records[self.prefix + key] = ArrayRecord(torch_state_dict=tensors)
            return tensors
        return None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``key`` in context.state and (atomically) on disk."""
        cpu = {k: v.detach().cpu().clone() for k, v in tensors.items()}
        if self.record is not None:
            self.record.array_records[self.prefix + key] = ArrayRecord(torch_state_dict=cpu)
        path = self._file(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(cpu, tmp)
            os.replace(tmp, path)


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
