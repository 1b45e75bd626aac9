"""Tests of the synthetic benchmark generator: layout, protocol, determinism, idempotency."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fedreid.data import load_market
from fedreid.data import synthetic as syn
from fedreid.data.market import parse_market_name
from fedreid.errors import ConfigError, DatasetError

MARKET_NAME = re.compile(r"^\d{4}_c\d+s1_\d{6}_\d{2}\.jpg$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset, seed 0, generated once for the module."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return syn.generate(root, "tiny", seed=0, progress=False)


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def manifest(root: Path) -> dict:
    """The generator's manifest of ``root``."""
    return json.loads((root / syn.MANIFEST).read_text())


def siblings(root: Path) -> list[str]:
    """Names next to ``root`` that start with its name (partial or trash leftovers)."""
    return sorted(p.name for p in root.parent.iterdir() if p.name.startswith(root.name))


def test_same_seed_gives_same_bytes(tiny: Path, tmp_path: Path) -> None:
    again = syn.generate(tmp_path / "again", "tiny", seed=0, progress=False)
    assert file_digests(again) == file_digests(tiny)


def test_other_seed_gives_other_images(tiny: Path, tmp_path: Path) -> None:
    other = file_digests(syn.generate(tmp_path / "other", "tiny", seed=1, progress=False))
    base = file_digests(tiny)
    common = [k for k in base if k in other and k.endswith(".jpg")]
    assert common, "same layout conventions expected"
    assert sum(base[k] == other[k] for k in common) == 0


def test_second_call_reuses_without_rewriting(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert syn.generate(tiny, "tiny", seed=0, progress=False) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before
    assert siblings(tiny) == ["tiny"]


def test_mismatch_or_damage_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()  # an empty folder is fine to fill
    stale = tmp_path / "set.partial-999999999"  # leftover of a dead process
    stale.mkdir()
    syn.generate(root, "tiny", seed=0, progress=False)
    assert manifest(root)["seed"] == 0
    assert not stale.exists()

    syn.generate(root, "tiny", seed=1, progress=False)
    assert manifest(root)["seed"] == 1
    assert siblings(root) == ["set"]

    victim = next((root / "cuhk03" / "query").iterdir())
    victim.unlink()  # an incomplete set is not reused
    syn.generate(root, "tiny", seed=1, progress=False)
    assert victim.exists()


def test_foreign_folder_is_rejected_and_kept(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        syn.generate(foreign, "tiny", progress=False)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        syn.generate(a_file, "tiny", progress=False)


def test_interruption_leaves_old_set_intact(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    calls = Counter()

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = syn.render_image
    monkeypatch.setattr(syn, "render_image", interrupted)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        syn.generate(fresh, "tiny", seed=0, progress=False)
    assert not fresh.exists() and siblings(fresh) == []

    before = file_digests(tiny)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        syn.generate(tiny, "tiny", seed=5, progress=False)  # a mismatch: would regenerate
    assert file_digests(tiny) == before
    assert siblings(tiny) == ["tiny"]


def test_layout_loads_with_expected_counts(tiny: Path) -> None:
    info = manifest(tiny)
    assert info["preset"] == "tiny" and info["version"] == syn.GENERATOR_VERSION
    for spec in syn.TINY.domains:
        ds = load_market(tiny / spec.name)
        counts = info["domains"][spec.name]
        assert len(ds.train) == counts["train"] > 0
        assert len(ds.query) == counts["query"] > 0
        assert len(ds.gallery) == counts["gallery"] > 0  # distractors included
        assert ds.num_train_pids == spec.train_ids
        assert len({pid for _, pid, _ in ds.query}) == spec.test_ids
        cams = {c for split in (ds.train, ds.query, ds.gallery) for _, _, c in split}
        assert cams <= set(range(spec.num_cams))
        for path, _, _ in ds.train + ds.query + ds.gallery:
            assert MARKET_NAME.match(Path(path).name), path


def test_every_query_has_a_cross_camera_match(tiny: Path) -> None:
    for name in syn.domain_names("tiny"):
        ds = load_market(tiny / name)
        gallery = {(pid, cam) for _, pid, cam in ds.gallery}
        for path, pid, cam in ds.query:
            assert any(p == pid and c != cam for p, c in gallery), path


def test_train_and_test_identities_are_disjoint(tiny: Path) -> None:
    for name in syn.domain_names("tiny"):
        ds = load_market(tiny / name)
        train = {parse_market_name(Path(p))[0] for p, _, _ in ds.train}  # raw, not relabelled
        test = {pid for _, pid, _ in ds.query + ds.gallery} - {0}
        assert train and test and not train & test


def test_distractors_only_where_configured(tiny: Path) -> None:
    for spec in syn.TINY.domains:
        ds = load_market(tiny / spec.name)
        assert sum(pid == 0 for _, pid, _ in ds.gallery) == spec.distractors


def test_public_folder_is_flat_and_unlabeled(tiny: Path) -> None:
    public = tiny / syn.PUBLIC_DIR
    names = sorted(p.name for p in public.iterdir())
    assert names and len(names) == manifest(tiny)["public"]
    assert all(re.fullmatch(r"\d{6}\.jpg", n) for n in names)


def test_every_image_is_128_by_64_rgb(tiny: Path) -> None:
    images = list(tiny.rglob("*.jpg"))
    assert len(images) == manifest(tiny)["total_images"]
    for path in images:
        with Image.open(path) as img:
            assert img.size == (64, 128) and img.mode == "RGB", path


def test_colours_collide_but_identities_differ() -> None:
    people = syn.domain_identities("market1501", "tiny", seed=0)
    uppers = Counter(p.upper for p in people.values())
    assert uppers.most_common(1)[0][1] >= 2  # two people share an upper colour...
    assert len({p.key() for p in people.values()}) == len(people)  # ...yet differ in detail
    same = [p for p in people.values() if p.upper == uppers.most_common(1)[0][0]]
    assert same[0] != same[1]


def test_default_preset_is_unbalanced_and_sized() -> None:
    train, test = {}, 0
    for spec in syn.DEFAULT.domains:
        job = syn._plan_domain(spec, syn.build_domain(spec, 0, syn.DEFAULT), 0)
        train[spec.name] = sum("/bounding_box_train/" in s.relpath for s in job.shots)
        test += sum("/bounding_box_train/" not in s.relpath for s in job.shots)
    assert list(train) == list(syn.ALL_DOMAINS) == syn.domain_names("default")
    assert list(train.values()) == sorted(train.values(), reverse=True)
    assert 4000 <= sum(train.values()) <= 5000 and 2000 <= test <= 3000
    assert train["msmt17"] > 10 * train["ilids"]


def test_presets_and_domain_names() -> None:
    assert (
        syn.DOMAINS_BY_PRESET["tiny"]
        == syn.domain_names("tiny")
        == [d.name for d in syn.TINY.domains]
    )
    assert len(syn.domain_names("large")) == 9
    assert syn.LARGE.domains[0].train_ids == 10 * syn.DEFAULT.domains[0].train_ids
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        syn.domain_names("huge")
    with pytest.raises(ConfigError, match="bad DomainSpec"):
        syn.DomainSpec("viper", 1, 5, (1, 2), 5, (1, 1), 1, (1, 1))


def test_command_line(tiny: Path, tmp_path: Path, capsys) -> None:
    assert syn.main(["--root", str(tiny), "--preset", "tiny", "--seed", "0"]) == 0
    assert "market1501" in capsys.readouterr().out
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    assert syn.main(["--root", str(foreign), "--preset", "tiny", "--quiet"]) == 2
