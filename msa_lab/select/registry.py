"""The selector registry: one row per block selector, the table every consumer iterates.

Sweep configs, workloads, the cost model, the explorer, the demo, the figures, ``nn.Attention``
and the training runner read a method's name, label, colour, what it selects per, which inputs
it needs, whether it is learned or timed, its scoring cost and its backends from here, and run
it through ``Selector.select``. Adding a selector is one row (``docs/adding_a_selector.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config_checks import check_known_fields
from ..selection import BlockSelection
from ..validation import PADDED_TOP_K_LIMIT
from .controls import select_oracle, select_random, select_window
from .moba import moba_gate, select_moba
from .msa import index_from_qk, msa_block_scores, select_msa
from .pooling import block_key_bounds, block_mean_keys
from .quest import quest_bound_scores, select_quest
from .synthetic import select_coherent, select_structured


@dataclass(frozen=True)
class Shape:
    """What a scoring cost depends on (``element_size``: bytes per input element)."""

    batch: int
    seq_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    index_dim: int | None
    block_size: int
    top_k: int
    element_size: int
    per: str = "group"


def past_blocks(seq_len: int, block_size: int) -> int:
    """Sum over query positions of the number of blocks strictly before the own block."""
    t = torch.arange(seq_len, dtype=torch.int64)
    return int((t // block_size).sum())


def _msa_scoring(s: Shape) -> tuple[float, float]:
    """Index logits of every visible (query, key) pair per index head (one per KV group, or per
    query head for ``per="head"``); reads index q and k once."""
    G, Di = (s.num_heads if s.per == "head" else s.num_kv_heads), s.index_dim
    return 2.0 * s.batch * G * Di * s.seq_len * s.seq_len / 2, float(s.batch * s.seq_len * (G + 1) * Di
                                                                      * s.element_size)


def _moba_scoring(s: Shape) -> tuple[float, float]:
    """One gate per (query head, past block) against the block's mean key; reads q and k once."""
    return (2.0 * s.batch * s.num_heads * s.head_dim * past_blocks(s.seq_len, s.block_size),
            float(s.batch * s.seq_len * (s.num_heads + s.num_kv_heads) * s.head_dim * s.element_size))


def _quest_scoring(s: Shape) -> tuple[float, float]:
    """Two length-D products per (query head, past block) against the block's key bounds
    (``max(q, 0) . max + min(q, 0) . min``); reads q and k once."""
    return (4.0 * s.batch * s.num_heads * s.head_dim * past_blocks(s.seq_len, s.block_size),
            float(s.batch * s.seq_len * (s.num_heads + s.num_kv_heads) * s.head_dim * s.element_size))


@dataclass(frozen=True)
class Selector:
    """One registered selector.

    ``per``: ``"group"`` or ``"head"`` (what it always selects per), or ``"either"`` (the
    caller's ``per`` decides). ``inputs``: ``"qk"`` (the main q and k) or ``"index"`` (MSA's
    index branch; without one, ``index_from_qk`` stands in). ``learned``: it has parameters
    trained with the model. ``timed``: its selection is part of the operator (a benchmark times
    it); the others are given selections, inputs of an experiment (controls). ``synthetic``: a
    benchmark workload that ignores the inputs' values. ``scoring``: FLOPs and minimal bytes of
    its scoring, for the cost model (None: not timed). ``row_scores(q, k, index, positions,
    block_size)``: its block scores ``[B, Hs, rows, num_blocks]`` of some query rows alone, which
    the shared top-k rule turns into its selection of those rows (None: it ranks no scores, or
    only whole selections are cheap). ``options``: the ablation parameters its ``run`` takes,
    with their defaults.
    """

    name: str
    label: str
    color: str
    per: str
    inputs: str
    learned: bool
    timed: bool
    backends: tuple[str, ...]
    run: Callable[..., BlockSelection]
    scoring: Callable[[Shape], tuple[float, float]] | None = None
    row_scores: Callable[..., torch.Tensor] | None = None
    synthetic: bool = False
    options: dict = field(default_factory=dict)
    description: str = ""

    @property
    def has_index_branch(self) -> bool:
        """A learned selector of index inputs: a model builds and trains its index branch (MSA's)."""
        return self.learned and self.inputs == "index"

    def default_per(self) -> str:
        return "group" if self.per == "either" else self.per

    def check_options(self, given, where: str, *, block_size: int = 16, top_k: int = 64) -> tuple:
        """``given`` ablation parameters (a sweep entry's, a model's ``options``) checked: names
        among the selector's, each of its default's type, and each value accepted by one
        selection of a tiny input at ``block_size`` and ``top_k`` (the selector's own
        checks, so a bad value fails now, not in a run; give the caller's own sizes where it
        has them, for the checks that depend on them). Returns the sorted ``(name, value)``
        pairs that differ from the defaults, so that spelling a default out changes no point
        id and no stored config."""
        if not isinstance(given, dict):
            raise ValueError(f"{where} must be a mapping of the selector's options, got {given!r}")
        check_known_fields(given, tuple(self.options), where)
        for name, value in given.items():
            default = self.options[name]
            if type(value) is not type(default):
                raise ValueError(f"{where}.{name} must be a {type(default).__name__} like its default "
                                 f"{default!r}, got {value!r}")
        if given:  # two blocks, or as many as top_k where top_k is past the padding limit
            tiny = torch.zeros(1, block_size * (2 if top_k <= PADDED_TOP_K_LIMIT else top_k), 1, 16)
            try:
                self.select(tiny, tiny, block_size=block_size, top_k=top_k, **given)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
        return tuple(sorted((k, v) for k, v in given.items() if v != self.options[k]))

    def select(self, q: torch.Tensor, k: torch.Tensor, *, block_size: int, top_k: int,
               index: tuple[torch.Tensor, torch.Tensor] | None = None, backend: str = "reference",
               per: str | None = None, seed: int = 0, **options) -> BlockSelection:
        """The selection of ``q``/``k`` (and MSA's ``index = (index_q, index_k)``; None: the
        untrained stand-in ``index_from_qk``). ``per``: for ``per="either"`` selectors (default
        ``"group"``); ``seed``: for random selectors; ``options``: ablation parameters."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"selector {self.name!r} takes no option(s) {', '.join(unknown)} (its options: {known})")
        if per is not None and self.per != "either" and per != self.per:
            raise ValueError(f"selector {self.name!r} selects per {self.per}; got per={per!r}")
        if backend not in (*self.backends, "auto"):
            raise ValueError(f"selector {self.name!r} has backends {', '.join(map(repr, self.backends))} "
                             f"(or 'auto'); got backend={backend!r}")
        if self.inputs == "index" and index is None:
            index = index_from_qk(q, k, per or self.default_per())
        return self.run(q, k, index=index, block_size=block_size, top_k=top_k, backend=backend,
                        per=per or self.default_per(), seed=seed, **{**self.options, **options})


SELECTORS: dict[str, Selector] = {s.name: s for s in (
    Selector("msa", "MSA", "#0072B2", "either", "index", learned=True, timed=True, backends=("reference", "triton"),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed, pooling, sink_blocks: select_msa(
                 *index, block_size=block_size, top_k=top_k, backend=backend, pooling=pooling, per=per,
                 sink_blocks=sink_blocks),
             scoring=_msa_scoring, options={"pooling": "max", "sink_blocks": 0},
             row_scores=lambda q, k, index, positions, block_size: msa_block_scores(
                 *(index or index_from_qk(q, k)), positions, block_size),
             description="max-pooled index-branch logits per KV group, local block forced"),
    Selector("moba", "MoBA", "#D55E00", "head", "qk", learned=False, timed=True, backends=("reference", "triton"),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed: select_moba(
                 q, k, block_size=block_size, top_k=top_k, backend=backend),
             scoring=_moba_scoring,
             row_scores=lambda q, k, index, positions, block_size: moba_gate(
                 q, block_mean_keys(k, block_size), positions),
             description="mean-pooled key gate per query head, own block forced"),
    Selector("quest", "Quest", "#882255", "head", "qk", learned=False, timed=True, backends=("reference", "triton"),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed: select_quest(
                 q, k, block_size=block_size, top_k=top_k, backend=backend),
             scoring=_quest_scoring,
             row_scores=lambda q, k, index, positions, block_size: quest_bound_scores(
                 q, *block_key_bounds(k, block_size), positions),
             description="upper bound of the block's max logit from its keys' element-wise min and max, "
                         "per query head, own block forced"),
    Selector("oracle", "oracle", "#009E73", "either", "qk", learned=False, timed=False, backends=("reference",),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed, force_local: select_oracle(
                 q, k, block_size=block_size, top_k=top_k, per=per, force_local=force_local),
             options={"force_local": True},
             description="the most true attention mass (by default under the local-block rule)"),
    Selector("window", "sliding window", "#CC79A7", "either", "qk", learned=False, timed=False,
             backends=("reference",),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed, sink_blocks: select_window(
                 q, k, block_size=block_size, top_k=top_k, per=per, sink_blocks=sink_blocks),
             options={"sink_blocks": 0},
             description="the own block and the blocks just before it, after StreamingLLM's sink blocks"),
    Selector("random", "random", "#E69F00", "either", "qk", learned=False, timed=False, backends=("reference",),
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed: select_random(
                 q, k, block_size=block_size, top_k=top_k, per=per, seed=seed),
             description="the own block and uniformly drawn earlier blocks"),
    # Benchmark workloads: MSA's selection of generated data (Triton on CUDA, as a model runs it)
    # and tile-coherent picks, for the kernels' best and typical cases.
    Selector("structured", "structured", "#56B4E9", "group", "qk", learned=False, timed=False,
             backends=("reference",), synthetic=True,
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed: select_structured(
                 q, k, block_size=block_size, top_k=top_k, seed=seed, backend="auto"),
             description="MSA's selection on generated data with planted patterns"),
    Selector("coherent", "tile-coherent", "#666666", "either", "qk", learned=False, timed=False,
             backends=("reference",), synthetic=True,
             run=lambda q, k, *, index, block_size, top_k, backend, per, seed: select_coherent(
                 q, k, block_size=block_size, top_k=top_k, per=per, seed=seed),
             description="every query of a block-sized tile picks the same blocks"),
)}


def get_selector(name: str) -> Selector:
    """The registered selector ``name``; an unknown name raises, listing the registered ones."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; registered: {', '.join(SELECTORS)}")
    return SELECTORS[name]


def selectors(*, synthetic: bool | None = False, timed: bool | None = None) -> tuple[Selector, ...]:
    """Registered selectors, filtered (None: either value)."""
    return tuple(s for s in SELECTORS.values()
                 if (synthetic is None or s.synthetic == synthetic) and (timed is None or s.timed == timed))
