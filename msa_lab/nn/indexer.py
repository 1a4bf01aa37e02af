"""MSA's index branch as a trainable module, and the KL loss that trains it (SPEC, "Training
the index branch").

``MSAIndexer`` projects the layer input to one index query per KV group and one index key
shared by all groups, each with an RMSNorm and partial RoPE; ``select_msa`` turns them into
blocks (max-pooled logits, local block forced, top_k).

``index_kl_loss`` distils the main attention into the index scores. Teacher: the mean over
a group's query heads of the main attention probabilities over a token set, detached.
Student: ``softmax(index_q · index_k · Di**-0.5)`` over the same set. Loss: mean over
(batch, token, group) of ``KL(teacher || student)``. Its gradient reaches only the index
branch (``d loss / d logit = p_student - p_teacher``, over the number of rows). The set:

- with a selection (sparse routing on): the visible tokens of the selected blocks, the
  teacher normalised over them, which is the main sparse attention's own distribution;
- without one (the warm-up, while the model runs full attention): every visible token. A
  loss over the selected tokens only would never teach the indexer about blocks it does
  not pick yet, so the warm-up distils the whole distribution, as DSA's dense warm-up does.

It is computed in query chunks, never ``N x N`` at once: over every visible token it is
``O(N²)`` work, like the dense attention that the warm-up runs anyway; over the selected
tokens the blocks are gathered, ``O(N · top_k · block_size)``, like the sparse attention.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..reference import compute_dtype, grouped_scores, query_chunk_size
from ..selection import BlockSelection
from .rope import rotary


class MSAIndexer(nn.Module):
    """Index projections of one MSA layer: ``forward(x [B, N, d_model]) -> (index_q [B, N, G, Di],
    index_k [B, N, 1, Di])`` with ``G`` = the layer's KV heads."""

    def __init__(self, d_model: int, num_kv_heads: int, index_dim: int, *, rotary_dims: int | None = None,
                 rope_base: float = 10000.0):
        super().__init__()
        self.num_kv_heads, self.index_dim = num_kv_heads, index_dim
        self.rotary_dims, self.rope_base = rotary_dims, rope_base
        self.wq = nn.Linear(d_model, num_kv_heads * index_dim, bias=False)
        self.wk = nn.Linear(d_model, index_dim, bias=False)
        self.q_norm = nn.RMSNorm(index_dim)
        self.k_norm = nn.RMSNorm(index_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        iq = self.q_norm(self.wq(x).view(B, N, self.num_kv_heads, self.index_dim))
        ik = self.k_norm(self.wk(x).view(B, N, 1, self.index_dim))
        return (rotary(iq, self.rotary_dims, self.rope_base), rotary(ik, self.rotary_dims, self.rope_base))


def index_kl_loss(index_q: torch.Tensor, index_k: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                  selection: BlockSelection | None = None, *, scale: float | None = None,
                  query_chunk: int | None = None) -> torch.Tensor:
    """Mean over (batch, token, group) of ``KL(teacher || student)`` (see the module
    docstring): ``index_q [B, N, Hkv, Di]``, ``index_k [B, N, 1, Di]``, main ``q [B, N, Hq, D]``
    and ``k [B, N, Hkv, D]`` (detached here), ``selection`` a per-group selection or None
    (every visible token). A scalar (float32; float64 for float64 index inputs),
    differentiable in index_q and index_k only."""
    B, N, Hq, D = q.shape
    Hkv, Di = k.shape[2], index_q.shape[-1]
    G = Hq // Hkv
    if index_q.shape[:3] != (B, N, Hkv) or index_k.shape[:3] != (B, N, 1) or index_k.shape[-1] != Di:
        raise ValueError(f"index_q must be [{B}, {N}, {Hkv}, Di] and index_k [{B}, {N}, 1, Di]; got "
                         f"{tuple(index_q.shape)} and {tuple(index_k.shape)}")
    if selection is not None and selection.per != "group":
        raise ValueError("selection must be per group (MSA's index branch selects per KV group)")
    scale = D ** -0.5 if scale is None else scale
    q, k = q.detach(), k.detach()
    if selection is None:
        chunk, piece = query_chunk or query_chunk_size(N, B, Hq), _visible_kl
    else:
        T = selection.top_k * selection.block_size
        chunk, piece = query_chunk or max(1, (1 << 27) // (B * Hkv * T * max(D, Di, G))), _selected_kl
    total = index_q.new_zeros((), dtype=compute_dtype(index_q))
    for start in range(0, N, chunk):
        args = (index_q, index_k, q, k, selection, scale, start, min(N, start + chunk))
        if torch.is_grad_enabled() and (index_q.requires_grad or index_k.requires_grad):
            # Recompute the chunk in the backward pass: autograd would otherwise keep every
            # chunk's logits (or gathered index keys), N x N or N x top_k x block_size in all.
            total = total + checkpoint(piece, *args, use_reentrant=False)
        else:
            total = total + piece(*args)
    return total / (B * N * Hkv)


def _kl_sum(teacher: torch.Tensor, student_logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Sum of ``teacher * log(teacher / softmax(student))`` over allowed tokens (0 log 0 = 0)."""
    dt = student_logits.dtype
    log_student = torch.log_softmax(student_logits.masked_fill(~allowed, float("-inf")), -1)
    teacher = teacher.to(dt)
    log_teacher = torch.log(teacher.clamp_min(torch.finfo(dt).tiny))
    return torch.where(teacher > 0, teacher * (log_teacher - log_student), 0.0).sum()


def _visible_kl(index_q, index_k, q, k, selection, scale, start, stop):
    """KL summed over query rows ``[start, stop)`` and every visible token."""
    L = stop  # keys past the chunk's last query are never visible
    pos = torch.arange(start, stop, device=q.device)
    allowed = (torch.arange(L, device=q.device) <= pos[:, None]).view(1, 1, stop - start, L)
    with torch.no_grad():
        s = grouped_scores(q[:, start:stop], k[:, :L], scale)  # [B, Hkv, G, C, L]
        teacher = torch.softmax(s.masked_fill(~allowed.unsqueeze(2), float("-inf")), -1).mean(2)
    dt = compute_dtype(index_q)
    student = torch.einsum("bcgd,bld->bgcl", index_q[:, start:stop].to(dt), index_k[:, :L, 0].to(dt))
    return _kl_sum(teacher, student * index_q.shape[-1] ** -0.5, allowed)


def _selected_kl(index_q, index_k, q, k, selection, scale, start, stop):
    """KL summed over query rows ``[start, stop)`` and their selected tokens: the blocks are
    gathered, so the work is ``top_k x block_size`` per row and group, like the sparse
    attention itself."""
    B, N, Hq, D = q.shape
    Hkv, Di = k.shape[2], index_q.shape[-1]
    bs, C = selection.block_size, stop - start
    ids = selection.indices[:, :, start:stop].long()  # [B, Hkv, C, K]
    tok = (ids.clamp_min(0).unsqueeze(-1) * bs + torch.arange(bs, device=q.device)).flatten(-2)  # [B, Hkv, C, T]
    T = tok.shape[-1]
    pos = torch.arange(start, stop, device=q.device).view(1, 1, C, 1)
    allowed = (ids >= 0).repeat_interleave(bs, -1) & (tok <= pos)  # future and padding tokens out
    tok = tok.clamp_max(N - 1)
    with torch.no_grad():
        keys = k.transpose(1, 2).gather(2, tok.flatten(2).unsqueeze(-1).expand(-1, -1, -1, D))
        qg = q[:, start:stop].view(B, C, Hkv, Hq // Hkv, D).to(compute_dtype(q))
        s = torch.einsum("bcgxd,bgctd->bgxct", qg, keys.view(B, Hkv, C, T, D).to(qg.dtype)) * scale
        teacher = torch.softmax(s.masked_fill(~allowed.unsqueeze(2), float("-inf")), -1).mean(2)
    dt = compute_dtype(index_q)
    ik = index_k[:, :, 0].to(dt).gather(1, tok.flatten(1).unsqueeze(-1).expand(-1, -1, Di))  # shared by groups
    student = torch.einsum("bcgd,bgctd->bgct", index_q[:, start:stop].to(dt), ik.view(B, Hkv, C, T, Di))
    return _kl_sum(teacher, student * Di ** -0.5, allowed)
