"""How many training batches a client's epoch has: the one rule the loaders and the server's
step count (the norm screen's allowance) share."""

from __future__ import annotations


def drops_last(num_examples: int, batch_size: int, drop_last: bool) -> bool:
    """Whether the training loader drops the epoch's last, incomplete batch.

    A batch of one image is always dropped (BatchNorm cannot train on it). With
    ``drop_last`` (torchreid's and fast-reid's training loaders) every incomplete last batch
    is, as long as a full batch remains: BatchNorm on a last batch of 2-3 images gives a
    step many times the size of the others, which the norm screen would rightly exclude.
    """
    last = num_examples % batch_size
    return last == 1 or (drop_last and last != 0 and num_examples > batch_size)


def epoch_batches(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch over ``num_examples`` images (see :func:`drops_last`)."""
    full, last = divmod(num_examples, batch_size)
    return full + (1 if last and not drops_last(num_examples, batch_size, drop_last) else 0)
