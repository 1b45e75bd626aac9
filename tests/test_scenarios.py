"""Split scenarios (by camera, by identity), their client lists and ``python -m fedreid.data``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedreid.config import DataConfig, compose
from fedreid.data import load_market
from fedreid.data.__main__ import main as data_main
from fedreid.data.scenarios import client_specs, split_specs
from fedreid.data.split import camera_part, identity_groups, identity_part
from fedreid.data.types import ReIDDataset
from fedreid.errors import ConfigError, DatasetError
from tests.conftest import write_market

NUM_IDS, CAMS, PER_CAM = 10, 3, 2
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A parent data folder holding a Market-layout ``market1501`` (10 ids x 3 cameras x 2)."""
    write_market(tmp_path / "market1501", num_ids=NUM_IDS, cams=CAMS, per_cam=PER_CAM)
    return tmp_path


@pytest.fixture
def market(data_root: Path) -> ReIDDataset:
    return load_market(data_root / "market1501")


def original_pid(path: str) -> int:
    """The pid written in a Market file name (relabelled pids lose it)."""
    return int(Path(path).name.split("_")[0])


def assert_relabelled(ds: ReIDDataset) -> None:
    assert sorted({pid for _, pid, _ in ds.train}) == list(range(ds.num_train_pids))
    by_path = {p: pid for p, pid, _ in ds.train}
    # one original identity <-> one new label
    pairs = {(original_pid(p), new) for p, new in by_path.items()}
    assert len(pairs) == len({o for o, _ in pairs}) == len({n for _, n in pairs})


def real_data(root: Path, *extra: str) -> list[str]:
    return ["data.source=real", f"data.root={root}", "data.datasets=[market1501]", *extra]


# --------------------------------------------------------------------------------------------
# camera_part / identity_part
# --------------------------------------------------------------------------------------------


def test_camera_part_owns_exactly_one_camera(market: ReIDDataset) -> None:
    seen: list[str] = []
    for cam in range(CAMS):
        part = camera_part(market, cam)
        assert {c for _, _, c in part.train} == {cam}
        assert len(part.train) == sum(1 for _, _, c in market.train if c == cam)
        assert part.num_train_pids == NUM_IDS  # every fixture identity passes every camera
        assert_relabelled(part)
        assert part.query == market.query and part.gallery == market.gallery  # full test split
        seen += [p for p, _, _ in part.train]
    assert sorted(seen) == sorted(p for p, _, _ in market.train)


def test_camera_part_unknown_camera(market: ReIDDataset) -> None:
    with pytest.raises(DatasetError, match="camera 7 took no training image"):
        camera_part(market, 7)


def test_identity_parts_disjoint_cover_all(market: ReIDDataset) -> None:
    parts = [identity_part(market, k, 3, seed=5) for k in range(3)]
    groups = [{original_pid(p) for p, _, _ in part.train} for part in parts]
    assert sorted(len(g) for g in groups) == [3, 3, 4]  # near-equal sizes
    assert set.union(*groups) == {original_pid(p) for p, _, _ in market.train}
    assert sum(len(g) for g in groups) == NUM_IDS  # disjoint
    for part, group in zip(parts, groups, strict=True):
        assert_relabelled(part)
        # every image of the group's identities, every camera
        assert len(part.train) == len(group) * CAMS * PER_CAM
        assert part.query == market.query and part.gallery == market.gallery
    again = [identity_part(market, k, 3, seed=5).train for k in range(3)]
    assert again == [p.train for p in parts]  # deterministic for a seed


def test_identity_groups_seeded() -> None:
    a = identity_groups(range(40), 4, seed=0)
    assert identity_groups(range(40), 4, seed=0) == a
    assert identity_groups(range(40), 4, seed=1) != a
    assert sorted(x for g in a for x in g) == list(range(40))


@pytest.mark.parametrize(
    "part, num_parts, message",
    [
        (3, 3, "out of range"),
        (-1, 3, "out of range"),
        (0, NUM_IDS + 1, "cannot split 10 training identities into 11 parts"),
    ],
)
def test_identity_part_errors(market: ReIDDataset, part: int, num_parts: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        identity_part(market, part, num_parts)


# --------------------------------------------------------------------------------------------
# split_specs / client_specs
# --------------------------------------------------------------------------------------------


def test_split_specs_by_camera(data_root: Path) -> None:
    data = DataConfig(
        source="real", scenario="by_camera", root=str(data_root), split_dataset="market1501"
    )
    specs = client_specs(data)
    assert [s.name for s in specs] == ["market1501-cam1", "market1501-cam2", "market1501-cam3"]
    assert [s.camera for s in specs] == [0, 1, 2]
    loaded = specs[1].load()
    assert loaded.name == "market1501-cam2" and {c for _, _, c in loaded.train} == {1}


def test_split_specs_by_identity(data_root: Path) -> None:
    data = DataConfig(
        source="real",
        scenario="by_identity",
        root=str(data_root),
        split_dataset="market1501",
        num_splits=4,
        seed=3,
    )
    specs = client_specs(data)
    assert [s.name for s in specs] == [f"market1501-ids{k}of4" for k in range(1, 5)]
    parts = [s.load() for s in specs]
    assert sum(p.num_train_pids for p in parts) == NUM_IDS
    assert sum(len(p.train) for p in parts) == NUM_IDS * CAMS * PER_CAM


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"scenario": "by_camera", "split_dataset": ""}, ConfigError, "needs data.split_dataset"),
        ({"scenario": "by_identity", "num_splits": 1}, ConfigError, "num_splits >= 2"),
        ({"scenario": "by_identity", "num_splits": 0}, ConfigError, "num_splits >= 2"),
        ({"scenario": "by_identity", "num_splits": 11}, ConfigError, "more than the 10 training"),
        ({"scenario": "by_camera", "split_dataset": "nope"}, DatasetError, "unknown dataset"),
        ({"scenario": "by_dataset"}, ConfigError, "not a split scenario"),
    ],
)
def test_split_specs_errors(data_root: Path, changes: dict, error: type, message: str) -> None:
    fields = {
        "source": "real",
        "root": str(data_root),
        "split_dataset": "market1501",
        "num_splits": 2,
        **changes,
    }
    with pytest.raises(error, match=message) as info:
        split_specs(DataConfig(**fields), str(data_root))
    assert "\n" not in str(info.value)


def test_split_specs_synthetic_single_camera(tmp_path: Path) -> None:
    write_market(tmp_path / "market1501", num_ids=3, cams=1)
    data = DataConfig(scenario="by_camera", root=str(tmp_path), split_dataset="market1501")
    with pytest.raises(DatasetError, match="at least 2 training cameras"):
        client_specs(data)


def test_conf_presets_compose() -> None:
    cam = compose(["data=by_camera"]).data
    assert (cam.scenario, cam.split_dataset, cam.source) == ("by_camera", "market1501", "synthetic")
    ids = compose(["data=by_identity"]).data
    assert (ids.scenario, ids.num_splits) == ("by_identity", 4)
    real = compose(["data=real_by_dataset"]).data
    assert real.source == "real" and len(real.datasets) == 9 and real.public == "cuhk02"


# --------------------------------------------------------------------------------------------
# python -m fedreid.data check
# --------------------------------------------------------------------------------------------


def test_check_prints_table(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = data_main(["check", *real_data(data_root, "data=by_camera")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for name in ("market1501-cam1", "market1501-cam2", "market1501-cam3", "total"):
        assert name in out
    total = next(line for line in out.splitlines() if "total" in line and "│" in line)
    # identities summed per camera client; images, cameras, query, gallery distinct
    cells = [c.strip() for c in total.split("│")[1:-1]]
    assert cells == ["total", "30", "60", "3", "10", "31"]
    assert "public" in out and "not available" in out


def test_check_synthetic_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = data_main(
        [
            "check",
            "data=tiny",
            f"data.root={tmp_path / 'syn'}",
            "data.scenario=by_identity",
            "data.split_dataset=market1501",
            "data.num_splits=2",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "market1501-ids1of2" in out and "market1501-ids2of2" in out
    assert (tmp_path / "syn" / "market1501" / "bounding_box_train").is_dir()


@pytest.mark.parametrize(
    "extra",
    [
        [],  # the default public folder is missing, but KD is off: fine
        ["strategy=fedpav_kd"],  # KD needs the public folder
    ],
)
def test_check_kd_needs_public(
    data_root: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = data_main(["check", *real_data(data_root, *extra)])
    _, err = capsys.readouterr()
    if extra:
        assert rc == 2 and "public data folder not found" in err
    else:
        assert rc == 0


def test_check_missing_root_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    rc = data_main(["check", *real_data(missing)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(missing) in err
    assert "Traceback" not in err


def test_check_command_line(tmp_path: Path) -> None:
    """The module entry point itself: exit code 2 and one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "fedreid.data", "check", *real_data(tmp_path / "nowhere")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: market1501")


def test_simulation_partitions_go_largest_training_set_first(tmp_path: Path) -> None:
    """Partition 0 is the client with the most training images (the LPT schedule), and every
    client is reached exactly once."""
    from fedreid.clients.node import resolve_node

    for name, ids in (("viper", 2), ("market1501", 6), ("cuhk01", 4)):
        write_market(tmp_path / name, num_ids=ids)
    cfg = compose([f"data.root={tmp_path}", "data.datasets=[viper,market1501,cuhk01]"])
    names = [resolve_node({"partition-id": i}, cfg)[0].name for i in range(3)]
    assert names == ["market1501", "cuhk01", "viper"]
