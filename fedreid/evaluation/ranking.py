"""Ranking metrics for person re-identification: CMC rank-k, mAP and mINP.

Protocol (Market-1501, as in the FedReID reference): for every query, gallery items with the
query's identity *and* camera are junk and removed from its ranking; the remaining gallery
items with the query's identity are its true matches ("positives"); queries without any
positive are skipped. Distractors (pid 0 or -1 in the gallery) are ordinary negatives.

Two implementations with one result:

- :func:`evaluate_ranking` is vectorised in torch. It never sorts a gallery row: the metrics
  need only the *rank* of each positive among the valid gallery items, and a query has few
  positives (about 15 in Market-1501) against thousands of gallery items. For a block of
  queries it sorts the positive distances, buckets every gallery distance among them and
  counts the buckets; the cumulative counts are the ranks. When the positives sit near the
  top of the ranking (a trained model), only the few gallery items at most as far as the
  hardest positive can change a rank; they are picked out and bucketed by binary search
  (``sparse``). Otherwise every item is bucketed through a per-row lookup table over equal
  cells, with an exact binary search only for the items that share a cell with a positive
  (``dense``), which is several times faster than a batched ``torch.searchsorted``.
- :func:`evaluate_ranking_loop` is the plain per-query loop (stable ``argsort`` of each row) in
  numpy: the oracle for the tests and the baseline of ``bench/bench_eval.py``.

Ties are broken the same way in both: items at equal distance rank in gallery-index order
(what a stable sort gives), so the two agree exactly, ties included.

Both also take a precomputed ``[Q, G]`` distance matrix (``distmat=``, features ``None``), e.g.
re-ranked distances from :func:`fedreid.evaluation.rerank.rerank`; :func:`ranked_indices`
gives the ranked gallery indices per query under the same protocol (rank lists, retrieval
figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[int]
"""Anything :func:`torch.as_tensor` accepts: tensors, numpy arrays, lists."""

Method = Literal["auto", "dense", "sparse"]

_CMC_KS = (1, 5, 10)
_SPARSE_FRACTION = 0.1
"""``auto`` buckets only the candidates when they are at most this fraction of a block."""


def cosine_distance(query: ArrayLike, gallery: ArrayLike) -> torch.Tensor:
    """Cosine distance ``1 - q . g`` between every query and gallery feature (float32).

    The features are assumed L2-normalised (:func:`~fedreid.evaluation.extract_features`
    returns them so); the dot product is not renormalised here, as it would cost a pass over
    the matrix for nothing.

    Args:
        query: ``[Q, D]`` features (tensor or numpy array).
        gallery: ``[G, D]`` features, on the same device as ``query``.

    Returns:
        ``[Q, G]`` float32 distances, on the device of ``query``.

    Examples:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> cosine_distance(q, g)
        tensor([[0., 1., 2.]])
    """
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32, device=q.device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"features must be [Q, D] and [G, D] with the same D, got {tuple(q.shape)} "
            f"and {tuple(g.shape)}"
        )
    # One fused pass: 1 * ones - 1 * (q @ g.T).
    ones = torch.ones(1, 1, dtype=q.dtype, device=q.device)
    return torch.addmm(ones, q, g.T, beta=1.0, alpha=-1.0)


def _check_inputs(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    max_rank: int,
) -> tuple[torch.Tensor, ...]:
    """Convert to tensors (float32 features, int64 labels on the features' device) and validate."""
    q = torch.as_tensor(query_feats, dtype=torch.float32)
    g = torch.as_tensor(gallery_feats, dtype=torch.float32, device=q.device)
    labels = [
        torch.as_tensor(x, device=q.device).to(torch.int64).reshape(-1)
        for x in (query_pids, gallery_pids, query_camids, gallery_camids)
    ]
    q_pids, g_pids, q_cams, g_cams = labels
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"features must be [Q, D] and [G, D] with the same D, got {tuple(q.shape)} "
            f"and {tuple(g.shape)}"
        )
    if len(q_pids) != len(q) or len(q_cams) != len(q):
        raise ValueError(f"{len(q)} query features but {len(q_pids)} pids and {len(q_cams)} camids")
    if len(g_pids) != len(g) or len(g_cams) != len(g):
        raise ValueError(
            f"{len(g)} gallery features but {len(g_pids)} pids and {len(g_cams)} camids"
        )
    if len(q) == 0 or len(g) == 0:
        raise ValueError(f"empty query ({len(q)}) or gallery ({len(g)}) set")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    # NaN and inf propagate into a sum, so one reduction per matrix screens for them.
    if not bool(torch.isfinite(q.sum() + g.sum())) and not (
        bool(torch.isfinite(q).all()) and bool(torch.isfinite(g).all())
    ):
        raise ValueError("features contain NaN or inf")
    return q, g, q_pids, g_pids, q_cams, g_cams


def _check_labels(
    num_query: int,
    num_gallery: int,
    device: torch.device,
    labels: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike],
) -> tuple[torch.Tensor, ...]:
    """Labels as int64 tensors on ``device``, checked against a ``[Q, G]`` problem."""
    q_pids, g_pids, q_cams, g_cams = (
        torch.as_tensor(x, device=device).to(torch.int64).reshape(-1) for x in labels
    )
    if len(q_pids) != num_query or len(q_cams) != num_query:
        raise ValueError(f"{num_query} queries but {len(q_pids)} pids and {len(q_cams)} camids")
    if len(g_pids) != num_gallery or len(g_cams) != num_gallery:
        raise ValueError(
            f"{num_gallery} gallery items but {len(g_pids)} pids and {len(g_cams)} camids"
        )
    return q_pids, g_pids, q_cams, g_cams


def _check_distmat(distmat: ArrayLike) -> torch.Tensor:
    """A precomputed distance matrix as float32 ``[Q, G]``, non-empty and finite."""
    dist = torch.as_tensor(distmat).to(torch.float32)
    if dist.ndim != 2 or dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ValueError(f"distmat must be a non-empty [Q, G] matrix, got {tuple(dist.shape)}")
    if not bool(torch.isfinite(dist).all()):
        raise ValueError("distmat contains NaN or inf")
    return dist


def _problem(
    query_feats: ArrayLike | None,
    gallery_feats: ArrayLike | None,
    labels: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike],
    distmat: ArrayLike | None,
    max_rank: int,
) -> tuple[int, int, torch.device, Callable[[int, int], torch.Tensor], tuple[torch.Tensor, ...]]:
    """Features or a precomputed distance matrix, as ``(Q, G, device, block, labels)``.

    ``block(lo, hi)`` returns a fresh (writable) ``[hi - lo, G]`` float32 block of distances.
    """
    if distmat is None:
        if query_feats is None or gallery_feats is None:
            raise ValueError("give query and gallery features, or a distmat")
        q, g, *label_tensors = _check_inputs(query_feats, gallery_feats, *labels, max_rank)

        def features_block(lo: int, hi: int) -> torch.Tensor:
            return cosine_distance(q[lo:hi], g)

        return len(q), len(g), q.device, features_block, tuple(label_tensors)
    if query_feats is not None or gallery_feats is not None:
        raise ValueError("give features or a distmat, not both")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    dist = _check_distmat(distmat)
    num_query, num_gallery = dist.shape
    label_tensors = _check_labels(num_query, num_gallery, dist.device, labels)

    def distmat_block(lo: int, hi: int) -> torch.Tensor:
        return dist[lo:hi].clone()  # the evaluator writes into its block

    return num_query, num_gallery, dist.device, distmat_block, label_tensors


def _summarise(
    first_hit: np.ndarray, ap: np.ndarray, inp: np.ndarray, max_rank: int
) -> dict[str, float | int]:
    """Average per-query results (1-based rank of the first hit, AP, INP) into the metrics."""
    if len(first_hit) == 0:
        raise ValueError(
            "no query has a valid match in the gallery (a gallery item with the query's "
            "identity seen by another camera): check the query/gallery split and labels"
        )
    ks = list(_CMC_KS)
    if max_rank not in ks:
        ks.append(max_rank)
    result: dict[str, float | int] = {f"rank{k}": float(np.mean(first_hit <= k)) for k in ks}
    result["mAP"] = float(np.mean(ap))
    result["mINP"] = float(np.mean(inp))
    result["num_valid_queries"] = int(len(first_hit))
    return result


def evaluate_ranking_loop(
    query_feats: ArrayLike | None,
    gallery_feats: ArrayLike | None,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 10,
    chunk_size: int = 512,
    distmat: ArrayLike | None = None,
) -> dict[str, float | int]:
    """Reference implementation: one stable ``argsort`` per query, in numpy.

    Slow (a full sort of every gallery row) but written to be obviously right; it is the
    oracle that :func:`evaluate_ranking` is tested against. Same arguments and result.

    Args:
        query_feats, gallery_feats: ``[Q, D]`` and ``[G, D]`` L2-normalised features.
        query_pids, gallery_pids, query_camids, gallery_camids: integer labels.
        max_rank: as in :func:`evaluate_ranking`.
        chunk_size: queries per block of the distance matrix (memory bound only).
        distmat: as in :func:`evaluate_ranking`.

    Returns:
        The same dict as :func:`evaluate_ranking`.

    Examples:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> evaluate_ranking_loop(q, g, [1], [2, 1], [0], [1, 1])["mAP"]
        1.0
    """
    labels = (query_pids, gallery_pids, query_camids, gallery_camids)
    num_query, _, _, block, label_tensors = _problem(
        query_feats, gallery_feats, labels, distmat, max_rank
    )
    q_pids, g_pids, q_cams, g_cams = (x.cpu().numpy() for x in label_tensors)
    first_hit, aps, inps = [], [], []
    for start in range(0, num_query, chunk_size):
        dist = block(start, min(start + chunk_size, num_query)).cpu().numpy()
        for row, i in enumerate(range(start, min(start + chunk_size, num_query))):
            order = np.argsort(dist[row], kind="stable")
            same_pid = g_pids[order] == q_pids[i]
            junk = same_pid & (g_cams[order] == q_cams[i])
            hits = same_pid[~junk]
            if not hits.any():
                continue
            hit_ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the true matches
            num_hits = len(hit_ranks)
            first_hit.append(hit_ranks[0])
            aps.append(np.mean(np.arange(1, num_hits + 1) / hit_ranks))
            inps.append(num_hits / hit_ranks[-1])
    return _summarise(np.asarray(first_hit), np.asarray(aps), np.asarray(inps), max_rank)


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 in ``[0, 2**32)`` with the same order (for exact keys).

    The IEEE bit pattern orders non-negative floats as integers; negative ones are reversed.
    ``-0.0`` is turned into ``+0.0`` first so the two compare equal, as floats do.
    """
    bits = (x + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + 2**31, 2**31 - 1 - (bits & 0x7FFFFFFF))


def _bucket_counts_sparse(
    cand_rows: torch.Tensor, cand_dist: torch.Tensor, bounds: torch.Tensor
) -> torch.Tensor:
    """Per row, how many candidates have exactly ``j`` boundaries ``<=`` their distance.

    Exact for any list of ``(row, distance)`` candidates. Rows are folded into int64 keys
    ``row * 2**32 + ordered_bits(distance)`` so one 1-D binary search over all rows'
    boundaries (sorted by row, then distance) buckets every candidate at once. Each row gets a
    sentinel boundary above every float, so the global bucket is ``row * (width + 1) + j``.

    Returns:
        ``[rows, width + 1]`` counts (column ``width``: above every boundary).
    """
    rows, width = bounds.shape
    row_key = torch.arange(rows, device=bounds.device, dtype=torch.int64)[:, None] << 32
    sentinel = torch.full((rows, 1), 2**32 - 1, dtype=torch.int64, device=bounds.device)
    bound_keys = (row_key + torch.cat([_ordered_bits(bounds), sentinel], dim=1)).view(-1)
    cand_keys = (cand_rows << 32) + _ordered_bits(cand_dist)
    buckets = torch.searchsorted(bound_keys, cand_keys, right=True)
    return torch.bincount(buckets, minlength=rows * (width + 1)).view(rows, width + 1)


def _bucket_counts_dense(
    dist: torch.Tensor, bounds: torch.Tensor, num_real: torch.Tensor, cells: int = 1024
) -> torch.Tensor:
    """As :func:`_bucket_counts_sparse`, for every item of ``dist``, without a binary search.

    A per-row binary search costs tens of nanoseconds per item (mispredicted branches), so
    instead each row's span of real boundaries ``[lo, hi]`` is cut into ``cells`` equal cells:
    an item's cell is a few arithmetic passes, and a per-row lookup table gives the bucket of
    every cell that holds no boundary. Boundaries and items go through the very same float
    operations, each monotone, so an item in a boundary-free cell is strictly above the
    boundaries of lower cells and strictly below those of higher cells: its table bucket is
    exact. Items sharing a cell with a boundary (a few percent, the positives among them) are
    bucketed exactly by :func:`_bucket_counts_sparse`.

    Args:
        dist: ``[B, G]`` distances (junk at ``inf``).
        bounds: ``[B, W]`` sorted boundaries, the first ``num_real`` of each row real, the
            rest ``inf`` padding (their buckets are never read).
        num_real: ``[B]`` real boundaries per row.
        cells: cells per row (capped so that all rows' cell numbers stay exact in float32).

    Returns:
        ``[B, W + 1]`` counts, as :func:`_bucket_counts_sparse`.
    """
    rows, width = bounds.shape
    num_gallery = dist.shape[1]
    device = dist.device
    cells = max(16, min(cells, 2**23 // rows - 4))
    seg = cells + 4  # per row: cells 0, 1 below lo; 2 .. cells + 2 span [lo, hi]; cells + 3 above
    has = (num_real > 0)[:, None]
    lo = torch.where(has, bounds[:, :1], 0.0)
    hi = torch.where(has, bounds.gather(1, (num_real - 1).clamp(min=0)[:, None]), 1.0)
    scale = (cells / (hi - lo)).clamp(max=1e30)  # finite even when hi - lo underflows
    base = (torch.arange(rows, device=device, dtype=torch.float32) * seg + 2)[:, None]

    def cell_of(x: torch.Tensor) -> torch.Tensor:
        y = x - lo
        y.mul_(scale).clamp_(-2.0, cells + 1.0).add_(base)
        return y.to(torch.int32)  # y >= 0: truncation is floor

    # Lookup table: bucket of each boundary-free cell, a trash bin for cells with a boundary.
    real = torch.arange(width, device=device)[None, :] < num_real[:, None]
    occupied = torch.bincount(cell_of(bounds)[real], minlength=rows * seg).view(rows, seg)
    below = occupied.cumsum(1) - occupied
    trash = rows * (width + 1)
    row_bin = torch.arange(rows, device=device)[:, None] * (width + 1)
    table = torch.where(occupied > 0, trash, row_bin + below).to(torch.int32).view(-1)

    bins = table.index_select(0, cell_of(dist).view(-1))
    counts = torch.bincount(bins, minlength=trash + 1)[:trash].view(rows, width + 1)
    shared = (bins == trash).nonzero().squeeze(1)
    return counts + _bucket_counts_sparse(shared // num_gallery, dist.take(shared), bounds)


def _block_ranks(
    dist: torch.Tensor,
    same_idx: torch.Tensor,
    is_pos: torch.Tensor,
    is_junk: torch.Tensor,
    method: Method,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of each query's positives among its valid gallery items.

    Args:
        dist: ``[B, G]`` distances of a block of queries (modified: junk set to ``inf``).
        same_idx: ``[B, S]`` gallery indices with the query's pid, ascending, padded.
        is_pos, is_junk: ``[B, S]`` masks over ``same_idx`` (other camera / same camera).
        method: ``dense``, ``sparse`` or ``auto``.

    Returns:
        ``ranks`` ``[B, P]`` (float64, ascending per row, padded with ``inf``) and the number
        of positives per query ``[B]``.
    """
    num_rows, num_gallery = dist.shape
    device = dist.device
    inf = torch.tensor(math.inf, dtype=dist.dtype, device=device)
    # Positives' distances, sorted; the stable sort keeps gallery-index order among ties.
    pos_dist = torch.where(is_pos, dist.gather(1, same_idx), inf)
    pos_dist, perm = torch.sort(pos_dist, dim=1, stable=True)
    num_pos = is_pos.sum(1)
    width = max(int(num_pos.max()), 1)
    pos_dist = pos_dist[:, :width].contiguous()
    pos_idx = same_idx.gather(1, perm[:, :width])
    real = torch.arange(width, device=device)[None, :] < num_pos[:, None]
    # Junk leaves the ranking: at +inf it is behind every (finite) positive.
    row_ids = torch.arange(num_rows, device=device)[:, None].expand_as(same_idx)
    dist[row_ids[is_junk], same_idx[is_junk]] = math.inf

    # Boundaries: each positive distance d_k and the next float above it, so that the counts
    # of items with distance < d_k and <= d_k both come out of one bucketing.
    above = torch.nextafter(pos_dist, inf)
    bounds = torch.sort(torch.cat([pos_dist, above], dim=1), dim=1).values
    at_pos = torch.searchsorted(bounds, pos_dist)  # first boundary equal to d_k
    at_above = torch.searchsorted(bounds, above)

    hardest = pos_dist.gather(1, (num_pos - 1).clamp(min=0)[:, None])
    hardest = torch.where(num_pos[:, None] > 0, hardest, -inf)
    if method == "auto":
        # Estimate the share of candidates from every 16th gallery column: a 1/16 pass.
        sample = dist[:, ::16]
        share = int((sample <= hardest).sum()) / max(sample.numel(), 1)
        method = "sparse" if share <= _SPARSE_FRACTION else "dense"
    if method == "sparse":
        # Flat positions of the items at most as far as the hardest positive (row-major).
        cand = (dist <= hardest).view(-1).nonzero().squeeze(1)
        counts = _bucket_counts_sparse(cand // num_gallery, dist.take(cand), bounds)
    else:
        counts = _bucket_counts_dense(dist, bounds, 2 * num_pos)
    counts = counts[:, :-1]
    # An item has distance < boundary b exactly when at most (first position of b) boundaries
    # are <= it, so cumulative counts at those positions count the items before b.
    cum = counts.cumsum(1)
    n_less = cum.gather(1, at_pos)  # valid items with distance < d_k
    n_equal = cum.gather(1, at_above) - n_less  # valid items with distance == d_k

    # Among items at distance d_k, those with a lower gallery index rank first. Without ties
    # to negatives these are just the earlier positives of the tie group.
    tie_start = torch.searchsorted(pos_dist, pos_dist)
    tie_end = torch.searchsorted(pos_dist, pos_dist, right=True)
    before = torch.arange(width, device=device)[None, :] - tie_start
    ranks = 1 + n_less + before
    # A negative at exactly a positive's distance (float32 makes this happen now and then on
    # large galleries): count the items tied with that positive that have a lower index, one
    # gallery row per pair; when pairs are many (a collapsed model), redo whole rows by keys.
    tied = real & (n_equal != tie_end - tie_start)
    pair_rows, pair_cols = tied.nonzero(as_tuple=True)
    tied_rows = pair_rows.unique()
    if len(pair_rows) <= 4 * len(tied_rows):
        gallery_index = torch.arange(num_gallery, device=device)
        for part in torch.split(torch.arange(len(pair_rows), device=device), 256):
            r, c = pair_rows[part], pair_cols[part]
            equal = (dist[r] == pos_dist[r, c, None]) & (gallery_index < pos_idx[r, c, None])
            ranks[r, c] = 1 + n_less[r, c] + equal.sum(1)
    else:
        for part in torch.split(tied_rows, 256):
            ranks[part] = _ranks_by_index_keys(
                dist[part], pos_dist[part], pos_idx[part], real[part]
            )
    return torch.where(real, ranks.to(torch.float64), math.inf), num_pos


def _ranks_by_index_keys(
    dist: torch.Tensor, pos_dist: torch.Tensor, pos_idx: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Exact ranks for rows with ties, from keys ``(distance, gallery index)`` in one int64.

    ``ordered_bits(distance) * 2**31 + index`` orders items exactly as a stable sort of the
    distances does, with no two items equal; so the rank of the k-th positive is the number
    of valid items with at most k positive keys below theirs. About as costly as the dense
    bucketing, and only used for rows where a negative ties a positive.
    """
    rows, num_gallery = dist.shape
    index = torch.arange(num_gallery, device=dist.device, dtype=torch.int64)
    item_keys = (_ordered_bits(dist) << 31) + index
    pos_keys = (_ordered_bits(pos_dist) << 31) + pos_idx
    pos_keys = torch.where(real, pos_keys, torch.iinfo(torch.int64).max)
    buckets = torch.searchsorted(pos_keys, item_keys)  # positives strictly before the item
    width = pos_keys.shape[1] + 1
    buckets += torch.arange(rows, device=dist.device)[:, None] * width
    counts = torch.bincount(buckets.view(-1), minlength=rows * width).view(rows, width)
    return counts.cumsum(1)[:, :-1]


def evaluate_ranking(
    query_feats: ArrayLike | None,
    gallery_feats: ArrayLike | None,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 10,
    chunk_size: int = 512,
    method: Method = "auto",
    distmat: ArrayLike | None = None,
) -> dict[str, float | int]:
    """CMC rank-k, mAP and mINP under the Market-1501 protocol, vectorised in torch.

    Distances are cosine distances ``1 - q . g`` (features assumed L2-normalised). For each
    query, gallery items with the same pid and the same camera are dropped; the gallery
    items with the same pid from another camera are its true matches; queries with none are
    skipped. Items at equal distance rank in gallery-index order (a stable sort), exactly as
    in :func:`evaluate_ranking_loop`.

    - CMC rank-k: fraction of valid queries whose first true match is within the top k.
    - AP: mean over the true matches of the precision at each one's rank (not interpolated).
    - INP: (number of true matches) / (rank of the last, hardest, true match).

    Runs on the device of ``query_feats`` (CPU or GPU). Work is done in blocks of
    ``chunk_size`` queries; peak memory is about ``chunk_size * G * 16`` bytes (130 MB for
    512 queries against Market-1501's 15,913 gallery images).

    Args:
        query_feats: ``[Q, D]`` float features (tensor or numpy array).
        gallery_feats: ``[G, D]`` float features.
        query_pids, gallery_pids: identity labels; distractors (pid 0 or -1) are ordinary
            negatives.
        query_camids, gallery_camids: camera labels.
        max_rank: CMC depth; ``rank1``, ``rank5``, ``rank10`` are always reported and
            ``rank{max_rank}`` is added when it is another value.
        chunk_size: queries per block.
        method: how gallery items are bucketed (same result): ``sparse`` only those at most
            as far as the query's hardest true match (fast for a good model), ``dense`` all
            of them (fast whatever the model), ``auto`` picks per block from a sample.
        distmat: a precomputed ``[Q, G]`` distance matrix (smaller is closer, e.g. re-ranked
            distances) used instead of cosine distances; the features must then be ``None``.
            It is read as float32, on its own device; ties break by gallery index as above.

    Returns:
        ``{"rank1", "rank5", "rank10", "mAP", "mINP"}`` as floats in ``[0, 1]`` and
        ``"num_valid_queries"`` (int).

    Raises:
        ValueError: on mismatched shapes, non-finite features or distances, both or neither
            of features and ``distmat``, or when no query has a valid match.

    Examples:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
        >>> m = evaluate_ranking(q, g, [1], [1, 2, 1], [0], [1, 1, 1])
        >>> m["rank1"], m["mAP"], m["mINP"]
        (0.0, 0.5833333333333333, 0.6666666666666666)
    """
    labels = (query_pids, gallery_pids, query_camids, gallery_camids)
    num_query, num_gallery, device, block, label_tensors = _problem(
        query_feats, gallery_feats, labels, distmat, max_rank
    )
    q_pids, g_pids, q_cams, g_cams = label_tensors
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    # Gallery grouped by pid (stable: ascending gallery index within a pid), and for every
    # query the slice of that grouping holding its pid.
    sorted_pids, order = torch.sort(g_pids, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_pids, return_counts=True)
    starts = counts.cumsum(0) - counts
    slot = torch.searchsorted(uniq, q_pids).clamp(max=len(uniq) - 1)
    found = uniq[slot] == q_pids
    q_start = starts[slot]
    q_count = torch.where(found, counts[slot], 0)

    first_hit, aps, inps = [], [], []
    for lo in range(0, num_query, chunk_size):
        hi = min(lo + chunk_size, num_query)
        width = max(int(q_count[lo:hi].max()), 1)
        offs = torch.arange(width, device=device)[None, :]
        in_group = offs < q_count[lo:hi, None]
        same_idx = order[(q_start[lo:hi, None] + offs).clamp(max=num_gallery - 1)]
        same_cam = g_cams[same_idx] == q_cams[lo:hi, None]
        is_pos, is_junk = in_group & ~same_cam, in_group & same_cam
        if not bool(is_pos.any()):
            continue
        dist = block(lo, hi)
        ranks, num_pos = _block_ranks(dist, same_idx, is_pos, is_junk, method)
        valid = num_pos > 0
        ranks, num_pos = ranks[valid], num_pos[valid]
        k = torch.arange(1, ranks.shape[1] + 1, device=device, dtype=torch.float64)
        precision = torch.where(torch.isfinite(ranks), k / ranks, 0.0)
        last = ranks.gather(1, (num_pos - 1)[:, None]).squeeze(1)
        first_hit.append(ranks[:, 0])
        aps.append(precision.sum(1) / num_pos)
        inps.append(num_pos / last)
    if not first_hit:
        return _summarise(np.empty(0), np.empty(0), np.empty(0), max_rank)
    return _summarise(
        *(torch.cat(x).cpu().numpy() for x in (first_hit, aps, inps)), max_rank=max_rank
    )


def ranked_indices(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    topk: int = 10,
    *,
    chunk_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``topk`` nearest gallery indices after the protocol's exclusion.

    Gallery items with the query's pid *and* camera (junk) are removed, as in
    :func:`evaluate_ranking`; the rest are ranked by distance, ties in gallery-index order
    (so the ranks agree with the metrics). Vectorised: one ``torch.topk`` per block of queries
    over int64 keys ``(distance, gallery index)``, excluded items at the largest key (behind
    everything, as ``+inf`` would be, and behind genuine ``+inf`` distances too).

    Args:
        distmat: ``[Q, G]`` distances (smaller is closer; cosine or re-ranked).
        q_pids, g_pids, q_camids, g_camids: integer labels.
        topk: ranks to return per query.
        chunk_size: queries per block (memory: about ``chunk_size * G * 16`` bytes).

    Returns:
        ``indices`` ``[Q, topk]`` int64 gallery indices, nearest first, ``-1`` past the last
        valid item (when fewer than ``topk`` remain), and ``matches`` ``[Q, topk]`` bool: the
        item has the query's pid (a true match; always ``False`` on padding). Queries without
        any true match keep their row (all ``False``).

    Raises:
        ValueError: on mismatched shapes, NaN distances or ``topk < 1``.

    Examples:
        >>> idx, hit = ranked_indices([[0.3, 0.1, 0.2]], [1], [1, 1, 2], [0], [1, 0, 1], topk=3)
        >>> idx.tolist(), hit.tolist()
        ([[2, 0, -1]], [[False, True, False]])
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dist = torch.as_tensor(distmat).to(torch.float32)
    if dist.ndim != 2 or dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ValueError(f"distmat must be a non-empty [Q, G] matrix, got {tuple(dist.shape)}")
    if bool(torch.isnan(dist).any()):
        raise ValueError("distmat contains NaN")
    num_query, num_gallery = dist.shape
    device = dist.device
    q_pids_t, g_pids_t, q_cams_t, g_cams_t = _check_labels(
        num_query, num_gallery, device, (q_pids, g_pids, q_camids, g_camids)
    )
    k = min(topk, num_gallery)
    excluded_key = torch.iinfo(torch.int64).max
    column = torch.arange(num_gallery, device=device, dtype=torch.int64)
    indices = torch.full((num_query, topk), -1, dtype=torch.int64, device=device)
    for lo in range(0, num_query, chunk_size):
        hi = min(lo + chunk_size, num_query)
        same_pid = g_pids_t[None, :] == q_pids_t[lo:hi, None]
        junk = same_pid & (g_cams_t[None, :] == q_cams_t[lo:hi, None])
        # ordered_bits < 2**32 and column < 2**31: the key fits in int64 and is unique.
        keys = (_ordered_bits(dist[lo:hi]) << 31) | column
        keys.masked_fill_(junk, excluded_key)
        top = torch.topk(keys, k, dim=1, largest=False, sorted=True)
        indices[lo:hi, :k] = torch.where(top.values == excluded_key, -1, top.indices)
    valid = indices >= 0
    matches = valid & (g_pids_t[indices.clamp(min=0)] == q_pids_t[:, None])
    return indices, matches
