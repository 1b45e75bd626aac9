"""Export a run's retrieval model (image -> embedding) to ONNX or TorchScript, with a parity check.

What is exported (decision): the *retrieval feature* exactly as ``fedreid eval`` and
``fedreid extract`` compute it, in float32: ``ReIDNet.features`` in eval mode on the image and
on its horizontal mirror, summed, then L2-normalised (``--no-flip``: one pass, still
L2-normalised). Normalisation is inside the model so that two outputs compare by a dot product
(cosine similarity) with nothing else to get right; flip averaging is inside by default because
the sum must come *before* the normalisation (summing two normalised outputs gives another
feature than the one the run was evaluated with).

Input: ``images`` float32 ``[N, 3, H, W]``, RGB scaled to [0, 1], resized to the run's
``data.height`` x ``data.width`` (bicubic) and normalised with the ImageNet mean and standard
deviation; any batch size. Output: ``embeddings`` float32 ``[N, D]`` (``D = model.embed_dim``),
unit length. A JSON sidecar (``FILE.json``) records all of this with the run it came from.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedreid.config import Config
from fedreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fedreid.errors import ConfigError, FedReIDError

log = logging.getLogger("fedreid")

FORMATS = ("onnx", "torchscript")
PARITY_TOLERANCE = 1e-4


class ExportError(FedReIDError, RuntimeError):
    """The exporter failed or the exported model disagrees with PyTorch."""


class RetrievalModel(nn.Module):
    """``normalize(f(x) + f(flip(x)))`` (or ``normalize(f(x))``) for ``f = model.features``."""

    def __init__(self, model: nn.Module, flip: bool = True) -> None:
        super().__init__()
        self.model = model
        self.flip = flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.model.features(images)
        if self.flip:
            emb = emb + self.model.features(torch.flip(images, dims=[3]))
        return nn.functional.normalize(emb, dim=1)


def _onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so in one line)
    except ImportError as err:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install -e .") from err
    batch = torch.export.Dim("batch", min=1, max=65536)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):  # the exporter prints its progress
            torch.onnx.export(
                module,
                (example,),
                str(out),
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_shapes={"images": {0: batch}},
                dynamo=True,
                external_data=False,
            )
    except Exception as err:
        raise ExportError(f"ONNX export failed: {str(err).splitlines()[0]}") from err


def _torchscript(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            traced = torch.jit.trace(module, example, check_trace=True)
            traced.save(str(out))
    except Exception as err:
        raise ExportError(f"TorchScript export failed: {str(err).splitlines()[0]}") from err


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Embed ``images`` with an exported file (onnxruntime for ONNX, torch.jit for TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["embeddings"], {"images": images.astype(np.float32)})[0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(images)).numpy()


def export(
    model: nn.Module,
    cfg: Config,
    fmt: str,
    out: Path,
    *,
    flip: bool = True,
    source: dict[str, Any] | None = None,
    parity_images: int = 4,
) -> dict[str, Any]:
    """Write ``out`` (and ``out.json``); check parity on random inputs; returns the sidecar.

    Raises:
        ConfigError: an unknown format.
        ExportError: the exporter failed, or the exported model's output differs from
            PyTorch's by more than :data:`PARITY_TOLERANCE`.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose {' or '.join(FORMATS)}")
    module = RetrievalModel(model.cpu().eval().float(), flip=flip).eval()
    h, w = cfg.data.height, cfg.data.width
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, h, w, generator=generator)
    out.parent.mkdir(parents=True, exist_ok=True)
    (_onnx if fmt == "onnx" else _torchscript)(module, example, out)
    check = torch.randn(parity_images, 3, h, w, generator=generator)
    with torch.no_grad():
        expected = module(check).numpy()
    got = run_exported(out, fmt, check.numpy())
    max_diff = float(np.abs(got - expected).max())
    if not max_diff <= PARITY_TOLERANCE:
        raise ExportError(
            f"exported model differs from PyTorch by {max_diff:.2e} (> {PARITY_TOLERANCE})"
        )
    sidecar = {
        "format": fmt,
        "file": out.name,
        "input": {
            "name": "images",
            "shape": ["N", 3, h, w],
            "dtype": "float32",
            "preprocessing": (
                f"RGB, resize to {h}x{w} (bicubic), scale to [0, 1], subtract mean and divide "
                "by std per channel"
            ),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "output": {
            "name": "embeddings",
            "shape": ["N", int(getattr(model, "embed_dim", got.shape[1]))],
            "l2_normalised": True,
            "flip_averaged": flip,
            "distance": "cosine: 1 - a . b",
        },
        "parity": {"max_abs_diff": max_diff, "images": parity_images},
        "source": source or {},
    }
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=1))
    return sidecar
