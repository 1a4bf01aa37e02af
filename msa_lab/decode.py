"""Decoding: one new token per sequence against a KV cache.

``KVCache`` holds K, V and (for MSA) the index keys of every sequence in a batch, appended
step by step. ``msa_decode`` scores the cached index keys with the new index query,
selects blocks (local block plus the ``top_k - 1`` best, the prefill rule) and attends to
them; ``dense_decode`` attends to the whole cache (the baseline). The token being decoded
must already be appended: it is at position ``cache.length - 1``.
"""

from __future__ import annotations

import torch

from .attention import full_attention
from .reference import attention_reference
from .selection import BlockSelection
from .backends import DECODE, DENSE_DECODE
from .select.msa import pooled_scores
from .select.topk import top_blocks
from .validation import check_blocks, check_bool, check_float_dtype, check_positive_int, check_scale, check_tensor


class KVCache:
    """Preallocated cache: ``k, v [B, max_len, Hkv, D]`` and, with ``index_dim``, one shared
    MSA index key head ``index_k [B, max_len, 1, Di]``. All sequences share one length.
    ``dtype``: a floating-point dtype. ``device=None`` is torch's default device, as for
    ``torch.empty``."""

    def __init__(self, batch: int, max_len: int, num_kv_heads: int, head_dim: int, *,
                 index_dim: int | None = None, dtype=torch.bfloat16, device=None):
        shape = (check_positive_int(batch, "batch"), check_positive_int(max_len, "max_len"),
                 check_positive_int(num_kv_heads, "num_kv_heads"), check_positive_int(head_dim, "head_dim"))
        check_float_dtype(dtype, "dtype")
        try:
            device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from e
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.index_k = None
        if index_dim is not None:
            di = check_positive_int(index_dim, "index_dim")
            self.index_k = torch.empty(shape[0], shape[1], 1, di, dtype=dtype, device=device)
        self.length = 0

    @classmethod
    def from_prefill(cls, k: torch.Tensor, v: torch.Tensor, index_k: torch.Tensor | None = None, *,
                     max_len: int | None = None) -> "KVCache":
        """A cache holding a prefilled prefix, with room for ``max_len`` tokens in all:
        ``k, v [B, N, Hkv, D]``, ``index_k [B, N, 1, Di]``."""
        check_tensor(k, "k", 4, "[batch, seq, kv_heads, dim]")
        check_tensor(v, "v", 4, "[batch, seq, kv_heads, dim]")
        if index_k is not None:
            check_tensor(index_k, "index_k", 4, "[batch, seq, 1, index_dim]")
        B, N, Hkv, D = k.shape
        max_len = N if max_len is None else check_positive_int(max_len, "max_len")
        if max_len < N:
            raise ValueError(f"max_len must be at least the prefix length {N}, got {max_len}")
        cache = cls(B, max_len, Hkv, D, index_dim=None if index_k is None else index_k.shape[3],
                    dtype=k.dtype, device=k.device)
        cache.append(k, v, index_k)
        return cache

    def append(self, k: torch.Tensor, v: torch.Tensor, index_k: torch.Tensor | None = None) -> None:
        """Append ``T`` tokens: ``k, v [B, T, Hkv, D]``, ``index_k [B, T, 1, Di]``."""
        check_tensor(k, "k", 4, "[batch, tokens, kv_heads, dim]")
        check_tensor(v, "v", 4, "[batch, tokens, kv_heads, dim]")
        if index_k is not None:
            check_tensor(index_k, "index_k", 4, "[batch, tokens, 1, index_dim]")
        B, T, Hkv, D = k.shape
        if (B, Hkv, D) != (self.k.shape[0], self.k.shape[2], self.k.shape[3]) or v.shape != k.shape:
            raise ValueError(f"k and v must be [batch={self.k.shape[0]}, tokens, kv_heads={self.k.shape[2]}, "
                             f"dim={self.k.shape[3]}], got {tuple(k.shape)} and {tuple(v.shape)}")
        if (index_k is None) != (self.index_k is None):
            raise ValueError("index_k must be given exactly when the cache was built with index_dim")
        named = {"k": k, "v": v} if index_k is None else {"k": k, "v": v, "index_k": index_k}
        for name, x in named.items():
            if x.dtype != self.k.dtype or x.device != self.k.device:
                raise TypeError(f"{name} must be {self.k.dtype} on {self.k.device} like the cache, "
                                f"got {x.dtype} on {x.device}")
        if index_k is not None and index_k.shape != (B, T, 1, self.index_k.shape[3]):
            raise ValueError(f"index_k must be [batch={B}, tokens={T}, 1, index_dim={self.index_k.shape[3]}], "
                             f"got {tuple(index_k.shape)}")
        if self.length + T > self.k.shape[1]:
            raise ValueError(f"cache holds max_len={self.k.shape[1]} tokens; {self.length} + {T} do not fit")
        end = self.length + T
        self.k[:, self.length:end] = k
        self.v[:, self.length:end] = v
        if index_k is not None:
            self.index_k[:, self.length:end] = index_k
        self.length = end

    def keys(self) -> torch.Tensor:
        return self.k[:, :self.length]

    def values(self) -> torch.Tensor:
        return self.v[:, :self.length]


def _check_step(q: torch.Tensor, cache: KVCache):
    check_tensor(q, "q", 4, "[batch, 1, heads, dim]")
    if cache.length == 0:
        raise ValueError("the cache is empty: append the token being decoded first")
    B, Hkv, D = cache.k.shape[0], cache.k.shape[2], cache.k.shape[3]
    if q.shape[0] != B or q.shape[1] != 1 or q.shape[3] != D or q.shape[2] % Hkv:
        raise ValueError(f"q must be [batch={B}, 1, heads (a multiple of {Hkv}), dim={D}], got {tuple(q.shape)}")
    if q.dtype != cache.k.dtype or q.device != cache.k.device:
        raise ValueError(f"q must be {cache.k.dtype} on {cache.k.device} like the cache, got {q.dtype} on {q.device}")


def dense_decode(q: torch.Tensor, cache: KVCache, *, scale: float | None = None, backend: str = "auto"):
    """Attention of ``q [B, 1, Hq, D]`` (the token at ``cache.length - 1``) to every cached key.

    ``backend``: ``"sdpa"`` (PyTorch's fused kernels; what ``"auto"`` picks), ``"triton"``
    (flash-decoding: the keys split over programs, partials merged by the LSE rule) or
    ``"reference"``."""
    _check_step(q, cache)
    backend = DENSE_DECODE.resolve(backend, q)
    if backend == "triton":
        from .kernels.decode import dense_decode_triton

        return dense_decode_triton(q, cache.keys(), cache.values(), check_scale(scale, q.shape[3]))[0]
    return full_attention(q, cache.keys(), cache.values(), scale=scale, backend=backend)


def msa_decode(q: torch.Tensor, index_q: torch.Tensor, cache: KVCache, *, block_size: int = 128,
               top_k: int = 16, scale: float | None = None, backend: str = "reference",
               return_blocks: bool = False):
    """MSA decode step: ``q [B, 1, Hq, D]``, ``index_q [B, 1, Hkv, Di]`` for the token at
    ``cache.length - 1``. Returns ``out [B, 1, Hq, D]``, and with ``return_blocks`` the
    selected block ids ``int32 [B, Hkv, top_k]`` (-1 padded; the local block first).
    ``backend``: ``"reference"``, ``"triton"`` or ``"auto"`` (Triton on CUDA)."""
    _check_step(q, cache)
    if cache.index_k is None:
        raise ValueError("msa_decode needs a cache built with index_dim (MSA index keys)")
    B, Hkv, Di = cache.k.shape[0], cache.k.shape[2], cache.index_k.shape[3]
    check_tensor(index_q, "index_q", 4, "[batch, 1, groups, index_dim]")
    if index_q.shape != (B, 1, Hkv, Di) or index_q.dtype != q.dtype or index_q.device != q.device:
        raise ValueError(f"index_q must be [batch={B}, 1, groups={Hkv}, index_dim={Di}] in q's dtype and "
                         f"device, got {tuple(index_q.shape)} {index_q.dtype} on {index_q.device}")
    capacity = cache.k.shape[1]  # bounds that hold for every step of this cache
    block_size, top_k = check_blocks(block_size, top_k, capacity, "the cache's max_len")
    scale = check_scale(scale, q.shape[3])
    check_bool(return_blocks, "return_blocks")
    L = cache.length
    k, v, ik = cache.keys(), cache.values(), cache.index_k[:, :L]
    if DECODE.resolve(backend, q) == "triton":
        from .kernels.decode import msa_decode_triton

        out, _, ids = msa_decode_triton(q, index_q, k, v, ik, block_size, top_k, scale)
    else:
        position = torch.tensor([L - 1], device=q.device)
        scores = pooled_scores(index_q.expand(B, L, Hkv, Di), ik, position, block_size)
        ids = top_blocks(scores, position, block_size, top_k)  # [B, G, 1, K]
        selection = BlockSelection._trusted(ids, block_size, "group")
        out, _ = attention_reference(q, k, v, scale=scale, selection=selection)
        ids = ids[:, :, 0]
    return (out, ids) if return_blocks else out
