"""One attention layer for full attention, MoBA and MSA, built on ``msa_lab``'s ops.

``Attention(d_model, num_heads, num_kv_heads, method=...)`` projects the input to GQA
q/k/v with (partial) RoPE, attends, and projects back. ``method``:

- ``"full"``: exact causal attention;
- any registered selector of real inputs (``msa_lab.select.registry``), then block-sparse
  attention over its selection: ``"moba"`` (MoBA's parameter-free mean-pooled gate per query
  head), the controls (``"window"``, ``"random"``, ``"oracle"``), and ``"msa"``, whose index
  branch (``MSAIndexer``) picks blocks per KV group and learns from ``index_kl_loss``, returned
  as the layer's auxiliary loss (a learned selector with index inputs gets an indexer).

``layer.sparse`` is the routing switch: False runs full attention whatever the method (for
MSA this is the indexer warm-up: its KL loss then covers every visible token), True routes
through the selected blocks. It starts True for MoBA and MSA; a trainer turns it off for a
warm-up.

``backend`` picks the ops: ``"reference"`` (plain PyTorch, autograd, any device),
``"triton"`` (the KV-outer kernels with their backward; dense layers use SDPA), or
``"auto"`` (Triton on CUDA, reference elsewhere; dense layers use SDPA everywhere).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import block_sparse_attention, full_attention
from ..kv_outer_plan import prepare_kv_outer
from ..backends import BLOCK_SPARSE
from ..select.registry import SELECTORS, selectors
from ..validation import check_bool, check_choice, check_hidden, check_positive_int
from .indexer import MSAIndexer, index_kl_loss
from .rope import check_rope_base, check_rotary_dims, rotary

METHODS = ("full", *(s.name for s in selectors()))
BACKENDS = ("auto", "reference", "triton")


class Attention(nn.Module):
    """``forward(x [B, N, d_model]) -> (y [B, N, d_model], aux_loss or None)``; the last
    selection is kept in ``self.last_selection`` (None under full attention)."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int | None = None, *,
                 method: str = "full", block_size: int = 64, top_k: int = 8, index_dim: int | None = None,
                 rotary_dims: int | None = None, rope_base: float = 10000.0, backend: str = "auto",
                 deterministic: bool = False, options: dict | None = None):
        super().__init__()
        # Each argument is checked under its own name before anything is derived from it.
        d_model = check_positive_int(d_model, "d_model")
        num_heads = check_positive_int(num_heads, "num_heads")
        num_kv_heads = check_positive_int(num_kv_heads, "num_kv_heads")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}) when "
                                 "head_dim is None; give head_dim to use another head size")
            head_dim = d_model // num_heads
        self.head_dim = check_positive_int(head_dim, "head_dim")
        self.method = check_choice(method, "method", METHODS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.block_size = check_positive_int(block_size, "block_size")
        self.top_k = check_positive_int(top_k, "top_k")
        if index_dim is not None:
            index_dim = check_positive_int(index_dim, "index_dim")
        check_rotary_dims(rotary_dims, self.head_dim)
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.rotary_dims, self.rope_base = rotary_dims, check_rope_base(rope_base)
        self.deterministic = check_bool(deterministic, "deterministic")
        self.wq = nn.Linear(d_model, num_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(num_heads * self.head_dim, d_model, bias=False)
        self.selector = SELECTORS.get(method)
        if self.selector is None and options:
            raise ValueError(f"options are the ablation parameters of a sparse method; method='full' takes none, "
                             f"got {options!r}")
        #: The selector's ablation parameters that differ from its defaults (e.g. MSA's pooling).
        self.options = {} if self.selector is None else dict(self.selector.check_options(
            options or {}, "options", block_size=self.block_size, top_k=self.top_k))
        self.indexer = None
        if self.selector is not None and self.selector.has_index_branch:
            idx_dim = self.head_dim if index_dim is None else index_dim
            idx_rot = None if rotary_dims is None else round(rotary_dims * idx_dim / self.head_dim / 2) * 2
            self.indexer = MSAIndexer(d_model, num_kv_heads, idx_dim, rotary_dims=idx_rot, rope_base=rope_base)
        self.sparse = method != "full"
        self.last_selection = None
        #: With keep_inputs, forward keeps (q, k, index_q, index_k) in last_inputs, for
        #: coverage of the model's own attention (msa_lab.train.index_coverage).
        self.keep_inputs, self.last_inputs = False, None

    def _sparse_backend(self, q: torch.Tensor) -> str | None:
        """The block-sparse backend for the projected ``q`` (its device and head dim); None for
        a full-attention layer, which never runs it."""
        return None if self.selector is None else BLOCK_SPARSE.resolve(self.backend, q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, _ = check_hidden(x, self.d_model)
        q = rotary(self.wq(x).view(B, N, self.num_heads, self.head_dim), self.rotary_dims, self.rope_base)
        k = rotary(self.wk(x).view(B, N, self.num_kv_heads, self.head_dim), self.rotary_dims, self.rope_base)
        v = self.wv(x).view(B, N, self.num_kv_heads, self.head_dim)
        backend = self._sparse_backend(q)
        selection, aux, lse, plan = None, None, None, None
        index_q = index_k = None
        if self.indexer is not None:
            # The index branch learns from its KL loss alone (selection has no gradient), and
            # that loss must reach only the index projections: the backbone's input is detached.
            index_q, index_k = self.indexer(x.detach())
        if self.sparse and self.method != "full":
            with torch.no_grad():  # top-k has no gradient; MSA's indexer learns from the KL loss
                selection = self.selector.select(
                    q, k, index=None if self.indexer is None else (index_q, index_k), block_size=self.block_size,
                    top_k=self.top_k, backend=backend if backend in self.selector.backends else "reference",
                    **self.options)
            # One inversion of the selection for the attention's forward, its backward and the KL.
            plan = prepare_kv_outer(selection) if backend == "triton" and torch.is_grad_enabled() else None
            # MSA's KL teacher is this attention normalised over the same tokens: its LSE saves
            # the KL a pass over the main q/k
            out, lse = block_sparse_attention(q, k, v, selection, backend=backend, deterministic=self.deterministic,
                                              return_lse=True, plan=plan)
        else:
            out = full_attention(q, k, v, backend="reference" if self.backend == "reference" else "sdpa")
        if self.indexer is not None and torch.is_grad_enabled():
            # The warm-up's loss over every visible token has no Triton kernel.
            aux = index_kl_loss(index_q, index_k, q, k, selection, lse=lse if selection is not None else None,
                                backend=backend if selection is not None else "reference", plan=plan)
        self.last_selection = selection
        if self.keep_inputs:
            self.last_inputs = (q.detach(), k.detach(), index_q, index_k)
        return self.wo(out.reshape(B, N, -1)), aux
