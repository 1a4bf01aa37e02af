"""Plain-PyTorch oracles: exact softmax attention, full or block-sparse, and the true
attention mass per key block.

They process queries in chunks so that no ``N x N`` (or ``N x blocks x heads``)
tensor exists at once: memory stays near ``chunk * N * heads`` elements. Math is done
in float32 (float64 if the inputs are float64); they are differentiable through
autograd, so they also serve as the gradient oracle.

A NaN or inf in q, k or v reaches only the rows that see it (docs/semantics.md): masked
keys are masked in the values too, not only in the probabilities, since ``0 * NaN`` is NaN.
"""

from __future__ import annotations

import torch

from .selection import BlockSelection, TokenSelection, block_one_hot, num_blocks

#: Elements of the largest intermediate (``batch * heads * chunk * keys``) per chunk.
CHUNK_ELEMENTS = 1 << 26


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def query_chunk_size(num_keys: int, batch: int, heads: int) -> int:
    """Query rows per chunk so that ``batch * heads * rows * num_keys <= CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // max(1, num_keys * batch * heads))


def grouped_scores(q_rows: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``q_rows [B, C, Hq, D] x k [B, L, Hkv, D] -> scores [B, Hkv, G, C, L]``.

    Query head ``h`` is ``(h // G, h % G)``: GQA without repeating K.
    """
    B, C, Hq, D = q_rows.shape
    Hkv = k.shape[2]
    dt = compute_dtype(q_rows)
    qg = q_rows.to(dt).view(B, C, Hkv, Hq // Hkv, D)
    return torch.einsum("bcgxd,blgd->bgxcl", qg, k.to(dt)) * scale


def _softmax_stats(scores: torch.Tensor, allowed: torch.Tensor):
    """Masked softmax probabilities and natural-log LSE; rows with nothing allowed
    give zero probabilities and LSE = -inf (never NaN)."""
    s = scores.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1)  # fused; exp(s - lse) costs several times more on the CPU
    # The largest probability is exp(m - lse), so lse = m - log(max p): exact to rounding.
    # (torch.logsumexp on the CPU was seen off by 1e-10 relative in float64 on 5-D input.)
    m = s.amax(-1)
    empty = m == float("-inf")  # an overflow (+inf) must show as inf/NaN, not as an empty row
    lse = m - torch.log(p.amax(-1))
    if bool(empty.any()):
        p = p.masked_fill(empty.unsqueeze(-1), 0.0)
        lse = lse.masked_fill(empty, float("-inf"))
    return p, lse


def _finite_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x with its non-finite entries zeroed, x where they are kept and the rest zeroed)``."""
    finite = torch.isfinite(x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(finite, x, zero), torch.where(finite, zero, x)


def _with_nonfinite_scores(s: torch.Tensor, raw: torch.Tensor, q_bad: torch.Tensor,
                           k_bad: torch.Tensor) -> torch.Tensor:
    """Scores ``s [B, Hkv, G, C, L]`` of the zeroed q and k, with the raw (IEEE) scores
    ``raw`` where the query row (``q_bad [B, C, Hq]``) or the key (``k_bad [B, L, Hkv]``)
    held a non-finite entry; masking them afterwards leaves them only in the rows that see
    them. The raw scores carry no gradient, so no masked pair's gradient is ``0 * NaN``."""
    B, Hkv, G, C, L = s.shape
    rows = q_bad.view(B, C, Hkv, G).permute(0, 2, 3, 1).unsqueeze(-1)
    keys = k_bad.permute(0, 2, 1).view(B, Hkv, 1, 1, L)
    return torch.where(rows | keys, raw.detach(), s)


def _nonfinite_value_terms(p: torch.Tensor, allowed: torch.Tensor, v_bad: torch.Tensor) -> torch.Tensor:
    """``[B, C, Hkv, G, D]``: what the non-finite entries of ``v_bad [B, L, Hkv, D]`` (zero
    elsewhere) add to the rows that may see them (``allowed``), and nothing elsewhere: each
    product is masked, so a masked row gets ``0``, not ``0 * NaN``, in value and gradient."""
    B, Hkv, G, C, L = p.shape
    D = v_bad.shape[-1]
    keys = (v_bad != 0).any(-1).any(-1).any(0).nonzero().flatten()  # the few keys holding one
    out = p.new_zeros(B, Hkv, G, C, D)
    step = max(1, CHUNK_ELEMENTS // max(1, B * Hkv * G * C * D))
    for piece in keys.split(step):
        vals = v_bad[:, piece].permute(0, 2, 1, 3).unsqueeze(2).unsqueeze(2)  # [B, Hkv, 1, 1, X, D]
        seen = allowed[..., piece].unsqueeze(-1)
        masked = torch.where(seen, vals, torch.zeros((), dtype=vals.dtype, device=vals.device))
        out = out + (p[..., piece].unsqueeze(-1) * masked).sum(-2)
    return out.permute(0, 3, 1, 2, 4)


def _selection_token_mask(selection: BlockSelection | TokenSelection, rows: torch.Tensor, group_size: int,
                          num_keys: int, total_keys: int) -> torch.Tensor:
    """``bool [B, Hkv or 1, G or 1, C, L]``: key token ``< num_keys`` allowed by the selection's
    rows ``rows`` (of ``total_keys`` keys: a decode step's one row sees the whole cache)."""
    sel_rows = selection.indices[:, :, rows]
    if isinstance(selection, TokenSelection):  # one row per query, shared by every head; causal, so < L
        return block_one_hot(sel_rows, num_keys).unsqueeze(2)
    per, block_size = selection.per, selection.block_size
    nb = num_blocks(total_keys, block_size)
    onehot = block_one_hot(sel_rows, nb)  # [B, Hs, C, nb]
    key_block = torch.arange(num_keys, device=sel_rows.device) // block_size
    tokens = onehot.index_select(-1, key_block)  # [B, Hs, C, L]
    B, Hs, C, L = tokens.shape
    if per == "group":
        return tokens.unsqueeze(2)
    return tokens.view(B, Hs // group_size, group_size, C, L)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    selection: BlockSelection | TokenSelection | None = None,
    query_chunk: int | None = None,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention; returns ``(out [B, Nq, Hq, D] in q.dtype, lse [B, Hq, Nq])``.

    Causal masking is bottom-right aligned: query ``i`` sits at position
    ``Nk - Nq + i``. With ``selection``, only keys in the selected blocks (or tokens) of
    each query's row are visible (plus causality). LSE is the natural log of the softmax
    normaliser of the scaled scores. ``positions`` (causal self-attention, ``Nq == Nk``):
    only those query rows, out ``[B, R, Hq, D]`` (e.g. sampled rows at long lengths).
    A non-finite q, k or v entry makes only the rows that see it non-finite (one check of
    the inputs per call; only inputs holding one take the slower masked path).
    """
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    offset = Nk - Nq
    rows = torch.arange(Nq, device=q.device) if positions is None else positions.to(q.device).long()
    chunk = query_chunk or query_chunk_size(Nk, B, Hq)
    dt = compute_dtype(q)
    finite = bool(torch.isfinite(q).all() & torch.isfinite(k).all() & torch.isfinite(v).all())
    if not finite:
        q_raw, k_raw = q, k
        q, q_bad = _finite_parts(q)
        k, k_bad = _finite_parts(k)
        v, v_bad = _finite_parts(v.to(dt))
        q_bad, k_bad = q_bad.ne(0).any(-1), k_bad.ne(0).any(-1)  # non-finite entries are never 0
    vv = v.to(dt)
    outs, lses = [], []
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        pos = idx + offset
        L = int(pos.max()) + 1 if causal else Nk  # keys past the chunk's last query are masked
        s = grouped_scores(q[:, idx], k[:, :L], scale)  # [B, Hkv, G, C, L]
        if not finite:
            raw = grouped_scores(q_raw[:, idx], k_raw[:, :L], scale)
            s = _with_nonfinite_scores(s, raw, q_bad[:, idx], k_bad[:, :L])
        allowed = torch.ones(1, 1, 1, idx.numel(), L, dtype=torch.bool, device=q.device)
        if causal:
            allowed = allowed & (torch.arange(L, device=q.device) <= pos.view(-1, 1))
        if selection is not None:
            allowed = allowed & _selection_token_mask(selection, idx, G, L, Nk)
        p, lse = _softmax_stats(s, allowed)
        if not finite:  # a NaN score makes softmax NaN across the row, masked keys included
            p = p.masked_fill(~allowed, 0.0)
        o = torch.einsum("bgxcl,blgd->bcgxd", p, vv[:, :L])
        if not finite:
            o = o + _nonfinite_value_terms(p, allowed, v_bad[:, :L])
        outs.append(o.reshape(B, idx.numel(), Hq, D))
        lses.append(lse.reshape(B, Hq, idx.numel()))
    return torch.cat(outs, 1).to(q.dtype), torch.cat(lses, -1)


def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """True causal attention mass per key block for the query rows at ``positions``:
    ``[B, Hq, R, num_blocks]`` (float32, or float64 for float64 inputs), each row
    summing to 1. Normalisers are exact (all visible keys), whatever rows are asked for.
    """
    B, N, Hq, _ = q.shape
    nb = num_blocks(N, block_size)
    chunk = query_chunk or query_chunk_size(N, B, Hq)
    masses = []
    for start in range(0, positions.numel(), chunk):
        pos = positions[start:start + chunk]
        L = int(pos.max()) + 1
        s = grouped_scores(q[:, pos], k[:, :L], scale)
        allowed = torch.arange(L, device=q.device) <= pos.view(-1, 1)
        p, _ = _softmax_stats(s, allowed)
        nb_L = num_blocks(L, block_size)
        p = torch.nn.functional.pad(p, (0, nb_L * block_size - L))
        m = p.unflatten(-1, (nb_L, block_size)).sum(-1)
        m = torch.nn.functional.pad(m, (0, nb - nb_L))
        masses.append(m.flatten(1, 2))  # [B, Hq, C, nb]
    return torch.cat(masses, 2)
