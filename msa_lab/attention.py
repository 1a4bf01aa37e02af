"""Public attention entry points: input checks, then an explicit backend.

``backend="reference"`` is the chunked plain-PyTorch oracle; ``"sdpa"`` (full
attention) is PyTorch's fused dense kernel; ``"flex"`` (block-sparse) is PyTorch
FlexAttention with a mask built from the selection; ``"triton"`` (block-sparse) is the
KV-outer Triton kernel and ``"triton_q_outer"`` the query-outer one; over a token selection
(DSA), ``"triton"`` is the token-gather kernel. ``"auto"`` picks the fastest
backend that supports the request. A named backend that cannot serve the request
raises; nothing falls back silently.
"""

from __future__ import annotations

import torch

from .backends import BLOCK_SPARSE, FULL, FULL_WITH_LSE, TOKEN_SPARSE, selection_backend
from .reference import attention_reference
from .select import select_moba, select_msa, select_quest
from .select.dsa import check_dsa_index, select_dsa
from .kv_outer_plan import KVOuterPlan
from .selection import PER_CHOICES, BlockSelection, TokenSelection
from .validation import check_bool, check_choice, check_index_inputs, check_qkv, check_scale


def _check_flags(**flags) -> None:
    """``return_lse`` and the like: True or False, never a truthy stand-in such as ``"no"``."""
    for name, value in flags.items():
        check_bool(value, name)


def _pack(out, lse, selection, return_lse: bool, return_selection: bool):
    extra = ([lse] if return_lse else []) + ([selection] if return_selection else [])
    return (out, *extra) if extra else out


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   scale: float | None = None, backend: str = "reference",
                   return_lse: bool = False):
    """Exact softmax attention with GQA. ``q [B, Nq, Hq, D]``, ``k, v [B, Nk, Hkv, D]``.

    Causal masking is bottom-right aligned when ``Nq < Nk`` (the last query sees every
    key). Returns ``out [B, Nq, Hq, D]`` in q's dtype, and with ``return_lse=True``
    also ``lse [B, Hq, Nq]`` (natural log, float32; float64 for float64 inputs).
    """
    B, Nq, Hq, Hkv, D = check_qkv(q, k, v, same_length=False)
    _check_flags(causal=causal, return_lse=return_lse)
    if causal and Nq > k.shape[1]:
        raise ValueError(f"causal attention needs q length {Nq} <= k length {k.shape[1]}")
    scale = check_scale(scale, D)
    if return_lse and backend == "sdpa":
        raise ValueError("backend='sdpa' cannot return the LSE; use backend='reference' or 'triton'")
    backend = (FULL_WITH_LSE if return_lse else FULL).resolve(backend, q)
    if backend == "sdpa":
        return _full_sdpa(q, k, v, causal, scale)
    if backend == "triton":
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            raise ValueError("backend='triton' of full_attention has no backward pass; use backend='sdpa' "
                             "or 'reference' for gradients, or call it under torch.no_grad()")
        from .kernels.flash import flash_attention

        out, lse = flash_attention(q, k, v, causal, scale)
    else:
        out, lse = attention_reference(q, k, v, scale=scale, causal=causal)
    return _pack(out, lse, None, return_lse, False)


def _full_sdpa(q, k, v, causal, scale):
    Nq, Nk = q.shape[1], k.shape[1]
    mask = None
    if causal and Nq == 1:  # the last query sees every key: no mask, SDPA's fused kernels
        causal = False
    if causal and Nq != Nk:  # SDPA's is_causal is top-left aligned; ours is bottom-right
        mask = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device).tril(Nk - Nq)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=causal and mask is None, scale=scale, enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           selection: BlockSelection | TokenSelection, *, scale: float | None = None,
                           backend: str = "reference", return_lse: bool = False,
                           deterministic: bool = False, plan: KVOuterPlan | None = None):
    """Exact causal softmax attention over the tokens of each query's selected blocks.

    ``selection`` rows are per KV group (shared by the group's query heads) or per
    query head; a ``TokenSelection`` (DSA) selects tokens, one row shared by every head
    (backends ``"reference"`` and ``"triton"``, the token-gather kernel). A query whose row
    sees no key outputs zeros and LSE = -inf.
    Differentiable in q, k, v with the ``reference`` (autograd), ``flex`` and ``triton``
    (KV-outer backward kernel) backends; ``deterministic=True`` makes the Triton backward
    bitwise reproducible on a given GPU model (no atomics; see ``kernels/kv_outer_bwd.py``; the
    token-gather backward has none, so it refuses the flag).
    ``plan``: ``prepare_kv_outer(selection)``, to share the Triton backend's query lists with
    ``index_kl_loss`` (its backward reuses the forward's either way).
    """
    B, N, Hq, Hkv, D = check_qkv(q, k, v)
    _check_flags(return_lse=return_lse, deterministic=deterministic)
    if not isinstance(selection, (BlockSelection, TokenSelection)):
        raise TypeError(f"selection must be a BlockSelection or TokenSelection, got {type(selection).__name__}")
    selection.check_matches(B, N, Hq, Hkv, q.device)
    scale = check_scale(scale, D)
    if isinstance(selection, TokenSelection):
        if plan is not None:
            raise ValueError("plan is a KV-outer plan of a BlockSelection; a TokenSelection takes none")
        backend = TOKEN_SPARSE.resolve(backend, q)
        if deterministic and backend == "triton":
            raise ValueError("deterministic=True: the token-gather backward adds dK/dV with atomics, whose "
                             "order varies between runs; use backend='reference' for reproducible gradients")
        return _token_sparse(q, k, v, selection, scale, backend, return_lse, False)
    backend = BLOCK_SPARSE.resolve(backend, q)
    KVOuterPlan.check_argument(plan, selection, backend)
    return _block_sparse(q, k, v, selection, scale, backend, return_lse, False, deterministic, plan)


def _block_sparse(q, k, v, selection, scale, backend, return_lse, return_selection, deterministic=False,
                  plan=None):
    """Attention over ``selection`` with a resolved ``backend`` (``BLOCK_SPARSE.resolve``)."""
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if backend == "flex":
        from .flex import block_sparse_flex

        out, lse = block_sparse_flex(q, k, v, selection, scale)
    elif backend in ("triton", "triton_q_outer"):
        if backend == "triton" and needs_grad:
            from .kernels.kv_outer_bwd import KVOuterAttention

            out, lse = KVOuterAttention.apply(q, k, v, selection, scale, deterministic, plan)
        elif backend == "triton":
            from .kernels.kv_outer import kv_outer_attention

            out, lse = kv_outer_attention(q, k, v, selection, scale, plan=plan)
        else:
            if needs_grad:
                raise ValueError("backend='triton_q_outer' has no backward pass; use backend='triton' "
                                 "(KV-outer) or 'reference' for gradients, or call it under torch.no_grad()")
            from .kernels.q_outer import q_outer_attention

            out, lse = q_outer_attention(q, k, v, selection, scale)
    else:
        out, lse = attention_reference(q, k, v, scale=scale, selection=selection)
    return _pack(out, lse, selection, return_lse, return_selection)


def moba_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int,
                   top_k: int, scale: float | None = None, backend: str = "reference",
                   return_lse: bool = False, return_selection: bool = False, deterministic: bool = False):
    """MoBA: per-head mean-pooled key gating (own block forced, counted in ``top_k``),
    then exact attention over the selected blocks. Returns ``out`` then, as asked,
    ``lse`` and the ``BlockSelection``. With a Triton backend (or ``"auto"`` on CUDA) the
    selection runs on the Triton kernels too."""
    return _select_and_attend(select_moba, q, k, v, block_size, top_k, scale, backend, return_lse,
                              return_selection, deterministic)


def quest_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int,
                    top_k: int, scale: float | None = None, backend: str = "reference",
                    return_lse: bool = False, return_selection: bool = False, deterministic: bool = False):
    """Quest: per-head min/max key-bound scores (own block forced, counted in ``top_k``),
    then exact attention over the selected blocks. Returns ``out`` then, as asked, ``lse``
    and the ``BlockSelection``. With a Triton backend (or ``"auto"`` on CUDA) the selection
    runs on the Triton kernels too."""
    return _select_and_attend(select_quest, q, k, v, block_size, top_k, scale, backend, return_lse,
                              return_selection, deterministic)


def _select_and_attend(select, q, k, v, block_size, top_k, scale, backend, return_lse, return_selection,
                       deterministic):
    """A parameter-free selector of q and k (``select(q, k, *, block_size, top_k, backend)``), then
    attention over its selection; the selection follows the attention's backend."""
    B, N, Hq, Hkv, D = check_qkv(q, k, v)
    _check_flags(return_lse=return_lse, return_selection=return_selection, deterministic=deterministic)
    scale = check_scale(scale, D)
    backend = BLOCK_SPARSE.resolve(backend, q)
    with torch.no_grad():  # the scorer has no parameters and top-k no gradient
        selection = select(q, k, block_size=block_size, top_k=top_k, backend=selection_backend(backend))
    return _block_sparse(q, k, v, selection, scale, backend, return_lse, return_selection, deterministic)


def msa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index_q: torch.Tensor,
                  index_k: torch.Tensor, *, block_size: int = 128, top_k: int = 16,
                  scale: float | None = None, backend: str = "reference",
                  return_lse: bool = False, return_selection: bool = False, deterministic: bool = False,
                  pooling: str = "max", per: str = "group", sink_blocks: int = 0):
    """MSA: the index branch picks blocks per KV group (max-pooled index logits, local
    block forced), then every query head of the group attends to them exactly.
    ``index_q [B, N, Hkv, Di]`` (``[B, N, Hq, Di]`` with ``per="head"``: one index head per
    query head), ``index_k [B, N, 1 or index_q's heads, Di]``. ``pooling`` and ``sink_blocks``
    are ``select_msa``'s ablations. With a Triton backend (or ``"auto"`` on CUDA) the
    selection runs on the Triton index kernels too."""
    B, N, Hq, Hkv, D = check_qkv(q, k, v)
    _check_flags(return_lse=return_lse, return_selection=return_selection, deterministic=deterministic)
    Bi, Ni, G, _ = check_index_inputs(index_q, index_k)
    per = check_choice(per, "per", PER_CHOICES)
    heads, what = (Hkv, "groups") if per == "group" else (Hq, "query_heads")
    if (Bi, Ni, G) != (B, N, heads):
        raise ValueError(
            f"index_q must be [batch={B}, seq={N}, {what}={heads}, index_dim] to match q/k "
            f"(one index head per {'KV group' if per == 'group' else 'query head'} for per={per!r}), "
            f"got {tuple(index_q.shape)}"
        )
    if index_q.device != q.device:
        raise ValueError(f"index_q is on {index_q.device} but q is on {q.device}")
    scale = check_scale(scale, D)
    backend = BLOCK_SPARSE.resolve(backend, q)
    with torch.no_grad():  # top-k has no gradient; the index branch learns from its own loss
        selection = select_msa(index_q, index_k, block_size=block_size, top_k=top_k,
                               backend=selection_backend(backend), pooling=pooling, per=per,
                               sink_blocks=sink_blocks)
    return _block_sparse(q, k, v, selection, scale, backend, return_lse, return_selection, deterministic)


def _token_sparse(q, k, v, selection, scale, backend, return_lse, return_selection):
    """Attention over the token selection ``selection`` with a resolved ``backend``
    (``TOKEN_SPARSE.resolve``)."""
    if backend == "triton":
        from .kernels.token_gather import token_gather_attention

        out, lse = token_gather_attention(q, k, v, selection, scale)
    else:
        out, lse = attention_reference(q, k, v, scale=scale, selection=selection)
    return _pack(out, lse, selection, return_lse, return_selection)


def dsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index_q: torch.Tensor,
                  index_k: torch.Tensor, index_weights: torch.Tensor, *, top_k: int = 2048,
                  scale: float | None = None, backend: str = "reference", return_lse: bool = False,
                  return_selection: bool = False):
    """DSA: the lightning indexer picks the ``top_k`` tokens of each query (``select_dsa``; one
    row shared by every query head), then exact softmax attention over them, differentiable in
    q, k and v. ``index_q [B, N, H_I, Di]``, ``index_k [B, N, 1, Di]``, ``index_weights [B, N,
    H_I]``. With ``backend="triton"`` (or ``"auto"`` on CUDA) the indexer, the top-k and the
    attention run on the Triton kernels. Returns ``out`` then, as asked, ``lse`` and the
    ``TokenSelection``."""
    B, N, Hq, Hkv, D = check_qkv(q, k, v)
    _check_flags(return_lse=return_lse, return_selection=return_selection)
    Bi, Ni, _, _ = check_dsa_index(index_q, index_k, index_weights)
    if (Bi, Ni) != (B, N):
        raise ValueError(f"index_q must be [batch={B}, seq={N}, index_heads, index_dim] to match q/k, "
                         f"got {tuple(index_q.shape)}")
    if index_q.device != q.device:
        raise ValueError(f"index_q is on {index_q.device} but q is on {q.device}")
    scale = check_scale(scale, D)
    backend = TOKEN_SPARSE.resolve(backend, q)
    with torch.no_grad():  # top-k has no gradient; the indexer learns from its own loss
        selection = select_dsa(index_q, index_k, index_weights, top_k=top_k, backend=selection_backend(backend))
    return _token_sparse(q, k, v, selection, scale, backend, return_lse, return_selection)
