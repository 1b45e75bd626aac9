"""Tests of the ranking metrics (hand-checked cases, vectorised == loop) and feature extraction."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from fedreid.evaluation import (
    cosine_distance,
    evaluate_model,
    evaluate_ranking,
    evaluate_ranking_loop,
    extract_features,
)
from fedreid.models.reid import ReIDNet

METHODS = ("auto", "dense", "sparse")
EVALUATORS = [
    pytest.param(evaluate_ranking_loop, id="loop"),
    *(
        pytest.param(lambda *a, m=m, **k: evaluate_ranking(*a, method=m, **k), id=m)
        for m in METHODS
    ),
]


def unit(degrees: float) -> list[float]:
    """A 2-d unit vector at the given angle: cosine distance between two is 1 - cos(angle)."""
    rad = math.radians(degrees)
    return [math.cos(rad), math.sin(rad)]


def hand_problem() -> tuple:
    """Three queries and five gallery items placed on the unit circle.

    Gallery (angle, pid, cam):  g0 (10, 1, 2)  g1 (20, 1, 0)  g2 (30, 0, 1: distractor)
                                g3 (60, 2, 0)  g4 (80, 1, 1)
    Query A (0 deg, pid 1, cam 0): by angle g0 g1 g2 g3 g4; g1 is junk (pid 1, cam 0), so the
        ranking is g0+ g2 g3 g4+: hits at ranks 1 and 4.
        AP = (1/1 + 2/4) / 2 = 3/4;  INP = 2/4 = 1/2;  first hit rank 1.
    Query B (75 deg, pid 2, cam 1): by distance g4 (5) g3 (15) g2 (45) g1 (55) g0 (65);
        no junk; hit g3 at rank 2.  AP = 1/2;  INP = 1/2;  first hit rank 2.
    Query C (40 deg, pid 2, cam 0): its only pid-2 item g3 is on its own camera (junk), so C
        has no valid match and is skipped.
    Means over A and B: rank1 = 1/2, rank5 = 1, mAP = (3/4 + 1/2)/2 = 5/8,
        mINP = (1/2 + 1/2)/2 = 1/2.
    """
    query = torch.tensor([unit(0), unit(75), unit(40)])
    gallery = torch.tensor([unit(a) for a in (10, 20, 30, 60, 80)])
    return query, gallery, [1, 2, 2], [1, 1, 0, 2, 1], [0, 1, 0], [2, 0, 1, 0, 1]


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_hand_checked_case(evaluate) -> None:
    result = evaluate(*hand_problem())
    assert result["num_valid_queries"] == 2
    assert result["rank1"] == pytest.approx(float(Fraction(1, 2)))
    assert result["rank5"] == result["rank10"] == 1.0
    assert result["mAP"] == pytest.approx(float(Fraction(5, 8)))
    assert result["mINP"] == pytest.approx(float(Fraction(1, 2)))
    assert set(result) == {"rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries"}


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_ties_break_by_gallery_index(evaluate) -> None:
    """A positive and a negative at the same distance: the lower gallery index ranks first.

    q = (1, 0). Negative first:  g0 (0, 1) pid 9 d=1,  g1 (0, 1) pid 1 d=1 (positive),
    g2 (1, 0) pid 9 d=0. Stable order g2 g0 g1: the hit is at rank 3, AP = INP = 1/3.
    Positive first (g0 and g1 swapped): order g2 g0+ g1, hit at rank 2, AP = INP = 1/2.
    """
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    negative_first = evaluate(q, g, [1], [9, 1, 9], [0], [1, 1, 1])
    assert negative_first["mAP"] == pytest.approx(1 / 3)
    assert negative_first["mINP"] == pytest.approx(1 / 3)
    positive_first = evaluate(q, g, [1], [1, 9, 9], [0], [1, 1, 1])
    assert positive_first["mAP"] == pytest.approx(1 / 2)
    assert positive_first["rank1"] == 0.0 and positive_first["rank5"] == 1.0


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_tied_positives(evaluate) -> None:
    """Two positives at the same distance, no negative tied with them.

    q = (1, 0); g0 (0, 1) pid 1 cam 1, g1 (0, 1) pid 1 cam 2, g2 (1, 0) pid 9.
    Order g2 g0+ g1+: hits at ranks 2 and 3. AP = (1/2 + 2/3) / 2 = 7/12; INP = 2/3.
    """
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    result = evaluate(q, g, [1], [1, 1, 9], [0], [1, 2, 1])
    assert result["mAP"] == pytest.approx(float(Fraction(7, 12)))
    assert result["mINP"] == pytest.approx(float(Fraction(2, 3)))


def test_all_distances_equal() -> None:
    """A collapsed model (every feature the same): the ranking is the gallery order."""
    rng = np.random.default_rng(3)
    q, g = np.full((30, 4), 0.5, np.float32), np.full((200, 4), 0.5, np.float32)
    labels = (
        rng.integers(1, 10, 30),
        rng.integers(0, 10, 200),
        rng.integers(0, 3, 30),
        rng.integers(0, 3, 200),
    )
    reference = evaluate_ranking_loop(q, g, *labels)
    for method in METHODS:
        assert evaluate_ranking(q, g, *labels, method=method, chunk_size=8) == reference


def random_problem(seed: int, num_query: int = 50, num_gallery: int = 300, quantised: bool = True):
    """A random problem with distractors, junk, queries without matches and ties.

    Quantised features have entries in {-2..2}: dot products are small integers, exact in
    float32 whatever the summation order, so many distances tie exactly. Float features are
    unit vectors, with a few gallery rows duplicated so some (not most) distances tie.
    """
    rng = np.random.default_rng(seed)
    dim = 6 if quantised else 16
    if quantised:
        q = rng.integers(-2, 3, (num_query, dim)).astype(np.float32)
        g = rng.integers(-2, 3, (num_gallery, dim)).astype(np.float32)
    else:
        q = rng.standard_normal((num_query, dim)).astype(np.float32)
        g = rng.standard_normal((num_gallery, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        g[rng.integers(0, num_gallery, 10)] = g[rng.integers(0, num_gallery, 10)]
    q_pids = rng.integers(1, 25, num_query)  # pids 21..24 are rare or absent in the gallery
    g_pids = rng.integers(0, 21, num_gallery)  # 0 = distractor
    q_cams = rng.integers(0, 3, num_query)
    g_cams = rng.integers(0, 3, num_gallery)
    return q, g, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantised", [True, False], ids=["ties", "floats"])
def test_vectorised_matches_loop(seed: int, quantised: bool) -> None:
    problem = random_problem(seed, quantised=quantised)
    reference = evaluate_ranking_loop(*problem)
    assert 0 < reference["num_valid_queries"] < 50  # some queries were skipped
    for method in METHODS:
        for chunk_size in (7, 512):
            result = evaluate_ranking(*problem, method=method, chunk_size=chunk_size)
            assert result.keys() == reference.keys()
            for key, value in reference.items():
                assert result[key] == pytest.approx(value, abs=1e-6), (method, chunk_size, key)


def test_random_problem_exercises_the_protocol() -> None:
    """The random problems do contain junk, distractors, skipped queries and tied distances."""
    q, g, q_pids, g_pids, q_cams, g_cams = random_problem(0)
    same_pid = q_pids[:, None] == g_pids[None, :]
    assert (same_pid & (q_cams[:, None] == g_cams[None, :])).any()  # junk
    assert (g_pids == 0).any()  # distractors
    dist = cosine_distance(q, g).numpy()
    positives = same_pid & (q_cams[:, None] != g_cams[None, :])
    ties = [np.isin(dist[i, positives[i]], dist[i, ~same_pid[i]]).any() for i in range(len(q))]
    assert any(ties)  # a positive tied with a negative


def test_many_positives_and_torch_inputs() -> None:
    """Few identities (long positive lists), tensors in, several chunks: still equal."""
    rng = np.random.default_rng(7)
    q = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((40, 8))).float(), dim=1)
    g = torch.nn.functional.normalize(
        torch.from_numpy(rng.standard_normal((400, 8))).float(), dim=1
    )
    labels = [
        torch.from_numpy(rng.integers(0, n, size))
        for n, size in ((3, 40), (3, 400), (4, 40), (4, 400))
    ]
    reference = evaluate_ranking_loop(q, g, *labels)
    for method in METHODS:
        result = evaluate_ranking(q, g, *labels, method=method, chunk_size=16)
        assert result == pytest.approx(reference, abs=1e-9)


def test_max_rank_adds_its_cmc_point() -> None:
    result = evaluate_ranking(*random_problem(1), max_rank=20)
    assert result["rank1"] <= result["rank5"] <= result["rank10"] <= result["rank20"] <= 1.0
    assert result["rank20"] == evaluate_ranking_loop(*random_problem(1), max_rank=20)["rank20"]


@pytest.mark.parametrize("evaluate", EVALUATORS)
def test_no_valid_query_raises(evaluate) -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # Query pid 1 only appears on its own camera; query pid 5 is not in the gallery.
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate(q, g, [1, 5], [1, 2, 1], [0, 0], [0, 1, 0])


def test_bad_inputs_raise() -> None:
    q, g = torch.ones(2, 4), torch.ones(3, 4)
    with pytest.raises(ValueError, match="pids"):
        evaluate_ranking(q, g, [1], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="same D"):
        evaluate_ranking(q, torch.ones(3, 5), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(q * math.nan, g, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="method"):
        evaluate_ranking(q, g, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], method="sorted")


@pytest.mark.parametrize("noise", [0.05, 0.15, 0.4])
def test_clustered_features_all_methods(noise: float) -> None:
    """Identity-clustered unit features (good to useless model), 120 x 2,000: all equal."""
    gen = torch.Generator().manual_seed(int(noise * 100))
    centres = torch.nn.functional.normalize(torch.randn(60, 64, generator=gen), dim=1)
    q_pids = torch.randint(0, 60, (120,), generator=gen)
    g_pids = torch.randint(0, 60, (2000,), generator=gen)

    def feats(pids: torch.Tensor) -> torch.Tensor:
        x = centres[pids] + noise * torch.randn(len(pids), 64, generator=gen)
        return torch.nn.functional.normalize(x, dim=1)

    q, g = feats(q_pids), feats(g_pids)
    g_pids[:300] = 0  # distractors
    labels = (
        q_pids,
        g_pids,
        torch.randint(0, 4, (120,), generator=gen),
        torch.randint(0, 4, (2000,), generator=gen),
    )
    reference = evaluate_ranking_loop(q, g, *labels)
    for method in METHODS:
        result = evaluate_ranking(q, g, *labels, method=method, chunk_size=50)
        assert result == pytest.approx(reference, abs=1e-12), method


def test_cosine_distance() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert cosine_distance(q, g).tolist() == [[0.0, 1.0, 2.0]]
    assert cosine_distance(q.numpy(), g.numpy()).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_net() -> ReIDNet:
    torch.manual_seed(0)
    net = ReIDNet(num_classes=3, arch="resnet18")
    # Put non-trivial running statistics in the BatchNorms so eval mode matters.
    net.train()
    with torch.no_grad():
        net.features(torch.randn(8, 3, 64, 32))
    return net


def test_extract_features_flip_averaged_and_unit_norm(tiny_net: ReIDNet) -> None:
    torch.manual_seed(1)
    images = torch.randn(5, 3, 64, 32)
    pids, cams = torch.arange(5), torch.tensor([0, 1, 0, 1, 2])
    loader = [(images[:3], pids[:3], cams[:3]), (images[3:], pids[3:], cams[3:])]
    tiny_net.train()
    feats, out_pids, out_cams = extract_features(tiny_net, loader)
    assert tiny_net.training and tiny_net.bottleneck[1].training  # modes restored
    assert feats.shape == (5, 512) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    assert out_pids.tolist() == pids.tolist() and out_cams.tolist() == cams.tolist()
    assert out_pids.dtype == out_cams.dtype == torch.int64

    # Same as the manual computation: eval mode, embedding of image + of its mirror.
    tiny_net.eval()
    with torch.no_grad():
        manual = tiny_net.features(images) + tiny_net.features(images.flip(3))
    tiny_net.train()
    torch.testing.assert_close(feats, torch.nn.functional.normalize(manual, dim=1))

    # Flip averaging makes an image and its mirror indistinguishable; without it they differ.
    mirrored, _, _ = extract_features(tiny_net, [(images.flip(3), pids, cams)])
    torch.testing.assert_close(mirrored, feats, atol=1e-5, rtol=1e-5)
    plain, _, _ = extract_features(tiny_net, [(images, pids, cams)], flip=False)
    plain_mirrored, _, _ = extract_features(tiny_net, [(images.flip(3), pids, cams)], flip=False)
    assert not torch.allclose(plain, plain_mirrored, atol=1e-4)


def test_extract_features_plain_module() -> None:
    """A module without ``.features`` is called directly."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    feats, _, _ = extract_features(net, [(torch.randn(3, 3, 2, 2), [1, 2, 3], [0, 0, 1])])
    assert feats.shape == (3, 4)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))


def test_evaluate_model_on_image_files(tmp_path, tiny_net: ReIDNet) -> None:
    rng = np.random.default_rng(0)

    def write(name: str) -> str:
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
        return str(path)

    query = [(write(f"q{i}"), pid, 0) for i, pid in enumerate([1, 2])]
    gallery = [(write(f"g{i}"), pid, 1) for i, pid in enumerate([1, 2, 0, 1])]
    result = evaluate_model(tiny_net, query, gallery, height=64, width=32, batch_size=4)
    assert result["num_valid_queries"] == 2
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert 0.0 <= result[key] <= 1.0
    assert result["rank5"] == 1.0  # four gallery items: every hit is within the top 5
