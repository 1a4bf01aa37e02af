"""Trainable layers on msa_lab's ops: one attention layer for full / MoBA / MSA, MSA's index
branch and its KL loss, RoPE, and a tiny decoder-only language model."""

from .attention import Attention
from .indexer import MSAIndexer, index_kl_loss
from .model import TinyLM
from .rope import rotary

__all__ = ["Attention", "MSAIndexer", "TinyLM", "index_kl_loss", "rotary"]
