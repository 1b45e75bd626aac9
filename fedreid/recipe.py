"""What makes two runs the same experiment: one rule for resume, compare's reuse, claims and
report.

A run's recipe is its config as dotted keys. Four things are not part of it:

- keys the caller frees (the run length for a resume, the seed for a study);
- :data:`SPEED_KEYS`, which change how fast a run goes but not what it computes;
- folders (``*root``, ``*data_dir``, ``*state_dir``), since data and runs may move;
- the sections the run's task does not read (:data:`UNUSED_BY_TASK`).

A key a saved config does not have (the code gained it after the run was made) takes the
value that reproduces how the code behaved before: :data:`LEGACY_VALUES` where the new
default changed the behaviour, the code default otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any

SPEED_KEYS = frozenset({"data.num_workers", "data.pin_memory", "data.eval_batch_size"})
"""Settings that change speed only: evaluation runs in eval mode, so its batch size does
not change a feature; loader workers and pinned memory do not change a batch."""

LEGACY_VALUES: dict[str, Any] = {
    "data.drop_last": False,  # before it existed, incomplete batches of 2+ images were kept
}
"""Keys added after runs were made whose code default differs from the old behaviour."""

PATH_SUFFIXES = ("root", "data_dir", "state_dir")

UNUSED_BY_TASK: dict[str, tuple[str, ...]] = {
    "reid": ("classification",),
    "classification": ("data", "model", "eval_local"),  # it reads classification.* instead
}
"""Config sections (top-level keys) a task never reads."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    from fedreid.config import Config

    return flatten(Config().to_dict())


def _free(key: str, free: Collection[str]) -> bool:
    top = key.split(".", 1)[0]
    return key in free or top in free or key in SPEED_KEYS or key.endswith(PATH_SUFFIXES)


def recipe(config: Mapping[str, Any], free: Collection[str] = ()) -> dict[str, Any]:
    """The dotted-key recipe of a saved or current config, missing keys filled in.

    Args:
        config: a nested config dict (``results.json``'s ``config``, ``Config.to_dict()``).
        free: keys (dotted, or a top-level section) that are not part of the recipe.
    """
    flat = flatten(config)
    for key, default in _defaults().items():
        flat.setdefault(key, LEGACY_VALUES.get(key, default))
    free = (*free, *UNUSED_BY_TASK.get(str(flat.get("task")), ()))
    return {k: v for k, v in flat.items() if not _free(k, free)}


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], free: Collection[str] = ()
) -> list[str]:
    """``key: old -> new`` for every recipe setting that differs between two configs.

    A key only one side has that the code no longer knows (a removed setting) is skipped.
    """
    a, b = recipe(old, free), recipe(new, free)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
