"""The GPU training path (channels_last + autocast) exercised on the CPU.

CI has no GPU, so these run the same code path with ``device=cpu``: ``train.amp`` is bf16 on CPU
(see docs/speed.md), off here where a float32 comparison needs it;
on CPU (``fedreid.training.autocast``) but ``channels_last`` is not, and both branches of
:meth:`ReIDClient.build_model` and :func:`fedreid.training.train_epochs` run. The real GPU
figures come from ``bench/bench_gpu.py`` (see ``docs/gpu.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict

from fedreid.clients.reid_client import ReIDClient
from fedreid.clients.state import ClientState
from fedreid.data import load_market
from fedreid.models import ReIDNet, shared_state
from fedreid.training import autocast, resolve_device
from tests.conftest import small_config

GPU_FLAGS = {"train.channels_last": True, "train.amp": "on", "train.device": "cpu"}


def global_shared() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return shared_state(ReIDNet(0, arch="resnet18"))


def test_fit_channels_last_amp_on_cpu(market_root: Path) -> None:
    # bf16 training on CPU needs images at least 32 wide (config.BF16_MIN_WIDTH: oneDNN's
    # weight gradient of a 2x1 feature map is garbage); 32x16 gave NaN weights now and then
    cfg = small_config(**GPU_FLAGS, **{"data.height": 64, "data.width": 32})
    ds = load_market(market_root)
    record = RecordDict()
    client = ReIDClient(cfg, "toy", ds, ClientState(record, None))
    model = client.build_model(global_shared())
    conv = model.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)

    shared = global_shared()
    res = client.fit(shared, server_round=1)
    assert set(res.shared) == set(shared)
    assert res.num_examples == len(ds.train)
    assert res.metrics["train_images"] > 0 and torch.isfinite(
        torch.tensor(res.metrics["train_loss"])
    )
    for key, value in res.shared.items():
        assert value.device.type == "cpu" and value.dtype == shared[key].dtype
        assert value.shape == shared[key].shape
    moved = [
        k for k in shared if k.endswith("weight") and not torch.equal(shared[k], res.shared[k])
    ]
    assert moved, "training changed no shared weight"
    # channels_last tensors survive the trip through Flower's ArrayRecord unchanged
    back = ArrayRecord(torch_state_dict=res.shared).to_torch_state_dict()
    assert all(torch.equal(back[k], res.shared[k]) for k in res.shared)
    assert any(k.startswith("head@") for k in record.array_records)


def test_same_update_as_contiguous(market_root: Path) -> None:
    """channels_last changes the memory layout, not the maths: the updates agree closely."""
    ds = load_market(market_root)
    results = []
    for flags in ({}, GPU_FLAGS):
        # float32 on both sides: channels_last is the only difference compared here
        flags = {**flags, "train.amp": "off"}
        cfg = small_config(**flags, **{"model.dropout": 0.0, "train.max_batches": 1})
        client = ReIDClient(cfg, "toy", ds, ClientState(None, None))
        results.append(client.fit(global_shared(), server_round=1).shared)
    plain, fast = results
    for key in plain:
        if plain[key].is_floating_point():
            torch.testing.assert_close(fast[key], plain[key], rtol=1e-3, atol=1e-4)


def test_autocast_off_is_float32_on_cpu() -> None:
    device = resolve_device("cpu")
    with autocast(device, enabled="off"):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
    assert resolve_device("auto").type in ("cpu", "cuda")
