"""Supermask layers for HideNseek: frozen random weights, a fixed pruning mask, learned signs.

A masked layer keeps the weight it replaces as a frozen buffer ``w0``, a fixed boolean pruning
mask ``mask`` (from SynFlow) and trainable real scores ``scores`` of the weight's shape. Its
effective weight is

* ``mode="sign"`` (HideNseek): ``w0 * mask * sign(scores)``;
* ``mode="binary"`` (FedMask-style baseline): ``w0 * mask * [scores >= 0]``, a learned {0, 1}
  mask, on the same SynFlow subnetwork as HideNseek (``strategy.binary_scope=pruned``) or with
  an all-ones pruning mask over ALL weights (``binary_scope=all``);
* ``mode="fedpm"`` (FedPM-style probabilistic mask): keep-probability
  ``p = sigmoid(scores / scale)``; in training mode every forward pass draws
  ``m ~ Bernoulli(p)`` and computes ``w0 * mask * m``; in eval mode the most likely mask
  ``[p >= 0.5]`` (= ``[scores >= 0]``, binary mode's mask) is used, so evaluation is
  deterministic. ``scale`` is the score magnitude (the layer's mean ``|w0|`` by default), so
  scores live on the same scale in all three modes and one ``score_lr`` suits them all.

Decisions:

* One rule for both modes: a score whose sign bit is clear (``s > 0`` or ``s = +0.0``) means
  +1 / kept, a set sign bit (``s < 0`` or ``-0.0``) means -1 / dropped; so ``sign(+0.0) = +1``
  and, for binary mode, kept iff ``sigmoid(s) >= 0.5`` (up to the sign of zero). The forward
  and :func:`get_signs` read the same bit, so the uploaded bits are exactly the trained signs.
* Straight-through estimator: the sign / step is treated as the identity in the backward pass,
  so ``d weight / d scores = w0 * mask`` in sign and binary modes. FedPM's estimator treats the
  Bernoulli draw as the identity and keeps the sigmoid's slope: ``d weight / d scores =
  w0 * mask * 4 p (1 - p)``, FedPM's ``sigmoid'`` scaled so that it equals binary mode's at
  ``p = 0.5`` (a per-layer learning-rate factor ``4 * scale``, which keeps one ``score_lr``).
  The estimator is NOT clipped to ``|s| <= 1``: clipping would stop the gradient of a score
  that overshot and freeze its sign for good, while every surviving sign must stay
  trainable; pruned positions get zero gradient anyway.
* ``w0 * mask`` is cached as one non-persistent buffer ``w0m`` so the forward costs one
  ``torch.where`` per layer; it is rebuilt on ``load_state_dict`` and by :meth:`refresh`.
* Initial scores are ``+magnitude`` everywhere, so a fresh layer computes exactly
  ``w0 * mask`` (with an all-ones mask: the dense layer it replaced). The default magnitude is
  the layer's mean ``|w0|``, the scale of the Kaiming-initialised scores that supermask
  training uses, so one learning rate suits every layer; pass a float for a fixed value.
* Biases are frozen buffers. :func:`convert_to_supermask` freezes every other parameter of
  the model except the scores and the client's head (``classifier.``); with ``train_bn=True``
  BatchNorm affine parameters stay trainable too (they are then client-local, not part of
  the 1-bit upload). BatchNorm running statistics update in train mode either way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedreid.errors import ConfigError, UpdateError
from fedreid.models.synflow import default_include

Mode = Literal["sign", "binary", "fedpm"]
MODES = ("sign", "binary", "fedpm")
PROB_EPS = 1e-3
"""FedPM: keep-probabilities are clipped to ``[PROB_EPS, 1 - PROB_EPS]`` before the logit."""


class _MaskedWeight(torch.autograd.Function):
    """Masked weight forward; straight-through ``grad * w0m`` backward.

    Sign mode computes ``copysign(1, s) * w0m`` (one allocation, two passes); binary mode
    ``where(signbit(s), 0, w0m)``.
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, w0m: torch.Tensor, sign: bool) -> torch.Tensor:
        ctx.save_for_backward(w0m)
        if sign:
            one = torch.ones((), dtype=scores.dtype, device=scores.device)
            return torch.copysign(one, scores).mul_(w0m)
        zero = torch.zeros((), dtype=w0m.dtype, device=w0m.device)
        return torch.where(torch.signbit(scores), zero, w0m)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (w0m,) = ctx.saved_tensors
        return grad * w0m, None, None


class _SampledMask(torch.autograd.Function):
    """FedPM: ``w0m * Bernoulli(p)``, ``p = sigmoid(scores / scale)``; backward
    ``grad * w0m * 4 p (1 - p)`` (straight through the draw, the sigmoid's slope kept)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, w0m: torch.Tensor, scale: float) -> torch.Tensor:
        p = torch.sigmoid(scores / scale)
        ctx.save_for_backward(w0m, p)
        keep = torch.rand_like(p) < p
        return torch.where(keep, w0m, torch.zeros((), dtype=w0m.dtype, device=w0m.device))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        w0m, p = ctx.saved_tensors
        return grad * w0m * (4.0 * p * (1.0 - p)), None, None


class MaskedLayer(nn.Module):
    """Common state of :class:`MaskedConv2d` and :class:`MaskedLinear` (see the module docs).

    Buffers: ``w0`` (frozen weight), ``mask`` (bool pruning mask), ``bias`` (frozen, or None);
    parameter: ``scores``.
    """

    w0: torch.Tensor
    mask: torch.Tensor
    w0m: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        mode: Mode = "sign",
        magnitude: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"supermask mode must be one of {MODES}, got {mode!r}")
        weight = weight.detach()
        if mask is None:
            mask = torch.ones_like(weight, dtype=torch.bool)
        if mask.shape != weight.shape:
            raise ConfigError(
                f"pruning mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}"
            )
        self.mode = mode
        self.register_buffer("w0", weight.clone())
        self.register_buffer("mask", mask.detach().to(device=weight.device, dtype=torch.bool))
        self.register_buffer("w0m", torch.empty(0), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.scores = nn.Parameter(torch.empty_like(weight))
        self.scale = 1.0  # FedPM: p = sigmoid(scores / scale); set with the magnitude
        self.refresh()
        self.reset_scores(magnitude)

    def refresh(self) -> None:
        """Rebuild the cached ``w0 * mask`` (after editing ``w0`` or ``mask`` in place)."""
        self.w0m = self.w0 * self.mask

    def default_magnitude(self) -> float:
        """Mean ``|w0|`` over the surviving positions (1.0 if none survive or all are zero)."""
        kept = self.w0[self.mask]
        mag = float(kept.abs().mean()) if kept.numel() else 0.0
        return mag if mag > 0 else 1.0

    @torch.no_grad()
    def reset_scores(self, magnitude: float | None = None) -> None:
        """Set every score to ``+magnitude``: the layer then computes ``w0 * mask``."""
        self.scale = self._magnitude(magnitude)
        self.scores.fill_(self.scale)

    def _magnitude(self, magnitude: float | None) -> float:
        mag = self.default_magnitude() if magnitude is None else float(magnitude)
        if mag <= 0:
            raise ConfigError(f"score magnitude must be > 0, got {mag}")
        return mag

    def effective_weight(self) -> torch.Tensor:
        """The effective weight, differentiable w.r.t. ``scores`` (straight-through)."""
        if self.mode == "fedpm" and self.training:
            return _SampledMask.apply(self.scores, self.w0m, self.scale)
        return _MaskedWeight.apply(self.scores, self.w0m, self.mode == "sign")

    def deterministic_weight(self) -> torch.Tensor:
        """The effective weight with FedPM's most likely mask (never a random draw)."""
        return _MaskedWeight.apply(self.scores, self.w0m, self.mode == "sign")

    def bits(self) -> torch.Tensor:
        """Score bits at the surviving positions, flattened: True = +1 (sign) / kept (binary,
        and FedPM's most likely mask)."""
        return ~torch.signbit(self.scores.detach())[self.mask]

    def probs(self) -> torch.Tensor:
        """FedPM keep-probabilities ``sigmoid(scores / scale)`` at the surviving positions."""
        return torch.sigmoid(self.scores.detach()[self.mask] / self.scale)

    @torch.no_grad()
    def sample_bits(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One Bernoulli draw of the FedPM mask at the surviving positions (the upload)."""
        p = self.probs().cpu()
        return torch.rand(p.shape, generator=generator, dtype=p.dtype) < p

    @torch.no_grad()
    def set_probs(self, probs: torch.Tensor, magnitude: float | None = None) -> None:
        """FedPM: scores := ``scale * logit(p)`` (p clipped to ``[PROB_EPS, 1 - PROB_EPS]``)."""
        self.scale = self._magnitude(magnitude)
        p = probs.to(device=self.scores.device, dtype=torch.float64).flatten()
        p = p.clamp(PROB_EPS, 1.0 - PROB_EPS)
        self.scores.fill_(self.scale)
        self.scores[self.mask] = (self.scale * torch.logit(p)).to(self.scores.dtype)

    @torch.no_grad()
    def set_signed(self, bits: torch.Tensor, magnitudes: torch.Tensor) -> None:
        """Scores := ``copysign(|own score|, global sign)`` at the surviving positions.

        The confidence-preserving protocol: a client keeps its score magnitudes and takes only
        the signs from the vote (a magnitude of 0 keeps the bit through the sign of zero).
        """
        bits = bits.to(device=self.scores.device, dtype=torch.bool).flatten()
        mags = magnitudes.to(device=self.scores.device, dtype=self.scores.dtype).abs().flatten()
        signed = torch.where(bits, mags, -mags)
        self.scores[self.mask] = signed

    @torch.no_grad()
    def set_bits(self, bits: torch.Tensor, magnitude: float | None = None) -> None:
        """Scores := ``+/-magnitude`` from ``bits`` at the surviving positions (+ elsewhere)."""
        mag = self._magnitude(magnitude)
        self.scale = mag
        bits = bits.to(device=self.scores.device, dtype=torch.bool).flatten()
        self.scores.fill_(mag)
        self.scores[self.mask] = torch.where(bits, mag, -mag).to(self.scores.dtype)

    def num_surviving(self) -> int:
        """Number of weights the pruning mask keeps."""
        return int(self.mask.sum())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.w0.shape)}, mode={self.mode}, "
            f"surviving={self.num_surviving()}/{self.w0.numel()}, bias={self.bias is not None}"
        )


class MaskedConv2d(MaskedLayer):
    """A :class:`MaskedLayer` standing in for an ``nn.Conv2d`` (same stride, padding, groups).

    Examples:
        >>> conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        >>> layer = MaskedConv2d.from_dense(conv)
        >>> bool(torch.equal(layer(torch.ones(1, 3, 5, 5)), conv(torch.ones(1, 3, 5, 5))))
        True
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        mode: Mode = "sign",
        magnitude: float | None = None,
        *,
        stride: tuple[int, ...] = (1, 1),
        padding: str | tuple[int, ...] = (0, 0),
        dilation: tuple[int, ...] = (1, 1),
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(weight, bias, mask, mode, magnitude)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self._pad: list[int] = []
        if padding_mode != "zeros":
            if isinstance(padding, str):
                raise ConfigError("string padding with a non-zeros padding_mode is unsupported")
            self._pad = [p for p in reversed(padding) for _ in range(2)]

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        mask: torch.Tensor | None = None,
        mode: Mode = "sign",
        magnitude: float | None = None,
    ) -> MaskedConv2d:
        """Wrap ``conv``: ``w0`` and the frozen bias are copies of its current tensors."""
        return cls(
            conv.weight,
            conv.bias,
            mask,
            mode,
            magnitude,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with the effective weight."""
        if self._pad:
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(
                x, self.effective_weight(), self.bias, self.stride, 0, self.dilation, self.groups
            )
        return F.conv2d(
            x,
            self.effective_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class MaskedLinear(MaskedLayer):
    """A :class:`MaskedLayer` standing in for an ``nn.Linear``.

    Examples:
        >>> layer = MaskedLinear(torch.tensor([[1.0, -2.0]]), None)
        >>> with torch.no_grad():
        ...     _ = layer.scores.copy_(torch.tensor([[-1.0, 1.0]]))
        >>> layer.effective_weight()
        tensor([[-1., -2.]], grad_fn=<_MaskedWeightBackward>)
    """

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        mask: torch.Tensor | None = None,
        mode: Mode = "sign",
        magnitude: float | None = None,
    ) -> MaskedLinear:
        """Wrap ``linear``: ``w0`` and the frozen bias are copies of its current tensors."""
        return cls(linear.weight, linear.bias, mask, mode, magnitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affine map with the effective weight."""
        return F.linear(x, self.effective_weight(), self.bias)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert_to_supermask(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    mode: Mode = "sign",
    include: Callable[[str, nn.Module], bool] | None = None,
    *,
    magnitude: float | None = None,
    train_bn: bool = False,
    trainable_prefixes: Iterable[str] = ("classifier.",),
) -> nn.Module:
    """Swap the selected conv/linear layers of ``model`` for masked layers, in place.

    Args:
        model: e.g. a :class:`~fedreid.models.reid.ReIDNet` or
            :class:`~fedreid.models.convnet.Conv4`, freshly initialised from the shared seed.
        masks: ``{"<layer>.weight": bool mask}`` from
            :func:`~fedreid.models.synflow.synflow_masks`; must name exactly the selected
            layers. None means all-ones masks (the usual choice for ``mode="binary"``).
        mode: ``"sign"`` (HideNseek) or ``"binary"`` (FedMask-style {0, 1} mask).
        include: ``include(name, module) -> bool`` picking the layers; defaults to
            :func:`~fedreid.models.synflow.default_include` (conv/linear, never ``classifier``),
            the same filter SynFlow uses, so the mask keys line up.
        magnitude: initial score magnitude (default: each layer's mean ``|w0|``).
        train_bn: keep BatchNorm affine parameters trainable (client-local); default frozen.
        trainable_prefixes: parameter-name prefixes left untouched (the client's head).

    Returns:
        ``model`` itself. Trainable afterwards: the scores, parameters under
        ``trainable_prefixes`` and, with ``train_bn``, BatchNorm affine parameters.

    Examples:
        >>> from fedreid.models.convnet import Conv4
        >>> net = convert_to_supermask(Conv4(3, 10, 32))
        >>> [n for n, p in net.named_parameters() if p.requires_grad][:2]
        ['conv.0.scores', 'conv.2.scores']
    """
    include = include or default_include
    selected = {
        name: mod
        for name, mod in model.named_modules()
        if name and include(name, mod) and not isinstance(mod, MaskedLayer)
    }
    if not selected:
        raise ConfigError("convert_to_supermask selected no layers (check the include filter)")
    if masks is not None:
        expected = {f"{name}.weight" for name in selected}
        if set(masks) != expected:
            missing = sorted(expected - set(masks))[:3]
            extra = sorted(set(masks) - expected)[:3]
            raise ConfigError(
                f"pruning masks do not match the layers: missing {missing} extra {extra}"
            )
    for name, mod in selected.items():
        mask = None if masks is None else masks[f"{name}.weight"].to(mod.weight.device)
        if type(mod) is nn.Conv2d:
            new: MaskedLayer = MaskedConv2d.from_dense(mod, mask, mode, magnitude)
        elif type(mod) is nn.Linear:
            new = MaskedLinear.from_dense(mod, mask, mode, magnitude)
        else:
            raise ConfigError(f"cannot mask layer {name!r} of type {type(mod).__name__}")
        _set_submodule(model, name, new)
    prefixes = tuple(trainable_prefixes)
    bn_params = set()
    if train_bn:
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                bn_params.update(id(p) for p in mod.parameters(recurse=False))
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            continue
        is_score = name.endswith("scores") and isinstance(
            model.get_submodule(name.rpartition(".")[0]), MaskedLayer
        )
        p.requires_grad_(is_score or id(p) in bn_params)
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedLayer]:
    """The masked layers of ``model`` by module name, in model order."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, MaskedLayer)}


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable scores of every masked layer (for the optimiser's score group)."""
    return [mod.scores for mod in masked_layers(model).values()]


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fixed pruning masks, keyed like SynFlow's output (``"<layer>.weight"``)."""
    return {f"{name}.weight": mod.mask.detach().cpu() for name, mod in masked_layers(model).items()}


def get_signs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Score bits at the surviving positions: ``{"<layer>.weight": 1-D bool tensor}`` on CPU.

    True = +1 (sign mode) or kept (binary mode); the order within a layer is the flattened
    (row-major) order of the surviving positions. These are the 1-bit-per-weight upload.

    Examples:
        >>> layer = nn.Sequential(MaskedLinear(torch.ones(2, 2), None))
        >>> get_signs(layer)["0.weight"].tolist()
        [True, True, True, True]
    """
    return {f"{name}.weight": mod.bits().cpu() for name, mod in masked_layers(model).items()}


def set_signs(
    model: nn.Module, signs: Mapping[str, torch.Tensor], magnitude: float | None = None
) -> None:
    """Initialise the scores from sign bits: ``+magnitude`` for True, ``-magnitude`` for False.

    Args:
        model: a model converted by :func:`convert_to_supermask`.
        signs: exactly the keys and lengths :func:`get_signs` returns (e.g. the server's
            aggregated global signs).
        magnitude: score magnitude; default each layer's mean ``|w0|`` over surviving weights.

    Raises:
        UpdateError: keys, dtype or lengths do not match the model's masked layers.
    """
    layers = {f"{name}.weight": mod for name, mod in masked_layers(model).items()}
    if set(signs) != set(layers):
        missing = sorted(set(layers) - set(signs))[:3]
        extra = sorted(set(signs) - set(layers))[:3]
        raise UpdateError(
            f"sign bits do not match the masked layers: missing {missing} extra {extra}"
        )
    for key, mod in layers.items():
        bits = torch.as_tensor(signs[key])
        if bits.dtype != torch.bool:
            raise UpdateError(f"sign bits for {key} must be bool, got {bits.dtype}")
        if bits.numel() != mod.num_surviving():
            raise UpdateError(
                f"sign bits for {key}: {bits.numel()} values, expected {mod.num_surviving()}"
            )
        mod.set_bits(bits, magnitude)


def _matching_layers(
    model: nn.Module, values: Mapping[str, torch.Tensor], what: str
) -> dict[str, MaskedLayer]:
    """The masked layers by ``"<layer>.weight"``; ``values`` must name each with one entry per
    surviving weight."""
    layers = {f"{name}.weight": mod for name, mod in masked_layers(model).items()}
    if set(values) != set(layers):
        missing = sorted(set(layers) - set(values))[:3]
        extra = sorted(set(values) - set(layers))[:3]
        raise UpdateError(f"{what} do not match the masked layers: missing {missing} extra {extra}")
    for key, mod in layers.items():
        if torch.as_tensor(values[key]).numel() != mod.num_surviving():
            raise UpdateError(
                f"{what} for {key}: {torch.as_tensor(values[key]).numel()} values, expected "
                f"{mod.num_surviving()}"
            )
    return layers


def get_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """The real scores at the surviving positions (``{"<layer>.weight": 1-D float}``, CPU)."""
    return {
        f"{name}.weight": mod.scores.detach()[mod.mask].cpu().clone()
        for name, mod in masked_layers(model).items()
    }


def set_signed_scores(
    model: nn.Module, signs: Mapping[str, torch.Tensor], magnitudes: Mapping[str, torch.Tensor]
) -> None:
    """Confidence-preserving start: ``|magnitudes|`` with the signs of ``signs`` (bool).

    Args:
        model: a converted model.
        signs: the global bits (:func:`get_signs`'s layout).
        magnitudes: this client's own scores from its last round (:func:`get_scores`).
    """
    layers = _matching_layers(model, signs, "sign bits")
    _matching_layers(model, magnitudes, "stored scores")
    for key, mod in layers.items():
        mod.set_signed(torch.as_tensor(signs[key]), torch.as_tensor(magnitudes[key]))


def set_probs(
    model: nn.Module, probs: Mapping[str, torch.Tensor], magnitude: float | None = None
) -> None:
    """FedPM: scores := ``scale * logit(p)`` from the global keep-probabilities (in [0, 1])."""
    for key, mod in _matching_layers(model, probs, "keep-probabilities").items():
        p = torch.as_tensor(probs[key])
        if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            raise UpdateError(f"keep-probabilities for {key} must lie in [0, 1]")
        mod.set_probs(p, magnitude)


def sample_bits(
    model: nn.Module, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """FedPM's upload: one Bernoulli draw per surviving weight (:func:`get_signs`'s layout)."""
    return {
        f"{name}.weight": mod.sample_bits(generator) for name, mod in masked_layers(model).items()
    }


def count_surviving(model: nn.Module) -> int:
    """Weights the pruning masks keep, over all masked layers (= bits per upload)."""
    return sum(mod.num_surviving() for mod in masked_layers(model).values())


def count_maskable(model: nn.Module) -> int:
    """All weights of the masked layers, pruned or not."""
    return sum(mod.w0.numel() for mod in masked_layers(model).values())


def to_dense(model: nn.Module) -> nn.Module:
    """A deep copy with every masked layer replaced by a plain layer holding its effective weight.

    Useful for evaluation and export: the copy runs at dense speed with no scores. FedPM layers
    contribute their most likely mask ``[p >= 0.5]``, so the copy is deterministic.
    """
    dense = copy.deepcopy(model)
    for name, mod in masked_layers(dense).items():
        with torch.no_grad():
            weight = mod.deterministic_weight().detach().clone()
        bias = mod.bias
        if isinstance(mod, MaskedConv2d):
            new: nn.Module = nn.Conv2d(
                weight.shape[1] * mod.groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=mod.stride,
                padding=mod.padding,
                dilation=mod.dilation,
                groups=mod.groups,
                bias=bias is not None,
                padding_mode=mod.padding_mode,
                device=weight.device,
                dtype=weight.dtype,
            )
        else:
            new = nn.Linear(
                weight.shape[1],
                weight.shape[0],
                bias=bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
        with torch.no_grad():
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias)
        _set_submodule(dense, name, new)
    return dense
