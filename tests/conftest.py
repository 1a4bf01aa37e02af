"""Fresh random inputs every run; the base seed is printed in the header and can be
pinned with MSA_LAB_TEST_SEED=<int> to replay a failure.

Tensors are made on MSA_LAB_TEST_DEVICE: ``cuda`` where a GPU is present (the Triton kernels
compiled for it, bf16 included), else ``cpu`` with the kernels interpreted. Set it to ``cpu``
on a GPU machine to run what CI runs."""

import os
import random
import zlib

import torch

TEST_DEVICE = os.environ.get("MSA_LAB_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
if TEST_DEVICE not in ("cpu", "cuda") or (TEST_DEVICE == "cuda" and not torch.cuda.is_available()):
    raise RuntimeError(f"MSA_LAB_TEST_DEVICE must be 'cpu' or 'cuda' (with a GPU present), got {TEST_DEVICE!r}")
# On the CPU, Triton kernels run through the interpreter, chosen when a kernel is defined:
# set it before any msa_lab kernel module is imported.
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    torch.set_default_device(TEST_DEVICE)

import pytest  # noqa: E402

BASE_SEED = int(os.environ.get("MSA_LAB_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"msa_lab test seed: MSA_LAB_TEST_SEED={BASE_SEED}, device: MSA_LAB_TEST_DEVICE={TEST_DEVICE}"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(BASE_SEED ^ zlib.crc32(request.node.nodeid.encode()))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf, so it never passes."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def make_qkv(B, N, Hq, Hkv, D, dtype=torch.float32):
    q = torch.randn(B, N, Hq, D).to(dtype)
    k = torch.randn(B, N, Hkv, D).to(dtype)
    v = torch.randn(B, N, Hkv, D).to(dtype)
    return q, k, v


def dense_masked_attention(q, k, v, allowed, scale=None):
    """Independent dense formulation: ``allowed [B, Hq, Nq, Nk]`` bool, GQA by
    repeating K/V, float64. Returns ``(out [B, Nq, Hq, D], lse [B, Hq, Nq])``."""
    G = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh = q.double().transpose(1, 2)
    kh = k.double().repeat_interleave(G, 2).transpose(1, 2)
    vh = v.double().repeat_interleave(G, 2).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    return (p @ vh).transpose(1, 2), lse


def causal_mask(N, device=None):
    return torch.ones(N, N, dtype=torch.bool, device=device).tril()


def token_mask_from_blocks(block_mask, block_size, N, group_size=1):
    """``block_mask [B, Hs, N, nb]`` -> causal token mask ``[B, Hs*group_size, N, N]``."""
    key_block = torch.arange(N) // block_size
    tokens = block_mask[..., key_block] & causal_mask(N)
    return tokens.repeat_interleave(group_size, 1)
