"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised in torch.

*Re-ranking Person Re-identification with k-reciprocal Encoding* replaces the distance
between a query and a gallery image by a blend of the original distance and a Jaccard
distance between their k-reciprocal neighbourhoods, computed over the query and gallery
images together (``N = Q + G`` images, no labels used):

1. **Original distance** ``d``: squared Euclidean distance between L2-normalised features
   (``2 - 2 cos``), each row divided by its maximum (the authors' code normalises so too).
   ``N(p, k)`` are the ``k + 1`` nearest images of ``p`` under ``d``, ``p`` itself included
   (the authors' released code counts ``p`` in, hence the ``+ 1``); ties are broken by index.
2. **k-reciprocal neighbours** ``R(p, k) = {g in N(p, k) : p in N(g, k)}``.
3. **Expansion** ``R*(p)``: ``R(p, k1)`` plus ``R(c, round(k1 / 2))`` for every candidate
   ``c in R(p, k1)`` whose half-size set has more than 2/3 of its members in ``R(p, k1)``
   (strictly more, as in the authors' released code).
4. **Encoding** ``V_p``: ``exp(-d(p, g))`` on ``R*(p)``, 0 elsewhere, normalised to sum 1.
5. **Local query expansion** (``k2 > 1``): ``V_p`` is replaced by the mean of ``V_g`` over
   the ``k2`` nearest images ``g`` of ``p`` (``p`` included).
6. **Jaccard distance** ``d_J(p, g) = 1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g))``, which
   for rows summing to 1 is ``1 - m / (2 - m)`` with ``m = sum(min(V_p, V_g))``.
7. **Final distance** ``(1 - lambda) d_J + lambda d`` for every query/gallery pair.

The encodings are sparse (tens of non-zeros per row), so nothing ``N x N`` is ever held: the
distance matrix is computed in row blocks only to find each row's nearest images and maximum
(and to keep the query/gallery part, which is the output's shape anyway), the neighbourhood
logic works on ``[N, k1 + 1]`` index tables, the encodings are kept as coordinate lists, and
the Jaccard numerators are accumulated through an inverted index (gallery encodings grouped
by column), in blocks of queries sized to a budget of pairs.
"""

from __future__ import annotations

import math

import torch

from fedreid.evaluation.ranking import ArrayLike

_ROW_BLOCK = 512
"""Most rows per block in the stages after the distance pass (their scratch is ``[B, N]``)."""

_PAIR_BUDGET = 1 << 24
"""Jaccard stage: most (query entry, gallery entry) pairs expanded at once (~16 bytes each)."""


def _check(q_feats: ArrayLike, g_feats: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.as_tensor(q_feats, dtype=torch.float32).cpu()
    g = torch.as_tensor(g_feats, dtype=torch.float32).cpu()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"features must be [Q, D] and [G, D] with the same D, got {tuple(q.shape)} "
            f"and {tuple(g.shape)}"
        )
    if len(q) == 0 or len(g) == 0:
        raise ValueError(f"empty query ({len(q)}) or gallery ({len(g)}) set")
    if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(g).all())):
        raise ValueError("features contain NaN or inf")
    return q, g


def _neighbours(
    feats: torch.Tensor, num_query: int, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the ``N x N`` squared distances, by symmetric pairs of blocks.

    The matrix is symmetric, so each pair of row blocks ``I <= J`` is multiplied once: the
    block serves rows ``I`` (against columns ``J``) and, transposed, rows ``J``. Each row keeps
    a running list of its ``k`` nearest images and its maximum. Ranking the raw squared
    distances ranks the row-normalised ones too (one positive factor per row).

    Returns:
        ``top`` ``[N, k]``: each row's ``k`` nearest images, nearest first, ties by index;
        ``row_max`` ``[N]``: each row's maximum squared distance (the normaliser, never 0);
        ``query_dist`` ``[Q, G]``: the normalised query/gallery distances.
    """
    n = len(feats)
    best_val = torch.full((n, k), math.inf)
    best_idx = torch.full((n, k), n, dtype=torch.int64)  # placeholders sort after every image
    row_max = torch.zeros(n)
    query_dist = torch.empty(num_query, n - num_query)
    two = torch.full((1, 1), 2.0)

    def update(lo: int, hi: int, dist: torch.Tensor, col_lo: int) -> None:
        """Rows ``lo:hi`` against columns ``col_lo:col_lo + dist.shape[1]``."""
        row_max[lo:hi] = torch.maximum(row_max[lo:hi], dist.amax(1))
        if lo < num_query and col_lo + dist.shape[1] > num_query:
            stop, first = min(hi, num_query), max(col_lo, num_query)
            query_dist[lo:stop, first - num_query : col_lo + dist.shape[1] - num_query] = dist[
                : stop - lo, first - col_lo :
            ]
        # Only items at most as far as a row's current k-th nearest can enter its list (at
        # equal distance, the index decides in the merge).
        kth = best_val[lo:hi, -1:]
        width = 0
        if not bool(torch.isinf(kth).any()):  # every list full: look for candidates
            row, col = (dist <= kth).nonzero(as_tuple=True)
            if len(row) == 0:
                return
            counts = torch.bincount(row, minlength=hi - lo)
            width = int(counts.max())
        if width == 0 or width > 4 * k:  # a row's first blocks: select in the block first
            values, picked = _smallest(dist, min(k, dist.shape[1]), col_lo)
        else:  # pad each row's few candidates to a [rows, width] list
            slot = torch.arange(len(row)) - (torch.cumsum(counts, 0) - counts)[row]
            values = torch.full((hi - lo, width), math.inf)
            picked = torch.full((hi - lo, width), n, dtype=torch.int64)
            values[row, slot] = dist[row, col]
            picked[row, slot] = col + col_lo
        values = torch.cat([best_val[lo:hi], values], dim=1)
        picked = torch.cat([best_idx[lo:hi], picked], dim=1)
        order = _keys(values, picked).topk(k, dim=1, largest=False, sorted=True).indices
        best_val[lo:hi] = values.gather(1, order)
        best_idx[lo:hi] = picked.gather(1, order)

    starts = list(range(0, n, chunk_size))
    for i, lo in enumerate(starts):
        hi = min(lo + chunk_size, n)
        for col_lo in starts[i:]:
            col_hi = min(col_lo + chunk_size, n)
            dist = torch.addmm(two, feats[lo:hi], feats[col_lo:col_hi].T, beta=1.0, alpha=-2.0)
            dist.clamp_(min=0.0)  # 2 - 2 f . g, never negative
            if col_lo == lo:
                dist.fill_diagonal_(0.0)  # an image is at distance 0 from itself, exactly
            update(lo, hi, dist, col_lo)
            if col_lo != lo:
                update(col_lo, col_hi, dist.T.contiguous(), lo)
    row_max = torch.where(row_max > 0, row_max, 1.0)  # all images identical: leave the zeros
    query_dist.div_(row_max[:num_query, None])
    return best_idx, row_max, query_dist


def _keys(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys ordered as ``(distance, index)``, for distances ``>= 0``.

    The bits of a non-negative float32 order like the float (the int clamp turns a ``-0.0``
    into ``+0.0``), so ``bits << 32 | index`` sorts by distance, then index.
    """
    keys = dist.view(torch.int32).clamp(min=0).to(torch.int64)
    return keys.bitwise_left_shift_(32).bitwise_or_(index)


def _smallest(dist: torch.Tensor, k: int, col_lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` smallest distances and their column indices (``col_lo`` onwards).

    The smallest in ``(distance, index)`` order: a float ``topk`` picks any of several items
    tied at the ``k``-th distance, so rows where items tied there were left out (rare:
    duplicate images) are redone with keys over the whole row. Exact, and several times
    cheaper than a ``topk`` over int64 keys everywhere. Unordered within the row.
    """
    values, picked = torch.topk(dist, k, dim=1, largest=False, sorted=False)
    kth = values.amax(1, keepdim=True)
    redo = ((dist == kth).sum(1) != (values == kth).sum(1)).nonzero().squeeze(1)
    if len(redo):
        column = torch.arange(dist.shape[1], dtype=torch.int64)
        keys = _keys(dist[redo].contiguous(), column)
        picked[redo] = keys.topk(k, dim=1, largest=False, sorted=False).values & 0xFFFFFFFF
        values[redo] = dist[redo].gather(1, picked[redo])
    return values, picked + col_lo


def _reciprocal(top: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """``[N, k]`` mask over ``top[:, :k]``: is row ``p`` among the ``k`` nearest of that item."""
    n = len(top)
    first = top[:, :k]
    mask = torch.empty(n, k, dtype=torch.bool)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        ids = torch.arange(lo, hi)[:, None, None]
        mask[lo:hi] = (first[first[lo:hi]] == ids).any(2)
    return mask


def _encode(
    feats: torch.Tensor,
    top: torch.Tensor,
    row_max: torch.Tensor,
    k_full: int,
    k_half: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The encodings ``V`` (steps 2-4) as coordinate lists, rows ascending.

    Set operations per block of rows go through ``[B, N + 1]`` int32 scratch tables indexed
    by (row in block, image), never cleared (only written entries are read back):

    - membership in ``R(p, k1)``: entries of ``R(p, k1)`` get the block's stamp, which no
      earlier block used, so ``table[p, x] == stamp`` exactly when ``x in R(p, k1)``;
    - deduplication of ``R*(p)``'s list: each slot writes its position at its image, and the
      one slot whose position was kept (one per distinct image) is the one kept.
    """
    n = len(feats)
    forward = top[:, :k_full]
    half = top[:, :k_half]
    recip = _reciprocal(top, k_full, chunk_size)
    recip_half = _reciprocal(top, k_half, chunk_size)
    block = min(chunk_size, n)
    member = torch.zeros(block, n + 1, dtype=torch.int32)
    owner = torch.empty(block, n + 1, dtype=torch.int32)
    rows_out, cols_out, vals_out = [], [], []
    for stamp, lo in enumerate(range(0, n, chunk_size), start=1):
        hi = min(lo + chunk_size, n)
        size = hi - lo
        cand, in_r = forward[lo:hi], recip[lo:hi]  # R(p, k1) = cand[in_r]
        cand_half = half[cand].view(size, -1)  # N(c, k1/2) of each candidate c, flattened
        cand_half_in = recip_half[cand].view(size, -1)  # R(c, k1/2) = cand_half[cand_half_in]
        base = torch.where(in_r, cand, n)
        member[:size].scatter_(1, base, stamp)
        shared = (member[:size].gather(1, cand_half) == stamp) & cand_half_in
        # Accept c when |R(c, k1/2) & R(p, k1)| > 2/3 |R(c, k1/2)|, in integers.
        num_shared = shared.view(size, k_full, k_half).sum(2)
        num_half = cand_half_in.view(size, k_full, k_half).sum(2)
        accept = in_r & (3 * num_shared > 2 * num_half)
        grow = accept.repeat_interleave(k_half, dim=1) & cand_half_in
        members = torch.cat([base, torch.where(grow, cand_half, n)], dim=1)
        slots = torch.arange(members.shape[1], dtype=torch.int32).expand(size, -1)
        owner[:size].scatter_(1, members, slots)
        keep = (owner[:size].gather(1, members) == slots) & (members < n)
        local, slot = keep.nonzero(as_tuple=True)
        row, col = local + lo, members[local, slot]
        dots = torch.einsum("ed,ed->e", feats[row], feats[col])
        dist = (2.0 - 2.0 * dots).clamp_(min=0.0) / row_max[row]
        dist.masked_fill_(row == col, 0.0)
        weight = torch.exp(-dist)
        total = torch.zeros(size).index_add_(0, local, weight)
        weight /= total[local]
        rows_out.append(row)
        cols_out.append(col)
        vals_out.append(weight)
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def _expand(lengths: torch.Tensor, starts: torch.Tensor, total: int) -> torch.Tensor:
    """Positions ``starts[i], ..., starts[i] + lengths[i] - 1`` of all runs ``i``, concatenated
    (in the dtype of ``starts``).

    Each item's position is its run's start plus its offset in the run, i.e. plus its global
    number minus the items before its run: one repeat and one in-place add of an arange.
    """
    before = torch.cumsum(lengths, 0, dtype=starts.dtype) - lengths
    pos = torch.repeat_interleave(starts - before, lengths, output_size=total)
    return pos.add_(torch.arange(total, dtype=pos.dtype))


def _query_expansion(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, top: torch.Tensor, k2: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 5: ``V_p <- mean of V_g over the k2 nearest g of p`` on coordinate lists."""
    n = len(top)
    counts = torch.bincount(rows, minlength=n)
    row_ptr = torch.cumsum(counts, 0) - counts
    nearest = top[:, :k2].reshape(-1)
    lengths = counts[nearest]
    total = int(lengths.sum())
    pos = _expand(lengths, row_ptr[nearest], total)
    target = torch.arange(n, dtype=torch.int64).repeat_interleave(k2) * n
    keys = torch.repeat_interleave(target, lengths, output_size=total).add_(cols[pos])
    keys, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(len(keys)).index_add_(0, inverse, vals[pos])
    return keys // n, keys % n, summed / k2


def _jaccard_blend(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    query_dist: torch.Tensor,
    lambda_value: float,
    chunk_size: int,
) -> torch.Tensor:
    """Steps 6-7 in place on ``query_dist``: ``(1 - lambda) d_J + lambda d``."""
    num_query, num_gallery = query_dist.shape
    n = num_query + num_gallery
    # Inverted index: the gallery rows' entries grouped by column.
    is_gallery = rows >= num_query
    g_rows, g_cols, g_vals = rows[is_gallery], cols[is_gallery], vals[is_gallery]
    order = torch.argsort(g_cols, stable=True)
    g_rows, g_vals = (g_rows[order] - num_query).to(torch.int32), g_vals[order]
    col_count = torch.bincount(g_cols, minlength=n)
    col_ptr = (torch.cumsum(col_count, 0) - col_count).to(torch.int32)
    max_rows = max(1, (2**31 - 1) // num_gallery)  # flat indices into a block stay int32
    # The queries' entries (rows sorted ascending) and how many pairs each query expands to.
    q_rows, q_cols, q_vals = rows[~is_gallery], cols[~is_gallery], vals[~is_gallery]
    q_ptr = torch.searchsorted(q_rows, torch.arange(num_query + 1))
    pairs = torch.zeros(num_query, dtype=torch.int64).index_add_(0, q_rows, col_count[q_cols])
    pairs_end = torch.cumsum(pairs, 0)
    start = 0
    while start < num_query:
        # Largest block from `start` within the pair budget and chunk_size (at least 1 query).
        budget = int(pairs_end[start] - pairs[start]) + _PAIR_BUDGET
        stop = int(torch.searchsorted(pairs_end, torch.tensor(budget), right=True))
        stop = max(start + 1, min(stop, start + chunk_size, start + max_rows, num_query))
        lo, hi = int(q_ptr[start]), int(q_ptr[stop])
        lengths = col_count[q_cols[lo:hi]].to(torch.int32)
        total = int(pairs_end[stop - 1]) - int(pairs_end[start] - pairs[start])
        # One item per (query entry (i, k, v), gallery entry (j, k, w)) pair: min(v, w) goes
        # to m[i, j]. Pair arrays are int32 (half the memory traffic; all values < 2**31).
        pos = _expand(lengths, col_ptr[q_cols[lo:hi]], total)
        overlap = torch.repeat_interleave(q_vals[lo:hi], lengths, output_size=total)
        torch.minimum(overlap, g_vals[pos], out=overlap)
        target = ((q_rows[lo:hi] - start) * num_gallery).to(torch.int32)
        flat = torch.repeat_interleave(target, lengths, output_size=total).add_(g_rows[pos])
        m = torch.zeros((stop - start) * num_gallery).index_add_(0, flat, overlap)
        m = m.view(stop - start, num_gallery)
        jaccard = 1.0 - m / (2.0 - m)
        block = query_dist[start:stop]
        block.mul_(lambda_value).add_(jaccard, alpha=1.0 - lambda_value)
        start = stop
    return query_dist


def rerank(
    q_feats: ArrayLike,
    g_feats: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int = 2048,
) -> torch.Tensor:
    """k-reciprocal re-ranked distances between every query and gallery image.

    The paper's defaults ``k1=20, k2=6, lambda=0.3`` (also torchreid's). Computed on CPU in
    float32, whatever the device of the inputs. Feed the result to
    :func:`~fedreid.evaluation.ranking.evaluate_ranking` with ``distmat=`` (smaller is closer).

    Nothing ``(Q + G) x (Q + G)`` is held. Memory: the ``[Q, G]`` result, a few
    ``[chunk_size, chunk_size]`` distance blocks, two ``[512, Q + G]`` int32 scratch tables,
    the sparse encodings (about ``k2 * (k1 + 1)`` entries per image after query expansion, 20
    bytes each) and up to ``2**24`` Jaccard pairs at ~16 bytes: about 0.7-0.9 GiB at
    Market-1501 size. Time: the ``(Q + G)^2 / 2`` distance products (symmetric blocks)
    dominate; see ``docs/report.md`` for measured times (``bench/bench_rerank.py``).

    Args:
        q_feats: ``[Q, D]`` query features (normalised here to unit length).
        g_feats: ``[G, D]`` gallery features.
        k1: size of the k-reciprocal neighbourhoods (``N(p, k1)`` holds ``k1 + 1`` images).
        k2: size of the local query expansion (1: none).
        lambda_value: weight of the original distance in the blend, in ``[0, 1]``.
        chunk_size: rows (and columns) per block of the distance matrix; the later stages
            use blocks of at most 512 rows. Large blocks mean few, large tensor operations,
            which matters on busy CPUs (each parallel operation waits for every thread).

    Returns:
        ``[Q, G]`` float32 distances (CPU).

    Raises:
        ValueError: on mismatched or empty inputs, non-finite features or bad parameters.

    Examples:
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
        >>> rerank(q, g, k1=1, k2=1).argmin().item()
        0
    """
    q, g = _check(q_feats, g_feats)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    feats = torch.nn.functional.normalize(torch.cat([q, g]), dim=1)
    n, num_query = len(feats), len(q)
    # Sizes of N(p, k1), N(p, k1/2) and the expansion set, capped at N as slicing would be
    # (round() halves to even, like numpy's around() in the authors' code).
    k_full, k_half, k_exp = min(k1 + 1, n), min(round(k1 / 2) + 1, n), min(k2, n)
    top, row_max, query_dist = _neighbours(feats, num_query, max(k_full, k_exp), chunk_size)
    block = min(chunk_size, _ROW_BLOCK)
    rows, cols, vals = _encode(feats, top, row_max, k_full, k_half, block)
    if k2 != 1:
        rows, cols, vals = _query_expansion(rows, cols, vals, top, k_exp)
    return _jaccard_blend(rows, cols, vals, query_dist, lambda_value, block)
