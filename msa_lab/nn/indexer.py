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
``backend="triton"`` computes the loss over the selected tokens and its gradients in fused
KV-outer kernels instead (``kernels/index_kl.py``); the warm-up's loss stays in PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backends import INDEX_KL
from ..kv_outer_plan import KVOuterPlan
from ..reference import compute_dtype, grouped_scores, query_chunk_size
from ..selection import BlockSelection
from ..validation import check_hidden, check_positive_int, check_scale, check_tensor
from .rope import check_rope_base, check_rotary_dims, rotary


class MSAIndexer(nn.Module):
    """Index projections of one MSA layer: ``forward(x [B, N, d_model]) -> (index_q [B, N, G, Di],
    index_k [B, N, 1, Di])`` with ``G`` = the layer's KV heads."""

    def __init__(self, d_model: int, num_kv_heads: int, index_dim: int, *, rotary_dims: int | None = None,
                 rope_base: float = 10000.0):
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.num_kv_heads = check_positive_int(num_kv_heads, "num_kv_heads")
        self.index_dim = index_dim = check_positive_int(index_dim, "index_dim")
        check_rotary_dims(rotary_dims, index_dim)
        self.rotary_dims, self.rope_base = rotary_dims, check_rope_base(rope_base)
        self.wq = nn.Linear(d_model, num_kv_heads * index_dim, bias=False)
        self.wk = nn.Linear(d_model, index_dim, bias=False)
        self.q_norm = nn.RMSNorm(index_dim)
        self.k_norm = nn.RMSNorm(index_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = check_hidden(x, self.d_model)
        iq = _rms_norm(self.q_norm, self.wq(x).view(B, N, self.num_kv_heads, self.index_dim))
        ik = _rms_norm(self.k_norm, self.wk(x).view(B, N, 1, self.index_dim))
        return (rotary(iq, self.rotary_dims, self.rope_base), rotary(ik, self.rotary_dims, self.rope_base))


def _rms_norm(norm: nn.RMSNorm, h: torch.Tensor) -> torch.Tensor:
    """``norm(h)`` computed in float32 and returned in h's dtype: under bf16 autocast the
    projection is bf16 while the norm's weight stays float32, a pair torch normalises only on
    its slow unfused path (with a warning); the index logits then stay in the input's dtype."""
    return nn.functional.rms_norm(h.float(), norm.normalized_shape, norm.weight.float(), norm.eps).to(h.dtype)


def index_kl_loss(index_q: torch.Tensor, index_k: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                  selection: BlockSelection | None = None, *, scale: float | None = None,
                  query_chunk: int | None = None, lse: torch.Tensor | None = None,
                  backend: str = "reference", plan: KVOuterPlan | None = None) -> torch.Tensor:
    """Mean over (batch, token, group) of ``KL(teacher || student)`` (see the module
    docstring): ``index_q [B, N, Hkv, Di]``, ``index_k [B, N, 1, Di]``, main ``q [B, N, Hq, D]``
    and ``k [B, N, Hkv, D]`` (detached here), ``selection`` a per-group selection or None
    (every visible token). ``lse [B, Hq, N]``: the main sparse attention's LSE over the
    selection (``return_lse=True``), the teacher's normaliser, recomputed when None.
    A scalar (float32; float64 for float64 index inputs), differentiable in index_q and
    index_k only.

    ``backend``: ``"reference"`` (plain PyTorch in query chunks of ``query_chunk`` rows,
    recomputed in the backward pass), ``"triton"`` (the fused kernels of
    ``kernels/index_kl.py``; selected tokens only) or ``"auto"`` (Triton for CUDA tensors
    with a selection, the reference otherwise). ``plan``: the main attention's
    ``prepare_kv_outer(selection)``, whose query lists the Triton backend re-cuts instead of
    building its own."""
    # Dtypes may differ between the index and main inputs (and, on the reference path, within
    # each pair), so each tensor is checked on its own and the shapes against q.
    for name, x, layout in (("index_q", index_q, "[batch, seq, kv_heads, index_dim]"),
                            ("index_k", index_k, "[batch, seq, 1, index_dim]"),
                            ("q", q, "[batch, seq, heads, dim]"), ("k", k, "[batch, seq, kv_heads, dim]")):
        check_tensor(x, name, 4, layout)
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    B, N, Hq, D = q.shape
    Hkv, Di = k.shape[2], index_q.shape[-1]
    if k.shape[:2] != (B, N) or k.shape[3] != D or Hkv == 0 or Hq % Hkv:
        raise ValueError(f"k must be [batch={B}, seq={N}, kv_heads dividing {Hq}, dim={D}] like q, "
                         f"got {tuple(k.shape)}")
    if min(B, N, Hq, D, Di) == 0:
        raise ValueError(f"q and index_q must have no empty dimension, got {tuple(q.shape)} and "
                         f"{tuple(index_q.shape)}")
    G = Hq // Hkv
    if index_q.shape[:3] != (B, N, Hkv) or index_k.shape[:3] != (B, N, 1) or index_k.shape[-1] != Di:
        raise ValueError(f"index_q must be [{B}, {N}, {Hkv}, Di] and index_k [{B}, {N}, 1, Di]; got "
                         f"{tuple(index_q.shape)} and {tuple(index_k.shape)}")
    if selection is not None:
        if not isinstance(selection, BlockSelection):
            raise TypeError(f"selection must be a BlockSelection or None, got {type(selection).__name__}")
        if selection.per != "group":
            raise ValueError("selection must be per group (MSA's index branch selects per KV group)")
        selection.check_matches(B, N, Hq, Hkv, q.device)
    if query_chunk is not None:
        query_chunk = check_positive_int(query_chunk, "query_chunk")
    backend = INDEX_KL.check(backend)
    if lse is not None:
        if selection is None:
            raise ValueError("lse is the main sparse attention's LSE over a selection; without a selection "
                             "(every visible token) the teacher is normalised here")
        if not isinstance(lse, torch.Tensor) or lse.shape != (B, Hq, N) or not lse.is_floating_point():
            raise ValueError(f"lse must be a float tensor [{B}, {Hq}, {N}] (the attention's return_lse), got "
                             f"{tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__}")
        lse = lse.detach()
    scale = check_scale(scale, D)
    q, k = q.detach(), k.detach()
    if backend == "auto":  # the dense warm-up (no selection) has no kernel
        backend = INDEX_KL.resolve(backend, index_q) if selection is not None else "reference"
    KVOuterPlan.check_argument(plan, selection, backend)
    if backend == "triton":
        return _triton_kl(index_q, index_k, q, k, selection, scale, lse, plan)
    if selection is None:
        chunk, piece = query_chunk or query_chunk_size(N, B, Hq), _visible_kl
    else:
        T = selection.top_k * selection.block_size
        chunk, piece = query_chunk or max(1, (1 << 27) // (B * Hkv * T * max(D, Di, G))), _selected_kl
    total = index_q.new_zeros((), dtype=compute_dtype(index_q))
    # The pieces compute in compute_dtype on purpose; under a model's bf16 autocast their
    # einsums would otherwise round the logits (and the loss) to bf16.
    with torch.autocast(index_q.device.type, enabled=False):
        for start in range(0, N, chunk):
            args = (index_q, index_k, q, k, selection, scale, lse, start, min(N, start + chunk))
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


def _visible_kl(index_q, index_k, q, k, selection, scale, lse, start, stop):
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


def _selected_kl(index_q, index_k, q, k, selection, scale, lse, start, stop):
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
        s = s.masked_fill(~allowed.unsqueeze(2), float("-inf"))
        if lse is None:
            teacher = torch.softmax(s, -1).mean(2)
        else:
            norm = lse[:, :, start:stop].to(s.dtype).view(B, Hkv, Hq // Hkv, C, 1)
            teacher = torch.exp(s - norm).mean(2)
    dt = compute_dtype(index_q)
    ik = index_k[:, :, 0].to(dt).gather(1, tok.flatten(1).unsqueeze(-1).expand(-1, -1, Di))  # shared by groups
    student = torch.einsum("bcgd,bgctd->bgct", index_q[:, start:stop].to(dt), ik.view(B, Hkv, C, T, Di))
    return _kl_sum(teacher, student * Di ** -0.5, allowed)


def _triton_kl(index_q, index_k, q, k, selection, scale, lse, plan):
    from .. import triton_runtime as runtime

    if selection is None:
        raise ValueError("backend='triton' computes the loss over a selection's tokens; with selection=None "
                         "(every visible token, the dense warm-up) use backend='reference' or 'auto'")
    if not (index_q.is_cuda or runtime.interpreted()):
        raise ValueError(f"backend='triton' needs a CUDA GPU, or TRITON_INTERPRET=1 set before msa_lab's kernels "
                         f"are first imported to run them (slowly) on the CPU; index_q is on {index_q.device}")
    for name, x in (("index_k", index_k), ("q", q), ("k", k), ("lse", lse)):
        if x is not None and x.device != index_q.device:
            raise ValueError(f"{name} is on {x.device} but index_q is on {index_q.device}")
    for x in (index_q, q):
        runtime.check_triton_device(x, "triton")
    if index_k.dtype != index_q.dtype or k.dtype != q.dtype:
        raise ValueError(f"backend='triton' needs index_k in index_q's dtype and k in q's; got index_q "
                         f"{index_q.dtype}, index_k {index_k.dtype}, q {q.dtype}, k {k.dtype}")
    selection.check_matches(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device)
    from ..kernels.index_kl import IndexKL

    return IndexKL.apply(index_q, index_k, q, k, selection, scale, lse, plan)
