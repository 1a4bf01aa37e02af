"""Selectors (blocks, and DSA's tokens): each family's plain-PyTorch reference beside its Triton twin, the shared
top-k rule and the block-pooling helpers."""

from .controls import select_oracle, select_random, select_window
from .dsa import dsa_index_from_qk, select_dsa
from .moba import moba_gate, select_moba
from .msa import index_from_qk, msa_block_scores, select_msa
from .pooling import block_key_bounds, block_mean_keys
from .quest import select_quest
from .topk import select_top_blocks

__all__ = ["block_key_bounds", "block_mean_keys", "dsa_index_from_qk", "index_from_qk", "moba_gate",
           "msa_block_scores", "select_dsa", "select_moba", "select_msa", "select_oracle", "select_quest",
           "select_random", "select_top_blocks", "select_window"]
