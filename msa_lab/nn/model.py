"""A tiny decoder-only language model whose attention layers are ``msa_lab.nn.Attention``.

Pre-norm blocks (RMSNorm, attention, RMSNorm, SwiGLU MLP), tied embeddings. ``method``
applies to every layer except those listed in ``full_layers``, which keep full attention
(the hybrid both MSA and MoBA use). ``forward`` returns the logits and the sum of the
layers' auxiliary losses (MSA's index KL; zero otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_bool, check_int, check_number, check_positive_int
from .attention import Attention


def check_tokens(tokens, vocab_size: int, device: torch.device) -> None:
    """Token ids ``[batch, seq]``: an integer tensor on ``device`` with every id in
    ``[0, vocab_size)`` (an id outside would index past the embedding: an IndexError on the
    CPU, a device-side assert on a GPU)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of token ids [batch, seq], got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64 or int32 token ids, got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be a non-empty [batch, seq] tensor, got shape {tuple(tokens.shape)}")
    if tokens.device != device:
        raise ValueError(f"tokens are on {tokens.device} but the model is on {device}")
    lo, hi = torch.stack(torch.aminmax(tokens)).tolist()  # one device sync per forward, not two
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"tokens must be ids in [0, {vocab_size - 1}] (vocab_size {vocab_size}), "
                         f"got range [{lo}, {hi}]")


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d_model: int, attention: Attention, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.attn = attention
        self.mlp = SwiGLU(d_model, int(mlp_ratio * d_model))

    def forward(self, x):
        a, aux = self.attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x)), aux


class TinyLM(nn.Module):
    def __init__(self, vocab_size: int, *, d_model: int = 128, num_layers: int = 4, num_heads: int = 8,
                 num_kv_heads: int = 2, head_dim: int | None = None, method: str = "full", full_layers=(),
                 block_size: int = 64, top_k: int = 8, index_dim: int | None = None, rotary_dims: int | None = None,
                 mlp_ratio: float = 8 / 3, backend: str = "auto", deterministic: bool = False,
                 options: dict | None = None):
        """``options``: the sparse method's ablation parameters (``Attention(options=)``), given
        to every layer that is not in ``full_layers``."""
        super().__init__()
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        d_model = check_positive_int(d_model, "d_model")
        num_layers = check_positive_int(num_layers, "num_layers")
        if isinstance(full_layers, (str, bytes)) or not isinstance(full_layers, Iterable):
            raise TypeError(f"full_layers must be a sequence of layer indices, got {full_layers!r}")
        full_layers = [check_int(i, "full_layers entry") for i in full_layers]
        bad = [i for i in full_layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"full_layers must be layer indices in [0, {num_layers - 1}], got {bad}")
        mlp_ratio = check_number(mlp_ratio, "mlp_ratio", above=0.0)
        if int(mlp_ratio * d_model) < 1:
            raise ValueError(f"mlp_ratio * d_model must give an MLP of at least 1 unit, got {mlp_ratio} * {d_model}")
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, Attention(d_model, num_heads, num_kv_heads, head_dim,
                                     method="full" if i in full_layers else method, block_size=block_size,
                                     top_k=top_k, index_dim=index_dim, rotary_dims=rotary_dims, backend=backend,
                                     deterministic=deterministic, options=None if i in full_layers else options),
                  mlp_ratio)
            for i in range(num_layers))
        self.norm = nn.RMSNorm(d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)

    @property
    def attention_layers(self) -> list[Attention]:
        return [b.attn for b in self.blocks]

    def set_sparse(self, on: bool) -> None:
        """Route the sparse layers through their selected blocks (True) or run them as full
        attention (False: MSA's indexer warm-up)."""
        check_bool(on, "on")
        for layer in self.attention_layers:
            layer.sparse = on and layer.method != "full"

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens``: integer ids ``[batch, seq]`` in ``[0, vocab_size)``."""
        check_tokens(tokens, self.vocab_size, self.embed.weight.device)
        x = self.embed(tokens)
        aux = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            x, a = block(x)
            if a is not None:
                aux = aux + a
        return F.linear(self.norm(x), self.embed.weight), aux
