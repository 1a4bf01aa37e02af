"""msa_lab: long-context sparse attention research toolkit (MSA, DSA, MoBA, Quest, full attention).

Tensors are ``[batch, seq, heads, dim]``; see ``docs/semantics.md`` for what each
method means.
"""

from .attention import (block_sparse_attention, dsa_attention, full_attention, moba_attention, msa_attention,
                        quest_attention)
from .coverage import CoverageReport, coverage, output_error
from .decode import KVCache, dense_decode, msa_decode
from .kv_outer_plan import KVOuterPlan, prepare_kv_outer
from .selection import BlockSelection, TokenSelection
from .select import (
    dsa_index_from_qk,
    select_dsa,
    index_from_qk,
    msa_block_scores,
    select_moba,
    select_msa,
    select_oracle,
    select_quest,
    select_random,
    select_top_blocks,
    select_window,
)

__version__ = "0.1.0"

__all__ = [
    "BlockSelection",
    "CoverageReport",
    "KVCache",
    "KVOuterPlan",
    "block_sparse_attention",
    "coverage",
    "dense_decode",
    "dsa_attention",
    "dsa_index_from_qk",
    "full_attention",
    "index_from_qk",
    "moba_attention",
    "msa_attention",
    "msa_block_scores",
    "msa_decode",
    "output_error",
    "prepare_kv_outer",
    "quest_attention",
    "select_dsa",
    "select_moba",
    "select_msa",
    "select_oracle",
    "select_quest",
    "select_random",
    "select_top_blocks",
    "select_window",
    "TokenSelection",
]
