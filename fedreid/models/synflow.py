"""SynFlow pruning at initialisation (Tanaka et al. 2020), data-free, for HideNseek's server.

SynFlow scores every weight by the "synaptic flow" it carries through a linearised copy of the
network (all parameters replaced by their absolute values, fed an all-ones input), and prunes
iteratively with an exponential schedule so that no layer collapses. It needs no data, so the
server can prune a randomly initialised network once and send clients the seed and the mask.

Decisions (our reconstruction of the HideNseek paper's server step; see docs/hidenseek.md):

* The copy runs in float64 and in eval mode (dropout off, BatchNorm uses running statistics).
* Linearisation: every parameter (weights, biases, BatchNorm affine) becomes ``|p|``; every
  BatchNorm's ``running_mean`` becomes 0 and ``running_var`` becomes ``|running_var|``. Eval-mode
  BatchNorm is then the positive affine map ``x * |gamma| / sqrt(var + eps) + |beta|``, so every
  activation stays non-negative, ReLU is the identity and R is a polynomial in ``|w|`` with
  non-negative coefficients -- the setting of SynFlow's conservation argument. (The reference
  implementation takes ``abs`` of the running mean instead, which can make pre-activations
  negative for pretrained statistics; at random init, mean 0 and var 1, both are identical.)
* Only conv and linear *weights* chosen by ``include`` are prunable (biases never are). For a
  :class:`~fedreid.models.reid.ReIDNet` the default covers the shared part (backbone and
  bottleneck) and never the client's ``classifier``.
* Scores use the current mask: ``score = |dR/dw * (w * mask)|``, and already-pruned weights are
  excluded from the ranking, so the masks shrink monotonically.
* The global threshold keeps exactly ``round(total * density ** (k / iterations))`` weights at
  iteration ``k``: strictly higher scores first, then ties at the threshold in a fixed order
  (flat index order, or a seeded random order when ``seed`` is given).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedreid.errors import ConfigError
from fedreid.models.reid import HEAD_PREFIX, ReIDNet

IncludeFn = Callable[[str, nn.Module], bool]
ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
IterationFn = Callable[[int, dict[str, torch.Tensor]], None]


def default_include(name: str, module: nn.Module) -> bool:
    """Conv and linear layers outside the client-owned ``classifier`` head.

    Args:
        name: the module's qualified name in the model (``named_modules``).
        module: the module itself.

    Examples:
        >>> default_include("backbone.0", nn.Conv2d(3, 8, 3))
        True
        >>> default_include("classifier", nn.Linear(4, 2))
        False
    """
    head = HEAD_PREFIX.rstrip(".")
    if name == head or name.startswith(HEAD_PREFIX):
        return False
    return isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d | nn.Linear)


def prunable_layers(model: nn.Module, include: IncludeFn | None = None) -> dict[str, nn.Module]:
    """The layers whose ``weight`` SynFlow prunes, by module name, in model order."""
    include = include or default_include
    return {
        name: mod
        for name, mod in model.named_modules()
        if include(name, mod) and isinstance(getattr(mod, "weight", None), nn.Parameter)
    }


def default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What SynFlow sums: a ReIDNet's embedding (its head is local), else ``model(x)``."""
    if isinstance(model, ReIDNet):
        return model.features(x)
    return model(x)


def _linearise(net: nn.Module) -> None:
    """Make every parameter non-negative and every eval-mode BatchNorm a positive affine map."""
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(False)
        for mod in net.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.zero_()
                mod.running_var.abs_()


def _keep_top(scores: np.ndarray, k: int, order: np.ndarray | None) -> np.ndarray:
    """Bool array keeping exactly the ``k`` largest scores; ties broken by ``order`` or index."""
    n = scores.size
    keep = np.zeros(n, dtype=bool)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    thresh = np.partition(scores, n - k)[n - k]  # the k-th largest value
    keep = scores > thresh
    need = k - int(keep.sum())
    if need > 0:
        ties = np.flatnonzero(scores == thresh)
        if order is not None:
            ties = ties[np.argsort(order[ties], kind="stable")]
        keep[ties[:need]] = True
    return keep


def _reserve_per_layer(
    scores: np.ndarray,
    alive: np.ndarray,
    offsets: np.ndarray,
    count: int,
    order: np.ndarray | None,
) -> None:
    """Raise each layer's ``count`` best surviving scores to +inf so the global cut keeps them."""
    bounds = np.searchsorted(alive, offsets)  # alive is ascending: layers are contiguous runs
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        seg = slice(lo, hi)
        top = _keep_top(scores[seg], count, None if order is None else order[seg])
        scores[seg][top] = math.inf


def synflow_masks(
    model: nn.Module,
    input_shape: Sequence[int],
    density: float,
    iterations: int = 100,
    *,
    include: IncludeFn | None = None,
    forward: ForwardFn | None = None,
    seed: int | None = None,
    min_per_layer: int = 0,
    on_iteration: IterationFn | None = None,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` at initialisation with iterative SynFlow; the model itself is untouched.

    Args:
        model: the randomly initialised network (any device; a float64 copy is scored).
        input_shape: shape of ONE input sample, without the batch dimension, e.g. ``(3, 64, 32)``;
            the all-ones input has batch size 1. Use the training resolution: at a smaller one,
            border taps of the deepest 3x3 convs only ever see padding and score zero.
        density: fraction of prunable weights to keep, in (0, 1]; exactly
            ``round(density * total)`` survive.
        iterations: pruning rounds of the exponential schedule (100 in the paper).
        include: ``include(name, module) -> bool`` choosing the prunable layers; defaults to
            :func:`default_include` (conv/linear, never ``classifier``).
        forward: ``forward(model, x) -> tensor`` whose sum is R; defaults to
            :func:`default_forward` (ReIDNet embedding, else ``model(x)``).
        seed: if given, ties at the threshold are broken in a random order drawn from this
            seed instead of flat index order. Results are deterministic either way.
        min_per_layer: keep at least this many weights in every prunable layer (each layer's
            own best-scored), the rest by the global threshold; 0 (default) is plain SynFlow.
            Plain SynFlow can empty a *parallel* branch such as a ResNet projection shortcut
            (it carries little flow next to the main path; the network stays connected).
        on_iteration: optional ``on_iteration(k, masks)`` called after each round ``k`` (1-based)
            with the current masks (fresh CPU tensors).

    Returns:
        ``{parameter name: bool mask}`` (on CPU, shaped like the weight) for each prunable
        weight, e.g. ``"backbone.0.weight"``; True = the weight survives.

    Examples:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> masks = synflow_masks(net, (8,), density=0.25, iterations=10)
        >>> sum(int(m.sum()) for m in masks.values())
        48
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"synflow density must be in (0, 1], got {density}")
    if iterations < 1:
        raise ConfigError(f"synflow iterations must be >= 1, got {iterations}")
    if min_per_layer < 0:
        raise ConfigError(f"synflow min_per_layer must be >= 0, got {min_per_layer}")
    forward = forward or default_forward
    net = copy.deepcopy(model).double().eval()
    layers = prunable_layers(net, include)
    if not layers:
        raise ConfigError("synflow found no prunable layers (check the include filter)")
    _linearise(net)
    wrapped = _Wrapped(net, forward)
    names = [f"{name}.weight" if name else "weight" for name in layers]
    shapes = [mod.weight.shape for mod in layers.values()]
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    offsets = np.cumsum([0, *sizes])
    reserved = sum(min(min_per_layer, n) for n in sizes)
    if reserved > round(total * density):
        raise ConfigError(
            f"synflow min_per_layer={min_per_layer} reserves {reserved} weights, more than the "
            f"{round(total * density)} that density={density} keeps"
        )
    # One flat copy of |w| holds every prunable weight; the layers see views of it through
    # functional_call, so dR/dw arrives as one flat gradient (no per-layer concatenation).
    flat_w = torch.cat([mod.weight.detach().flatten() for mod in layers.values()])
    flat_w.requires_grad_(True)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=flat_w.device)
    order = None if seed is None else np.random.default_rng(seed).permutation(total)
    alive = np.arange(total)  # flat indices of the surviving weights, ascending

    def current_masks() -> dict[str, torch.Tensor]:
        flat = np.zeros(total, dtype=bool)
        flat[alive] = True
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return {
            n: torch.from_numpy(p).view(shape)
            for n, p, shape in zip(names, parts, shapes, strict=True)
        }

    for k in range(1, iterations + 1):
        keep_n = round(total * density ** (k / iterations))
        views = flat_w.split(sizes)
        params = {
            "net." + n: v.view(shape) for n, v, shape in zip(names, views, shapes, strict=True)
        }
        r = torch.func.functional_call(wrapped, params, (x,)).sum()
        if not torch.isfinite(r):
            raise ConfigError(
                f"synflow objective overflowed float64 (R={r.item()}); use a smaller input_shape"
            )
        (grad,) = torch.autograd.grad(r, flat_w)
        with torch.no_grad():
            scores = grad.mul_(flat_w).abs_().cpu().numpy()[alive]
        alive_order = None if order is None else order[alive]
        if min_per_layer > 0:
            _reserve_per_layer(scores, alive, offsets, min_per_layer, alive_order)
        keep = _keep_top(scores, keep_n, alive_order)
        pruned = alive[~keep]
        alive = alive[keep]
        with torch.no_grad():
            flat_w[torch.from_numpy(pruned).to(flat_w.device)] = 0.0
        if on_iteration is not None:
            on_iteration(k, current_masks())
    return current_masks()


class _Wrapped(nn.Module):
    """Lets ``functional_call`` drive an arbitrary ``forward(net, x)``."""

    def __init__(self, net: nn.Module, forward: ForwardFn) -> None:
        super().__init__()
        self.net = net
        self.fn = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.net, x)


def mask_density(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of True entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / max(total, 1)
