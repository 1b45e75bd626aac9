"""Models: the ReID network (shared backbone + local head), supermask layers, SynFlow."""

from fedreid.models.reid import (
    ARCHS,
    ReIDNet,
    head_state,
    is_bn_buffer,
    load_shared,
    make_head,
    shared_state,
)

__all__ = [
    "ARCHS",
    "ReIDNet",
    "head_state",
    "is_bn_buffer",
    "load_shared",
    "make_head",
    "shared_state",
]
