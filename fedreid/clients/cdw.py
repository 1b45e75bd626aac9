"""The client's half of cosine-distance weighting (CDW): how far training moved its logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_distance(old: torch.Tensor, new: torch.Tensor) -> float:
    """``mean(1 - cos(old_i, new_i))`` over the rows (images) of two logit matrices.

    ``old`` = logits of the received global model with the head from before training;
    ``new`` = logits of the trained model with the trained head, on the same images.
    """
    if old.shape != new.shape or old.ndim != 2 or old.shape[0] == 0:
        raise ValueError(
            f"logit matrices must be equal non-empty [N, C], got "
            f"{tuple(old.shape)} and {tuple(new.shape)}"
        )
    return float((1.0 - F.cosine_similarity(old.double(), new.double(), dim=1)).mean())
