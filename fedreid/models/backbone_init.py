"""Initial backbone weights from a file (``model.init``): read, check against the arch, load.

Why a module of its own: :mod:`fedreid.config` checks ``model.init`` at start and
:mod:`fedreid.models.builder` loads it into every fresh model; this module imports neither, so
both can use it without an import cycle.

Accepted files (always read with ``torch.load(..., weights_only=True)``, so no code runs):

* what ``python -m fedreid.pretrain`` writes: ``{"format": FORMAT, "state_dict": {...},
  "meta": {...}}`` with ReIDNet keys (``backbone.*`` and ``bottleneck.*``, no head);
* a plain ReIDNet state dict (``backbone.*``, optionally ``bottleneck.*``; a ``classifier.*``
  head is ignored), also wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``;
* a plain torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1``..``layer4``; ``fc`` is
  ignored), e.g. ImageNet weights downloaded elsewhere.

The whole backbone must be there with the arch's shapes; the bottleneck is optional (all of
it or none); BatchNorm ``num_batches_tracked`` counters are optional everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fedreid.errors import ConfigError
from fedreid.models.reid import HEAD_PREFIX, ReIDNet

FORMAT = "fedreid-backbone/1"
"""The ``format`` tag of files written by ``python -m fedreid.pretrain``."""

_TORCHVISION = {
    "conv1": "0",
    "bn1": "1",
    "layer1": "4",
    "layer2": "5",
    "layer3": "6",
    "layer4": "7",
}
"""torchvision ResNet module names -> ReIDNet ``backbone`` indices (see ReIDNet.__init__)."""

_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}
"""Checked states by (path, size, mtime, arch, embed_dim): each process reads a file once."""


def read_init_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a ``model.init`` file (ConfigError with one line if not)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"model.init: file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"model.init: {p} is a folder, not a weights file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"model.init: cannot read {p} ({err.strerror or err})") from err
    except Exception as err:  # a truncated or foreign file: zip, pickle and torch errors
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise ConfigError(f"model.init: {p} is not a loadable weights file ({reason})") from err
    meta: dict[str, Any] = {}
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                if isinstance(payload.get("meta"), dict):
                    meta = payload["meta"]
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload:
        raise ConfigError(f"model.init: {p} holds no state dict")
    bad = [str(k) for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"model.init: {p} is not a state dict of tensors (e.g. {bad[0]!r})")
    return {str(k): v for k, v in payload.items()}, meta


def to_reid_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ReIDNet's shared keys: a ``module.`` prefix stripped, torchvision names mapped, and the
    classifier head (``classifier.*``, torchvision's ``fc.*``) dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        first, _, rest = key.partition(".")
        if key.startswith(HEAD_PREFIX) or first == "fc":
            continue
        if first in _TORCHVISION:
            key = f"backbone.{_TORCHVISION[first]}.{rest}"
        out[key] = value
    return out


def _expected(arch: str, embed_dim: int) -> dict[str, torch.Size]:
    """The shared keys and shapes of a ReIDNet of ``arch`` (built on the meta device: free)."""
    with torch.device("meta"):
        net = ReIDNet(0, arch=arch, embed_dim=embed_dim, dropout=0.0)
    return {k: v.shape for k, v in net.state_dict().items()}


def _counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def check_init_state(
    state: dict[str, torch.Tensor], arch: str, embed_dim: int, where: str, made_for: str = ""
) -> dict[str, torch.Tensor]:
    """``state`` (ReIDNet keys) checked to fit ``arch``: the whole backbone, all or none of the
    bottleneck, right shapes, finite values; floats as float32. ConfigError (one line) if not."""
    expected = _expected(arch, embed_dim)
    required = {k for k in expected if k.startswith("backbone.") and not _counter(k)}
    if any(k.startswith("bottleneck.") for k in state):
        required |= {k for k in expected if k.startswith("bottleneck.") and not _counter(k)}
    missing = sorted(required - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k]
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of other shape (e.g. {shapes[0]})")
        origin = f" (made for {made_for})" if made_for and made_for != arch else ""
        raise ConfigError(
            f"model.init: {where}{origin} does not fit model.arch={arch} "
            f"embed_dim={embed_dim}: " + ", ".join(parts)
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise ConfigError(f"model.init: {where} has non-finite values in {key}")
            value = value.float()
        out[key] = value.detach().clone().contiguous()
    return out


def init_state(path: str | Path, arch: str, embed_dim: int = 512) -> dict[str, torch.Tensor]:
    """The checked weights of the ``model.init`` file at ``path`` for ``arch`` (ReIDNet keys);
    read once per process and file version. Raises ConfigError (one line) on any problem."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
        version: tuple = (st.st_size, st.st_mtime_ns)
    except OSError:
        version = ()
    key = (str(p.absolute()), version, arch, embed_dim)
    if version and key in _CACHE:
        return _CACHE[key]
    raw, meta = read_init_file(p)
    made_for = str(meta.get("arch", "")) if meta else ""
    state = check_init_state(to_reid_keys(raw), arch, embed_dim, str(p), made_for)
    if version:
        _CACHE.clear()  # one file per run: keep only the latest
        _CACHE[key] = state
    return state


def load_init(model: ReIDNet, path: str | Path, arch: str, embed_dim: int) -> None:
    """Copy the ``model.init`` weights at ``path`` into ``model`` (its other tensors stay)."""
    state = init_state(path, arch, embed_dim)
    model.load_state_dict(state, strict=False)
