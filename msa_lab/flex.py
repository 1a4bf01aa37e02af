"""Block-sparse attention through PyTorch FlexAttention: an independent formulation
(a mask built from the selection) and the FlexAttention baseline of the benchmarks.

On CUDA the kernel is compiled; on the CPU FlexAttention runs eagerly and builds the
full score matrix, which is only sensible for small test sizes.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention import flex_attention as _flex

from .selection import BlockSelection


@functools.cache
def _compiled_flex():
    return torch.compile(_flex.flex_attention, dynamic=False)


def _run_flex(q, k, v, block_mask, scale):
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if hasattr(_flex, "AuxRequest"):
        kwargs["return_aux"] = _flex.AuxRequest(lse=True)
    else:  # torch < 2.9
        kwargs["return_lse"] = True
    if q.is_cuda:
        out, aux = _compiled_flex()(q, k, v, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "called without torch.compile": known, intended
            out, aux = _flex.flex_attention(q, k, v, **kwargs)
    return out, (aux.lse if hasattr(aux, "lse") else aux)


def block_sparse_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      selection: BlockSelection, scale: float):
    """``(out [B, N, Hq, D], lse [B, Hq, N] float32)`` for a valid selection."""
    B, N, Hq, _ = q.shape
    G = Hq // k.shape[2]
    dense = selection.dense_mask(max_elements=1 << 33)
    bs = selection.block_size
    per_group = selection.per == "group"

    def mask_mod(b, h, qi, ki):
        hs = h // G if per_group else h
        return (ki <= qi) & dense[b, hs, qi, ki // bs]

    block_mask = _flex.create_block_mask(mask_mod, B, Hq, N, N, device=q.device)
    out, lse = _run_flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         block_mask, scale)
    return out.transpose(1, 2), lse.float()
