"""Mixed precision (``train.amp``): dtype choice, bf16 training, bf16 features, supermask STE.

All on the CPU, with tiny inputs: bf16 autocast runs on any x86/ARM CPU (emulated where the
CPU lacks native BF16), so these tests do not depend on the machine's detection.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedreid import training
from fedreid.config import TrainConfig
from fedreid.evaluation import extract_features
from fedreid.models.reid import ReIDNet
from fedreid.models.supermask import MaskedConv2d, MaskedLinear
from fedreid.training import amp_dtype, autocast, make_optimizer, train_epochs

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)  # never touched: the detection is monkeypatched
BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture
def fake_hw(monkeypatch: pytest.MonkeyPatch):
    """Set what the CPU and GPU 'support'; each test starts with a fresh log memory."""
    monkeypatch.setattr(training, "_LOGGED", set())

    def set_hw(cpu_bf16: bool, cuda_bf16: bool = False) -> None:
        monkeypatch.setattr(training, "cpu_supports_bf16", lambda: cpu_bf16)
        monkeypatch.setattr(training, "_cpu_bf16_evidence", lambda: "test" if cpu_bf16 else None)
        monkeypatch.setattr(training, "_cuda_supports_bf16", lambda device: cuda_bf16)

    return set_hw


@pytest.mark.parametrize(
    ("setting", "device", "cpu_bf16", "cuda_bf16", "expected"),
    [
        ("off", CPU, True, True, None),
        ("off", CUDA, True, True, None),
        ("on", CPU, True, False, BF16),
        ("on", CPU, False, False, BF16),  # emulated, but asked for
        ("on", CUDA, False, True, BF16),
        ("on", CUDA, False, False, FP16),
        ("auto", CPU, True, False, BF16),
        ("auto", CPU, False, True, None),
        ("auto", CUDA, False, True, BF16),
        ("auto", CUDA, True, False, None),
        (True, CPU, False, False, BF16),
        (True, CUDA, False, False, FP16),
        (False, CPU, True, True, None),
        ("True", CPU, False, False, BF16),  # a legacy bool through a str-typed OmegaConf field
        ("False", CUDA, True, True, None),
        (" Auto ", CPU, True, False, BF16),
        ("on", torch.device("meta"), True, True, None),  # no autocast on other device types
    ],
)
def test_amp_dtype_truth_table(fake_hw, setting, device, cpu_bf16, cuda_bf16, expected) -> None:
    fake_hw(cpu_bf16, cuda_bf16)
    assert amp_dtype(setting, device) == expected


@pytest.mark.parametrize("bad", ["yes", "bf16", "", None, 1, 0, 1.0])
def test_amp_dtype_rejects_other_values(bad) -> None:
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype(bad, CPU)
    with pytest.raises(ValueError):
        autocast(CPU, bad)


def test_amp_choice_logged_once(fake_hw, caplog: pytest.LogCaptureFixture) -> None:
    fake_hw(cpu_bf16=True)
    with caplog.at_level(logging.INFO, logger="fedreid"):
        for _ in range(3):
            amp_dtype("auto", CPU)
            with autocast(CPU, "auto"):
                pass
    lines = [r.getMessage() for r in caplog.records if r.name == "fedreid"]
    assert len(lines) == 1
    assert "cpu" in lines[0] and "bfloat16" in lines[0] and "native BF16" in lines[0]


def test_bf16_cpu_flags_parser() -> None:
    x86 = "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert training.bf16_cpu_flags(x86) == ["amx_bf16", "avx512_bf16"]
    assert training.bf16_cpu_flags("flags : fpu avx2 avx512f avx512bw avx512_vnni") == []
    assert training.bf16_cpu_flags("Features : fp asimd sve bf16 i8mm") == ["bf16"]
    assert training.bf16_cpu_flags("model name : avx512_bf16 in the name only") == []
    result = training.cpu_supports_bf16()
    assert isinstance(result, bool) and training.cpu_supports_bf16() is result


def tiny_net(num_classes: int = 4) -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(num_classes, arch="resnet18", pretrained=False)


def test_training_step_under_bf16_keeps_float32() -> None:
    model = tiny_net()
    train = TrainConfig(amp="on", max_batches=2, local_epochs=1)
    optimizer = make_optimizer(model, train)
    seen: list[torch.dtype] = []
    model.backbone[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 64, 32, generator=gen), torch.tensor([0, 1, 2, 3]), torch.zeros(4))
        for _ in range(2)
    ]  # 64x32: at 32x16 oneDNN's bf16 weight gradients can be corrupt (BF16_MIN_WIDTH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = train_epochs(model, batches, optimizer, train, CPU)

    assert seen == [BF16, BF16], "the convolutions did not run in bf16"
    assert torch.isfinite(torch.tensor(metrics["train_loss"])) and metrics["train_loss"] > 0
    assert metrics["train_images"] == 8
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    for state in optimizer.state.values():
        assert state["momentum_buffer"].dtype == torch.float32
    after = model.state_dict()
    for key, value in after.items():
        assert value.dtype == before[key].dtype, key  # BN running stats included
    assert not torch.equal(after["backbone.0.weight"], before["backbone.0.weight"])


def test_bf16_features_close_to_float32() -> None:
    model = tiny_net()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(5, 3, 32, 16, generator=gen), torch.arange(5), torch.zeros(5))
        for _ in range(2)
    ]
    fp32, pids, _ = extract_features(model, batches)
    bf16, pids_bf16, _ = extract_features(model, batches, amp="on")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape == (10, 512)
    torch.testing.assert_close(bf16.norm(dim=1), torch.ones(10), rtol=0, atol=1e-5)
    assert (bf16 * fp32).sum(dim=1).min() > 0.99
    assert not torch.equal(bf16, fp32), "amp='on' did not change the arithmetic"
    assert torch.equal(pids, pids_bf16)
    # default (amp off) is plain float32, as before
    again, _, _ = extract_features(model, batches, amp="off")
    assert torch.equal(again, fp32)


def masked_layer(kind: str, mode: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        dense: nn.Module = nn.Linear(32, 16)
        layer: nn.Module = MaskedLinear.from_dense(dense, mask=torch.rand(16, 32) > 0.5, mode=mode)
        x = torch.randn(8, 32)
    else:
        dense = nn.Conv2d(4, 8, 3, padding=1)
        layer = MaskedConv2d.from_dense(dense, mask=torch.rand(8, 4, 3, 3) > 0.5, mode=mode)
        x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        layer.scores.copy_(torch.randn_like(layer.scores))
    return layer, x


@pytest.mark.parametrize("mode", ["sign", "binary"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_supermask_score_gradients_under_bf16(kind: str, mode: str) -> None:
    """The straight-through score gradient under bf16 autocast has float32's sign pattern."""
    layer, x = masked_layer(kind, mode)
    grads, out_dtypes = {}, {}
    for amp in ("off", "on"):
        layer.scores.grad = None
        with autocast(CPU, amp):
            out = layer(x)
        target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        grads[amp], out_dtypes[amp] = layer.scores.grad.clone(), out.dtype
    assert out_dtypes == {"off": torch.float32, "on": BF16}
    g32, g16 = grads["off"], grads["on"]
    assert g16.dtype == torch.float32 and layer.scores.dtype == torch.float32
    pruned = ~layer.mask
    assert (g32[pruned] == 0).all() and (g16[pruned] == 0).all()
    # same sign wherever the float32 gradient is not vanishingly small ...
    clear = g32.abs() > 0.01 * g32.abs().max()
    assert clear.sum() > 0.8 * layer.mask.sum()
    assert torch.equal(torch.sign(g16[clear]), torch.sign(g32[clear]))
    # ... and nearly everywhere overall, with a small relative error
    assert (torch.sign(g16) == torch.sign(g32)).float().mean() > 0.99
    assert (g16 - g32).norm() / g32.norm() < 0.02


def bf16_weight_gradient_errors(width: int, trials: int) -> list[dict[str, float]]:
    """Per step, each convolution's relative error of its bf16 weight gradient against the
    float32 product of the same bf16 activations and output gradients (images 2w x w)."""
    errors = []
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def keep(out: torch.Tensor, inp: torch.Tensor, name: str) -> None:
        seen[name] = {"x": inp.detach().clone()}
        out.register_hook(lambda g: seen[name].__setitem__("g", g.detach()))

    for trial in range(trials):
        seen.clear()
        model = tiny_net(10).to(memory_format=torch.channels_last)
        model.train()
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        for name, conv in convs.items():
            conv.register_forward_hook(lambda m, i, o, name=name: keep(o, i[0], name))
        gen = torch.Generator().manual_seed(trial)
        x = torch.randn(16, 3, 2 * width, width, generator=gen)
        with autocast(CPU, "on"):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        F.cross_entropy(logits.float(), torch.randint(0, 10, (16,), generator=gen)).backward()
        step = {}
        for name, conv in convs.items():
            ref = torch.nn.grad.conv2d_weight(
                seen[name]["x"].float(),
                conv.weight.shape,
                seen[name]["g"].float(),
                stride=conv.stride,
                padding=conv.padding,
            )
            step[name] = float((conv.weight.grad - ref).abs().max() / ref.abs().max())
        errors.append(step)
    return errors


def test_bf16_conv_weight_gradients_match_float32_at_allowed_sizes() -> None:
    """At the smallest allowed width (BF16_MIN_WIDTH) every convolution's bf16 weight gradient
    is right to bf16 rounding. (At width 16, a 1-pixel-wide layer4 input, layer4.0.conv1's
    was wrong in 8 steps of 20: ``bf16_weight_gradient_errors(16, 20)``.)"""
    from fedreid.config import BF16_MIN_WIDTH

    for step in bf16_weight_gradient_errors(BF16_MIN_WIDTH, trials=2):
        assert max(step.values()) < 0.05, step


@pytest.mark.parametrize(
    ("task", "device", "width", "amp", "expected"),
    [
        ("reid", "cpu", 16, "auto", "off"),
        ("reid", "cpu", 16, "off", "off"),
        ("reid", "cpu", 32, "auto", "auto"),
        ("reid", "cpu", 32, "on", "on"),
        ("reid", "cuda", 16, "auto", "auto"),
        ("classification", "cpu", 16, "auto", "auto"),
    ],
)
def test_narrow_reid_images_train_in_float32_on_cpu(task, device, width, amp, expected) -> None:
    from fedreid.config import Config, _check_bf16_input

    cfg = Config()
    cfg.task, cfg.train.device, cfg.data.width, cfg.train.amp = task, device, width, amp
    _check_bf16_input(cfg)
    assert cfg.train.amp == expected


def test_amp_on_with_narrow_reid_images_is_refused() -> None:
    from fedreid.config import Config, validate
    from fedreid.errors import ConfigError

    cfg = Config()
    cfg.data.height, cfg.data.width, cfg.train.amp = 32, 16, "on"
    with pytest.raises(ConfigError, match="train.amp=on needs data.width >= 32"):
        validate(cfg)
