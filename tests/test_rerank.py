"""Tests of k-reciprocal re-ranking (vectorised == plain loops, hand-checked case) and of the
ranking helpers it is evaluated with (``ranked_indices``, ``evaluate_ranking(distmat=...)``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedreid.evaluation import cosine_distance, evaluate_ranking, evaluate_ranking_loop
from fedreid.evaluation.ranking import ranked_indices
from fedreid.evaluation.rerank import rerank


def rerank_reference(
    q_feats: np.ndarray, g_feats: np.ndarray, k1: int, k2: int, lambda_value: float
) -> tuple[np.ndarray, int]:
    """The paper's algorithm in plain loops and sets, float64 (the oracle).

    Returns the ``[Q, G]`` distances and how many images had their k-reciprocal set grown by
    the expansion step (so the tests can check that step was exercised).
    """
    feats = np.concatenate([q_feats, g_feats]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n, num_query = len(feats), len(q_feats)
    # Original distance: squared Euclidean, each row divided by its maximum.
    dist = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(dist, 0.0)
    dist /= dist.max(axis=1, keepdims=True)
    order = np.argsort(dist, axis=1, kind="stable")

    def nearest(p: int, k: int) -> list[int]:
        """N(p, k): the k + 1 nearest images of p, p itself included."""
        return [int(x) for x in order[p, : k + 1]]

    def reciprocal(p: int, k: int) -> set[int]:
        """R(p, k) = {g in N(p, k) : p in N(g, k)}."""
        return {g for g in nearest(p, k) if p in nearest(g, k)}

    half = round(k1 / 2)
    encoding = np.zeros((n, n))
    grown = 0
    for p in range(n):
        base = reciprocal(p, k1)
        expanded = set(base)
        for c in base:
            candidate = reciprocal(c, half)
            if len(candidate & base) > 2 / 3 * len(candidate):
                expanded |= candidate
        grown += expanded != base
        for g in expanded:
            encoding[p, g] = math.exp(-dist[p, g])
        encoding[p] /= encoding[p].sum()
    if k2 > 1:  # local query expansion over the k2 nearest (p included)
        encoding = np.stack([encoding[order[p, :k2]].mean(0) for p in range(n)])
    jaccard = np.zeros((num_query, n - num_query))
    for p in range(num_query):
        for g in range(num_query, n):
            low = np.minimum(encoding[p], encoding[g]).sum()
            high = np.maximum(encoding[p], encoding[g]).sum()
            jaccard[p, g - num_query] = 1.0 - low / high
    return (1 - lambda_value) * jaccard + lambda_value * dist[:num_query, num_query:], grown


def clustered(seed: int, num_query: int, num_gallery: int, dim: int = 8, ids: int = 4):
    """Random features around a few identity centres (so neighbourhoods have structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    q = centres[rng.integers(0, ids, num_query)] + 0.6 * rng.standard_normal((num_query, dim))
    g = centres[rng.integers(0, ids, num_gallery)] + 0.6 * rng.standard_normal((num_gallery, dim))
    return q.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize(
    ("seed", "num_query", "num_gallery", "k1", "k2", "lam"),
    [
        (0, 6, 15, 4, 2, 0.3),
        (1, 6, 15, 4, 2, 0.3),
        (2, 6, 15, 4, 1, 0.3),
        (3, 6, 15, 3, 3, 0.0),
        (4, 5, 30, 6, 3, 0.5),
        (5, 12, 40, 7, 4, 0.3),
        (6, 3, 5, 20, 6, 0.3),  # k1 + 1 > N: neighbourhoods are the whole set
        (7, 1, 2, 2, 2, 0.3),  # one query, two gallery images
    ],
)
def test_vectorised_equals_reference(seed, num_query, num_gallery, k1, k2, lam) -> None:
    q, g = clustered(seed, num_query, num_gallery)
    expected, _ = rerank_reference(q, g, k1, k2, lam)
    for chunk_size in (512, 4):  # one block, and many blocks
        got = rerank(q, g, k1=k1, k2=k2, lambda_value=lam, chunk_size=chunk_size)
        assert got.dtype == torch.float32 and got.shape == (num_query, num_gallery)
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-6, rtol=0)


def test_expansion_step_is_exercised() -> None:
    """In the larger cases above, k-reciprocal sets do grow (else step 3 goes untested).

    (With k1 = 4 on 21 images the half-size sets always lie inside R(p, k1) already.)
    """
    assert rerank_reference(*clustered(4, 5, 30), k1=6, k2=3, lambda_value=0.5)[1] > 0
    assert rerank_reference(*clustered(5, 12, 40), k1=7, k2=4, lambda_value=0.3)[1] > 0


@pytest.mark.parametrize(("k1", "k2"), [(4, 2), (6, 3), (20, 6)])
def test_ties_break_by_index(k1, k2) -> None:
    """Features with four entries 1 (of 8) normalise to entries 0.5 exactly, so every distance
    is exact in float32 and in float64 (0, 1/4, ..., 1 after normalisation) and most tie: the
    neighbour lists must break ties by index exactly as the reference's stable sort does."""
    rng = np.random.default_rng(k1)
    feats = np.zeros((26, 8), np.float32)
    for row in feats:
        row[rng.choice(8, 4, replace=False)] = 1.0
    feats[20:] = feats[:6]  # a few duplicated images: distance 0 to another image
    expected, _ = rerank_reference(feats[:6], feats[6:], k1, k2, 0.3)
    for chunk_size in (512, 5):
        got = rerank(feats[:6], feats[6:], k1=k1, k2=k2, chunk_size=chunk_size)
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-6, rtol=0)


def test_uniform_features_and_defaults() -> None:
    """Unclustered unit features with the paper's defaults (k1=20, k2=6, lambda=0.3)."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((8, 16)).astype(np.float32)
    g = rng.standard_normal((40, 16)).astype(np.float32)
    expected, _ = rerank_reference(q, g, 20, 6, 0.3)
    np.testing.assert_allclose(rerank(q, g).numpy(), expected, atol=2e-6, rtol=0)


def unit(degrees: float) -> list[float]:
    rad = math.radians(degrees)
    return [math.cos(rad), math.sin(rad)]


def sq(degrees: float) -> float:
    """Squared Euclidean distance of two unit vectors ``degrees`` apart."""
    return 2.0 - 2.0 * math.cos(math.radians(degrees))


def test_hand_checked_case() -> None:
    """One query q at 0 deg; gallery h -5, b1 -7, b2 -8.5, a1 6, a2 13 (unit circle).

    Distance grows with the angle, so each image's order is read off the angles. With k1 = 2,
    N(p, 2) is p and its 2 nearest; the half size round(2/2) = 1 gives p and its nearest.

        q : q h a1 | b1 b2 a2          a1: a1 q a2 | h b1 b2
        h : h b1 b2 | q a1 a2          a2: a2 a1 q | h b1 b2
        b1: b1 b2 h | q a1 a2          b2: b2 b1 h | q a1 a2

    h is q's nearest image, but q is not among h's 3 nearest (h sits in the tight b cluster),
    so h is not k-reciprocal to q: R(q) = {q, a1} (q is among a1's 3 nearest).
    R(a1) = {a1, q, a2}; R(h) = R(b1) = R(b2) = {h, b1, b2}; R(a2) = {a2, a1}.
    Half-size sets: R(q, 1) = {q} (h's nearest is b1), R(a1, 1) = {a1}, R(a2, 1) = {a2},
    R(h, 1) = {h}, R(b1, 1) = R(b2, 1) = {b1, b2}: each lies inside the set it would expand,
    so expansion adds nothing. With k2 = 1 (no query expansion):

        V_q  = (q: 1, a1: e^-d(q,a1)) / sum, d normalised by q's farthest, a2 at 13 deg;
        V_a1 = (a1: 1, q: e^-d(a1,q), a2: e^-d(a1,a2)) / sum, normalised by b2 at 14.5 deg;
        V_a2 = (a2: 1, a1: e^-d(a2,a1)) / sum, normalised by b2 at 21.5 deg.

    V_q shares no image with V_h, V_b1, V_b2: their Jaccard distance is exactly 1. With
    lambda = 0 the re-ranked order is a1 < a2 < {h, b1, b2} (tied at 1, kept in index order by
    a stable sort). With lambda = 0.3 the hard negative h drops from first to second place:
    a1 (0.7 * 0.462 + 0.3 * 0.213 = 0.39) comes first; h, b1 stay ahead of a2 (their
    0.7 + 0.3 d beats a2's 0.7 * 0.71 + 0.3 * 1 = 0.80) but a2 overtakes b2 (0.7 + 0.3 * 0.43).
    """
    q = torch.tensor([unit(0)])
    g = torch.tensor([unit(a) for a in (-5, -7, -8.5, 6, 13)])  # h b1 b2 a1 a2
    h, b1, b2, a1, a2 = range(5)

    def normalised(a: float, far: float) -> float:
        return sq(a) / sq(far)

    e_q_a1 = math.exp(-normalised(6, 13))
    v_q = {"q": 1 / (1 + e_q_a1), "a1": e_q_a1 / (1 + e_q_a1)}
    e_a1_q, e_a1_a2 = math.exp(-normalised(6, 14.5)), math.exp(-normalised(7, 14.5))
    s_a1 = 1 + e_a1_q + e_a1_a2
    v_a1 = {"a1": 1 / s_a1, "q": e_a1_q / s_a1, "a2": e_a1_a2 / s_a1}
    e_a2_a1 = math.exp(-normalised(7, 21.5))
    v_a2 = {"a2": 1 / (1 + e_a2_a1), "a1": e_a2_a1 / (1 + e_a2_a1)}

    def jaccard(u: dict[str, float], v: dict[str, float]) -> float:
        keys = set(u) | set(v)
        low = sum(min(u.get(k, 0.0), v.get(k, 0.0)) for k in keys)
        high = sum(max(u.get(k, 0.0), v.get(k, 0.0)) for k in keys)
        return 1 - low / high

    pure = rerank(q, g, k1=2, k2=1, lambda_value=0.0)[0]
    assert pure[[h, b1, b2]].tolist() == [1.0, 1.0, 1.0]
    assert pure[a1].item() == pytest.approx(jaccard(v_q, v_a1), abs=1e-6)
    assert pure[a2].item() == pytest.approx(jaccard(v_q, v_a2), abs=1e-6)
    assert torch.argsort(pure, stable=True).tolist() == [a1, a2, h, b1, b2]

    blended = rerank(q, g, k1=2, k2=1, lambda_value=0.3)[0]
    original = [normalised(a, 13) for a in (5, 7, 8.5, 6, 13)]
    expected = [0.7 * pure[i].item() + 0.3 * original[i] for i in range(5)]
    assert blended.tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.argsort(cosine_distance(q, g)[0]).tolist() == [h, a1, b1, b2, a2]
    assert torch.argsort(blended).tolist() == [a1, h, b1, a2, b2]


def test_rerank_rejects_bad_input() -> None:
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="same D"):
        rerank(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="empty"):
        rerank(q[:0], g)
    with pytest.raises(ValueError, match="k1 and k2"):
        rerank(q, g, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        rerank(q, g, lambda_value=1.5)
    with pytest.raises(ValueError, match="NaN"):
        rerank(q, torch.full((5, 4), math.nan))


# -- ranking helpers ------------------------------------------------------------------------


def test_ranked_indices_hand_checked() -> None:
    """Two queries over five gallery items (distances given directly).

    Query 0 (pid 1, cam 0), distances g0 .4  g1 .1  g2 .3  g3 .2  g4 .3:
        g1 (pid 1, cam 0) is junk; order by distance g3 .2, g2 .3, g4 .3 (tie: index order),
        g0 .4 -> [3, 2, 4, 0]; matches: g0 (pid 1, cam 1) only -> [F, F, F, T].
    Query 1 (pid 2, cam 1), distances g0 .5  g1 .5  g2 .0  g3 .9  g4 .1:
        no junk (no pid 2 in cam 1); order g2 g4 g0 g1 g3; match g4 (pid 2, cam 0).
    topk = 6 > G: rows are padded with -1 / False past the valid items.
    """
    dist = torch.tensor([[0.4, 0.1, 0.3, 0.2, 0.3], [0.5, 0.5, 0.0, 0.9, 0.1]])
    q_pids, g_pids = [1, 2], [1, 1, 7, 9, 2]
    q_cams, g_cams = [0, 1], [1, 0, 0, 1, 0]
    idx, match = ranked_indices(dist, q_pids, g_pids, q_cams, g_cams, topk=6)
    assert idx.tolist() == [[3, 2, 4, 0, -1, -1], [2, 4, 0, 1, 3, -1]]
    assert match.tolist() == [
        [False, False, False, True, False, False],
        [False, True, False, False, False, False],
    ]
    idx2, match2 = ranked_indices(dist, q_pids, g_pids, q_cams, g_cams, topk=2, chunk_size=1)
    assert idx2.tolist() == [[3, 2], [2, 4]]
    assert match2.tolist() == [[False, False], [False, True]]
    with pytest.raises(ValueError, match="topk"):
        ranked_indices(dist, q_pids, g_pids, q_cams, g_cams, topk=0)


def test_ranked_indices_agree_with_evaluation() -> None:
    """rank-1 from ranked_indices equals evaluate_ranking's on a random problem."""
    rng = np.random.default_rng(11)
    q = rng.standard_normal((40, 8)).astype(np.float32)
    g = rng.standard_normal((200, 8)).astype(np.float32)
    labels = (
        rng.integers(1, 10, 40),
        rng.integers(0, 10, 200),
        rng.integers(0, 3, 40),
        rng.integers(0, 3, 200),
    )
    dist = rerank(q, g, k1=6, k2=3)
    metrics = evaluate_ranking(None, None, *labels, distmat=dist)
    _, match = ranked_indices(dist, *labels, topk=5)
    has_match = match.new_tensor(
        [bool(((labels[1] == labels[0][i]) & (labels[3] != labels[2][i])).any()) for i in range(40)]
    )
    assert metrics["num_valid_queries"] == int(has_match.sum())
    assert metrics["rank1"] == pytest.approx(float(match[has_match, 0].float().mean()))
    assert metrics["rank5"] == pytest.approx(float(match[has_match].any(1).float().mean()))


@pytest.mark.parametrize("method", ["auto", "dense", "sparse"])
def test_evaluate_with_distmat(method) -> None:
    """A precomputed distance matrix gives what the features give, and what the loop gives."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((30, 8)).astype(np.float32)
    g = rng.standard_normal((150, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    labels = (
        rng.integers(1, 8, 30),
        rng.integers(0, 8, 150),
        rng.integers(0, 3, 30),
        rng.integers(0, 3, 150),
    )
    by_feats = evaluate_ranking(q, g, *labels, method=method, chunk_size=7)
    by_dist = evaluate_ranking(
        None, None, *labels, distmat=cosine_distance(q, g), method=method, chunk_size=7
    )
    assert by_dist == by_feats
    reranked = rerank(q, g, k1=6, k2=3)
    assert evaluate_ranking(None, None, *labels, distmat=reranked, method=method) == (
        evaluate_ranking_loop(None, None, *labels, distmat=reranked)
    )
    with pytest.raises(ValueError, match="not both"):
        evaluate_ranking(q, g, *labels, distmat=reranked)
    with pytest.raises(ValueError, match="5 gallery items but 150 pids"):
        evaluate_ranking(None, None, *labels, distmat=reranked[:, :5])
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_ranking(None, None, *labels, distmat=torch.full((30, 150), math.inf))
