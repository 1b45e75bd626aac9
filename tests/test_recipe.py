"""The batch rule the loaders and the norm screen share, and the one rule for "same recipe"."""

from __future__ import annotations

import pytest

from fedreid.batching import drops_last, epoch_batches
from fedreid.config import compose
from fedreid.recipe import differences, flatten, recipe


@pytest.mark.parametrize(
    ("n", "drop_last", "batches"),
    [
        (64, True, 2),  # no incomplete batch
        (34, True, 1),  # 32 + 2: the 2 are dropped
        (34, False, 2),  # ... or kept
        (33, False, 1),  # a last batch of one is dropped either way
        (101, True, 3),  # 3 x 32 + 5
        (101, False, 4),
        (20, True, 1),  # smaller than one batch: the only batch is kept
        (1, True, 0),  # one image: nothing BatchNorm can train on
    ],
)
def test_epoch_batches(n: int, drop_last: bool, batches: int) -> None:
    assert epoch_batches(n, 32, drop_last) == batches
    assert drops_last(n, 32, drop_last) == (n % 32 != 0 and batches == n // 32)


def test_loader_follows_the_rule(tmp_path) -> None:
    """The ReID training loader yields exactly :func:`epoch_batches` batches."""
    from PIL import Image

    from fedreid.training import train_loader

    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 16)).save(path)
    items = [(str(path), i % 3, 0) for i in range(10)]
    for drop_last, expected in ((True, 2), (False, 3)):
        cfg = compose(["data.batch_size=4", f"data.drop_last={drop_last}"])
        assert len(train_loader(items, cfg.data, seed=0)) == expected
        assert expected == epoch_batches(10, 4, drop_last)


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def test_missing_keys_take_their_legacy_value() -> None:
    """A run saved before ``data.drop_last`` existed kept incomplete batches: it matches
    ``drop_last=false``, not today's default."""
    old = compose(["data=tiny", "eval_local=every"]).to_dict()
    del old["data"]["drop_last"]
    del old["eval_local"]  # added with its old behaviour ("every") as the code default
    assert recipe(old)["data.drop_last"] is False
    new = compose(["data=tiny", "data.drop_last=false"]).to_dict()
    assert differences(old, new) == ["eval_local: 'every' -> 'last'"]  # the main job's value
    assert differences(old, compose(["data=tiny", "eval_local=every"]).to_dict()) == [
        "data.drop_last: False -> True"
    ]


def test_free_speed_and_path_keys_are_not_the_recipe() -> None:
    a = compose(["data=tiny"]).to_dict()
    b = compose(
        ["data=tiny", "data.eval_batch_size=64", "data.root=/elsewhere", "seed=3", "num_rounds=9"]
    ).to_dict()
    assert differences(a, b, free=("seed", "num_rounds")) == []
    assert differences(a, b) == [f"num_rounds: {a['num_rounds']} -> 9", "seed: 0 -> 3"]
    c = compose(["data=tiny", "train.lr_backbone=0.5"]).to_dict()
    assert differences(a, c, free=("train",)) == []
    assert differences(a, c) == [f"train.lr_backbone: {a['train']['lr_backbone']!r} -> 0.5"]


def test_a_removed_setting_on_one_side_is_not_a_difference() -> None:
    a = compose(["data=tiny"]).to_dict()
    b = {**a, "gone": 1}
    assert differences(a, b) == []
    assert differences({**a, "gone": 2}, b) == ["gone: 2 -> 1"]


def test_sections_a_task_does_not_read_are_not_its_recipe() -> None:
    a = compose([], config_name="classify").to_dict()
    b = compose(["data.drop_last=false", "model.arch=resnet50"], config_name="classify")
    assert differences(a, b.to_dict()) == []
    reid = compose(["data.drop_last=false"]).to_dict()
    assert differences(compose([]).to_dict(), reid) == ["data.drop_last: True -> False"]
    other = compose(["classification.alpha=0.1"]).to_dict()
    assert differences(compose([]).to_dict(), other) == []
