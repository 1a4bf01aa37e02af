"""Selections: which keys each query attends to.

A ``BlockSelection`` is an int32 tensor ``[B, Hs, N, top_k]`` of block ids, ``-1`` padded.
Block ``b`` covers tokens ``[b * block_size, min((b + 1) * block_size, N))``.
``per="group"`` means one row per KV head (MSA: shared by the group's query heads),
``per="head"`` one row per query head (MoBA). A ``TokenSelection`` (DSA) is an int32 tensor
``[B, 1, N, top_k]`` of token positions, ``-1`` padded, one row per query shared by every
head (``per="all"``). The set of ids in a row matters, not their order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .validation import check_blocks, check_choice, check_positive_int, check_token_top_k

PER_CHOICES = ("group", "head")


def num_blocks(seq_len: int, block_size: int) -> int:
    return -(-seq_len // block_size)


class _Rows:
    """What both selection types share: the ``int32 [B, Hs, N, top_k]`` id tensor (``-1`` =
    unused slot), its structure checks, the in-place-change tracking and the row views."""

    indices: torch.Tensor

    def _settings(self) -> dict:
        """The fields besides ``indices`` (what ``_trusted`` takes again)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "indices"}

    @classmethod
    def _trusted(cls, indices: torch.Tensor, *settings):
        # Selectors build valid selections by construction; skipping the content check
        # keeps it out of the timed path. Tests validate selector output explicitly.
        obj = object.__new__(cls)
        object.__setattr__(obj, "indices", indices)
        for f, value in zip([f for f in fields(cls) if f.name != "indices"], settings):
            object.__setattr__(obj, f.name, value)
        obj._check_structure()
        obj._record_version()
        return obj

    def _record_version(self) -> None:
        object.__setattr__(self, "_validated_version", self.indices_version())

    def indices_version(self) -> int | None:
        """How many in-place changes ``indices`` has seen (torch's ``_version``: a Python
        attribute read, no device sync); None for inference-mode tensors, which keep no count."""
        try:
            return self.indices._version
        except RuntimeError:
            return None

    def changed_since_validation(self) -> bool:
        """True when ``indices`` was changed in place since it was last validated (or, for a
        selector's output, built), so an unchanged selection is never re-validated on the hot path."""
        return self._validated_version is not None and self.indices_version() != self._validated_version

    def _check_indices(self, layout: str) -> None:
        x = self.indices
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.int32:
            raise TypeError(f"indices must be int32, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"indices must be 4-D {layout}, got shape {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"indices must have batch, heads, seq and top_k > 0, got {tuple(x.shape)}")

    def _check_ids(self, what: str, count: int, own: torch.Tensor, own_name: str) -> None:
        """Ids in ``[-1, count)``, none after the query's own id ``own [N]``, none twice in a row."""
        x = self.indices
        lo, hi = int(x.min()), int(x.max())
        if lo < -1 or hi >= count:
            raise ValueError(f"selection ids must lie in [-1, {count - 1}] for {what}, got range [{lo}, {hi}]")
        future = x > own.view(1, 1, -1, 1)
        if bool(future.any()):
            b, h, t, s = (int(i) for i in future.nonzero()[0])
            raise ValueError(
                f"selection is not causal: row (batch={b}, head={h}, query={t}) selects "
                f"{own_name} {int(x[b, h, t, s])} after its own {own_name} {int(own[t])}"
            )
        ordered = x.sort(dim=-1).values
        repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
        if bool(repeated.any()):
            b, h, t, _ = (int(i) for i in repeated.nonzero()[0])
            raise ValueError(
                f"selection repeats {'a block id' if own_name == 'block' else 'a token'} in row "
                f"(batch={b}, head={h}, query={t}): {x[b, h, t].tolist()}"
            )

    def _revalidate_if_changed(self) -> None:
        if self.changed_since_validation():
            self.validate()
            self._record_version()

    # ---- shape facts -------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def num_rows_heads(self) -> int:
        """``Hs``: KV heads for ``per="group"``, query heads for ``per="head"``, 1 for ``per="all"``."""
        return self.indices.shape[1]

    @property
    def seq_len(self) -> int:
        return self.indices.shape[2]

    @property
    def top_k(self) -> int:
        return self.indices.shape[3]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def valid_mask(self) -> torch.Tensor:
        return self.indices >= 0

    def density(self) -> float:
        """Selected tokens over causally visible tokens, summed over all rows."""
        causal = self.seq_len * (self.seq_len + 1) // 2 * self.batch * self.num_rows_heads
        return float(self.tokens_per_query().sum()) / causal

    def canonical(self):
        """The same selection with ids ascending and ``-1`` padding last."""
        big = torch.iinfo(torch.int32).max
        keyed = torch.where(self.indices >= 0, self.indices, torch.full_like(self.indices, big))
        ordered = keyed.sort(dim=-1).values
        ordered = torch.where(ordered == big, torch.full_like(ordered, -1), ordered)
        return type(self)._trusted(ordered, *self._settings().values())

    def equals(self, other) -> bool:
        """Same kind, settings and id sets in every row (order of ids ignored)."""
        return (
            type(self) is type(other)
            and self._settings() == other._settings()
            and self.indices.shape == other.indices.shape
            and bool((self.canonical().indices == other.canonical().indices).all())
        )

    def to(self, device):
        return type(self)._trusted(self.indices.to(device), *self._settings().values())


@dataclass(frozen=True, eq=False)
class BlockSelection(_Rows):
    """Block ids ``int32 [B, Hs, N, top_k]`` (``-1`` = unused slot), their block size,
    and whether rows are per KV group (``Hs = Hkv``) or per query head (``Hs = Hq``).

    Constructing one validates it: ids in ``[-1, num_blocks)``, no block after the
    query's own block (causality), no id twice in a row. ``indices`` changed in place
    afterwards is validated again before the next attention call uses it
    (``check_matches``), so an edit can never make a kernel read out of bounds.
    """

    indices: torch.Tensor
    block_size: int
    per: str = "group"

    def __post_init__(self):
        self._check_structure()
        self.validate()
        self._record_version()

    def _check_structure(self):
        check_positive_int(self.block_size, "block_size")
        check_choice(self.per, "per", PER_CHOICES)
        self._check_indices("[batch, heads, seq, top_k]")

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.seq_len, self.block_size)

    def _own_block(self) -> torch.Tensor:
        return torch.arange(self.seq_len, device=self.device) // self.block_size

    # ---- checks ------------------------------------------------------------
    def validate(self) -> "BlockSelection":
        """Raise ``ValueError`` if any id is out of range, in the future, or repeated."""
        self._check_ids(f"seq_len {self.seq_len} and block_size {self.block_size}", self.num_blocks,
                        self._own_block(), "block")
        return self

    def check_matches(self, batch: int, seq_len: int, num_q_heads: int, num_kv_heads: int,
                      device: torch.device, name: str = "selection") -> None:
        """Raise ``ValueError`` unless this selection fits q/k of the given shape (block size
        and top_k within ``check_blocks``' bounds); validate it again
        if its indices changed in place since it was last validated."""
        expected_hs = num_kv_heads if self.per == "group" else num_q_heads
        expected = (batch, expected_hs, seq_len)
        if tuple(self.indices.shape[:3]) != expected:
            raise ValueError(
                f"{name}.indices must be [batch={batch}, {'kv_heads' if self.per == 'group' else 'heads'}"
                f"={expected_hs}, seq={seq_len}, top_k] for per={self.per!r}, "
                f"got {tuple(self.indices.shape)}"
            )
        if self.device != device:
            raise ValueError(f"{name} is on {self.device} but q is on {device}")
        check_blocks(self.block_size, self.top_k, seq_len)
        self._revalidate_if_changed()

    # ---- derived views -----------------------------------------------------
    def tokens_per_query(self) -> torch.Tensor:
        """``int64 [B, Hs, N]``: visible tokens each query attends to.

        Earlier blocks are always whole (only the last block of the sequence can be
        partial, and it is never earlier than any query's own block); the own block
        contributes the causal prefix ``t - own * block_size + 1``.
        """
        t = torch.arange(self.seq_len, device=self.device)
        own = t // self.block_size
        x = self.indices.long()
        own_b = own.view(1, 1, -1, 1)
        prefix = (t - own * self.block_size + 1).view(1, 1, -1, 1)
        per_slot = torch.where(x == own_b, prefix, torch.full_like(x, self.block_size))
        return torch.where(x >= 0, per_slot, torch.zeros_like(x)).sum(-1)

    def summary(self) -> dict:
        tokens = self.tokens_per_query().double()
        return {
            "per": self.per,
            "shape": tuple(self.indices.shape),
            "block_size": self.block_size,
            "top_k": self.top_k,
            "num_blocks": self.num_blocks,
            "density": self.density(),
            "mean_tokens_per_query": float(tokens.mean()),
            "max_tokens_per_query": int(tokens.max()),
        }

    def __repr__(self) -> str:
        s = self.summary()
        B, Hs, N, K = s["shape"]
        heads = "kv_heads" if self.per == "group" else "heads"
        return (
            f"BlockSelection(per={self.per!r}, batch={B}, {heads}={Hs}, seq_len={N:,}, "
            f"block_size={self.block_size}, top_k={K}, num_blocks={s['num_blocks']:,}; "
            f"density {100 * s['density']:.1f}% of causal tokens, "
            f"{s['mean_tokens_per_query']:,.0f} tokens/query on average)"
        )

    def dense_mask(self, max_elements: int = 1 << 28) -> torch.Tensor:
        """``bool [B, Hs, N, num_blocks]``: True where query ``t`` selected block ``b``.

        Meant for small sizes (plots, tests); raises if it would exceed ``max_elements``.
        """
        B, Hs, N, _ = self.indices.shape
        nb = self.num_blocks
        size = B * Hs * N * nb
        if size > max_elements:
            raise ValueError(
                f"dense_mask would have {size:,} elements (> max_elements={max_elements:,}); "
                "use block_map() for an aggregated view"
            )
        return block_one_hot(self.indices, nb)

    def block_map(self, max_elements: int = 1 << 26) -> torch.Tensor:
        """``float32 [B, Hs, num_query_blocks, num_blocks]``: share of the queries of each
        query block that selected each key block (a selection heat map)."""
        B, Hs, N, K = self.indices.shape
        nb = self.num_blocks
        size = B * Hs * nb * nb
        if size > max_elements:
            raise ValueError(
                f"block_map would have {size:,} elements (> max_elements={max_elements:,})"
            )
        t = torch.arange(N, device=self.device)
        qblock = (t // self.block_size).view(1, 1, N, 1).expand(B, Hs, N, K)
        row = torch.arange(B * Hs, device=self.device).view(B, Hs, 1, 1).expand(B, Hs, N, K)
        valid = self.indices >= 0
        flat = (row * nb + qblock) * nb + self.indices.long()
        counts = torch.bincount(flat[valid], minlength=B * Hs * nb * nb).float()
        queries_per_block = torch.bincount(t // self.block_size, minlength=nb).float()
        return counts.view(B, Hs, nb, nb) / queries_per_block.view(1, 1, nb, 1)

@dataclass(frozen=True, eq=False)
class TokenSelection(_Rows):
    """Token positions ``int32 [B, 1, N, top_k]`` (``-1`` = unused slot): DSA's selection, one
    row per query shared by every query head (``per="all"``).

    Constructing one validates it: positions in ``[-1, N)``, none after the query's own
    position (causality), none twice in a row; ``indices`` changed in place afterwards is
    validated again before the next attention call uses it (``check_matches``).
    """

    indices: torch.Tensor
    per: ClassVar[str] = "all"

    def __post_init__(self):
        self._check_structure()
        self.validate()
        self._record_version()

    def _check_structure(self):
        self._check_indices("[batch, 1, seq, top_k]")
        if self.indices.shape[1] != 1:
            raise ValueError("indices must hold one row per query, shared by every head: [batch, 1, seq, top_k], "
                             f"got shape {tuple(self.indices.shape)}")

    def validate(self) -> "TokenSelection":
        """Raise ``ValueError`` if any position is out of range, in the future, or repeated."""
        self._check_ids(f"seq_len {self.seq_len}", self.seq_len, torch.arange(self.seq_len, device=self.device),
                        "token")
        return self

    def check_matches(self, batch: int, seq_len: int, num_q_heads: int, num_kv_heads: int,
                      device: torch.device, name: str = "selection") -> None:
        """Raise ``ValueError`` unless this selection fits q/k of the given shape (top_k within
        ``check_token_top_k``'s bound); validate it again if its indices changed in place."""
        if tuple(self.indices.shape[:3]) != (batch, 1, seq_len):
            raise ValueError(f"{name}.indices must be [batch={batch}, 1, seq={seq_len}, top_k] (one row per "
                             f"query, shared by every head), got {tuple(self.indices.shape)}")
        if self.device != device:
            raise ValueError(f"{name} is on {self.device} but q is on {device}")
        check_token_top_k(self.top_k, seq_len)
        self._revalidate_if_changed()

    def tokens_per_query(self) -> torch.Tensor:
        """``int64 [B, 1, N]``: tokens each query attends to."""
        return (self.indices >= 0).sum(-1)

    def summary(self) -> dict:
        tokens = self.tokens_per_query().double()
        return {
            "per": self.per,
            "shape": tuple(self.indices.shape),
            "top_k": self.top_k,
            "density": self.density(),
            "mean_tokens_per_query": float(tokens.mean()),
            "max_tokens_per_query": int(tokens.max()),
        }

    def __repr__(self) -> str:
        s = self.summary()
        B, _, N, K = s["shape"]
        return (f"TokenSelection(per='all', batch={B}, seq_len={N:,}, top_k={K}; density "
                f"{100 * s['density']:.1f}% of causal tokens, {s['mean_tokens_per_query']:,.0f} tokens/query "
                "on average)")

    def dense_mask(self, max_elements: int = 1 << 28) -> torch.Tensor:
        """``bool [B, 1, N, N]``: True where query ``t`` selected token ``s``. Meant for small
        sizes (plots, tests); raises if it would exceed ``max_elements``."""
        size = self.batch * self.seq_len * self.seq_len
        if size > max_elements:
            raise ValueError(f"dense_mask would have {size:,} elements (> max_elements={max_elements:,}); "
                             "use block_map(block_size) for an aggregated view")
        return block_one_hot(self.indices, self.seq_len)

    def blocks_touched(self, block_size: int) -> torch.Tensor:
        """``bool [B, 1, N, num_blocks]``: the blocks of ``block_size`` tokens that hold at
        least one selected token of each row (what a block method must fetch to serve it)."""
        block_size = check_positive_int(block_size, "block_size")
        ids = torch.where(self.indices >= 0, self.indices // block_size, self.indices)
        return block_one_hot(ids, num_blocks(self.seq_len, block_size))

    def block_map(self, block_size: int, max_elements: int = 1 << 26) -> torch.Tensor:
        """``float32 [B, 1, num_query_blocks, num_blocks]``: for each tile of ``block_size``
        queries by ``block_size`` keys, the mean over its queries of the share of the key
        block's tokens they selected (a selection heat map on a block grid)."""
        block_size = check_positive_int(block_size, "block_size")
        B, _, N, K = self.indices.shape
        nb = num_blocks(N, block_size)
        if B * nb * nb > max_elements:
            raise ValueError(f"block_map would have {B * nb * nb:,} elements (> max_elements={max_elements:,})")
        t = torch.arange(N, device=self.device)
        qblock = (t // block_size).view(1, N, 1).expand(B, N, K)
        row = torch.arange(B, device=self.device).view(B, 1, 1).expand(B, N, K)
        ids = self.indices[:, 0]
        valid = ids >= 0
        flat = (row * nb + qblock) * nb + ids.long() // block_size
        counts = torch.bincount(flat[valid], minlength=B * nb * nb).float().view(B, 1, nb, nb)
        queries_per_block = torch.bincount(t // block_size, minlength=nb).float()
        keys_per_block = queries_per_block  # the same N tokens, cut the same way
        return counts / (queries_per_block.view(1, 1, nb, 1) * keys_per_block.view(1, 1, 1, nb))


def block_one_hot(indices: torch.Tensor, nb: int) -> torch.Tensor:
    """``bool [..., nb]`` from ids ``[..., K]`` with ``-1`` padding."""
    slot = torch.where(indices >= 0, indices.long(), torch.full_like(indices, nb, dtype=torch.long))
    out = torch.zeros(*indices.shape[:-1], nb + 1, dtype=torch.bool, device=indices.device)
    out.scatter_(-1, slot, True)
    return out[..., :nb]
