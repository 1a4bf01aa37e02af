"""Fresh random inputs every run; the base seed is printed in the header and can be
pinned with MSA_LAB_TEST_SEED=<int> to replay a failure.

Tensors are made on MSA_LAB_TEST_DEVICE: ``cpu`` (the default) with the Triton kernels
interpreted and any GPU hidden, so a GPU machine runs what CI runs, notebooks included; or
``cuda``, for the kernel test files only (docs/kernels.md, "Tests on a GPU", with what they
gave on an H200): compiled kernels, bf16 included."""

import math
import os
import random
import zlib

import torch

TEST_DEVICE = os.environ.get("MSA_LAB_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda") or (TEST_DEVICE == "cuda" and not torch.cuda.is_available()):
    raise RuntimeError(f"MSA_LAB_TEST_DEVICE must be 'cpu' or 'cuda' (with a GPU present), got {TEST_DEVICE!r}")
# On the CPU, Triton kernels run through the interpreter, chosen when a kernel is defined:
# set it before any msa_lab kernel module is imported. The GPU is hidden before CUDA starts,
# from this process and the notebook kernels it spawns, which would otherwise take their
# GPU branches with interpreted kernels.
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
else:
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_default_device(TEST_DEVICE)

import pytest  # noqa: E402

# (dtype, relative-error bound) of the gradient kernels' tests; bf16 on the GPU only: the CPU
# interpreter's bf16 dot is wrong (docs/kernels.md, "Known limits").
GRAD_DTYPES = [(torch.float32, 1e-5), (torch.float16, 5e-3),
               pytest.param(torch.bfloat16, 1e-2,
                            marks=pytest.mark.skipif(TEST_DEVICE != "cuda", reason="bf16: GPU only"))]

BASE_SEED = int(os.environ.get("MSA_LAB_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"msa_lab test seed: MSA_LAB_TEST_SEED={BASE_SEED}, device: MSA_LAB_TEST_DEVICE={TEST_DEVICE}"


@pytest.fixture
def kernel_settings():
    """``kernel_settings(poison_partials=True, ...)`` changes the kernels' settings for the rest of
    the test (``triton_runtime.using_kernel_settings``), restored after it."""
    import contextlib

    from msa_lab.triton_runtime import using_kernel_settings

    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(using_kernel_settings(**changes))


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


# Selections compared exactly between two float32 implementations (a kernel and the
# reference, prefill and decode) may differ legitimately where two blocks' scores lie within
# rounding of each other (scores of order 1 differ by up to ~5e-7). Such tests draw their
# inputs again until no row has a near-tie at its top_k boundary, judged on float64 scores
# computed independently; the 1e-5 relative gap is 100x that rounding, yet below the error
# of lower-precision (tf32, bf16) arithmetic, which the tests should still catch.

def msa_scores64(index_q, index_k, block_size):
    """MSA block scores ``[B, G, N, nb]`` in float64: the max causal index logit per block
    (NaN logits count as -inf)."""
    B, N, G, Di = index_q.shape
    s = torch.einsum("btgd,bjgd->bgtj", index_q.double(), index_k.double().expand(B, N, G, Di)) * Di ** -0.5
    s = s.masked_fill(~causal_mask(N) | s.isnan(), float("-inf"))
    nb = math.ceil(N / block_size)
    s = torch.nn.functional.pad(s, (0, nb * block_size - N), value=float("-inf"))
    return s.unflatten(-1, (nb, block_size)).amax(-1)


def moba_scores64(q, k, block_size):
    """MoBA gate ``[B, Hq, N, nb]`` in float64: q . (mean key of the block's real tokens)."""
    B, N, Hq, D = q.shape
    nb = math.ceil(N / block_size)
    kp = torch.nn.functional.pad(k.double(), (0, 0, 0, 0, 0, nb * block_size - N))
    counts = torch.clamp(N - torch.arange(nb) * block_size, max=block_size).double()
    means = kp.view(B, nb, block_size, k.shape[2], D).sum(2) / counts.view(1, nb, 1, 1)
    return torch.einsum("bthd,bnhd->bhtn", q.double(), means.repeat_interleave(Hq // k.shape[2], 2))


def no_near_ties(scores, block_size, top_k, rel_gap=1e-5):
    """True when, in every row of ``scores [..., N, nb]``, the worst kept and the best dropped
    earlier block (own block forced, the ``top_k - 1`` best earlier ones kept) differ by more
    than ``rel_gap`` times the largest score."""
    N, nb = scores.shape[-2:]
    if not 1 <= top_k - 1 < nb:
        return True
    earlier = torch.arange(nb) < (torch.arange(N) // block_size).view(-1, 1)
    ranked = scores.masked_fill(~earlier, float("-inf")).sort(-1, descending=True).values
    kept, dropped = ranked[..., top_k - 2], ranked[..., top_k - 1]
    gap = (kept - dropped)[torch.isfinite(dropped)]
    return bool((gap > rel_gap * scores[torch.isfinite(scores)].abs().max()).all())


def draw_without_near_ties(draw, scores_of, block_size, top_k, tries=100):
    """``draw()`` again (from the test's seeded stream) until ``no_near_ties(scores_of(inputs))``."""
    for _ in range(tries):
        inputs = draw()
        if no_near_ties(scores_of(*inputs), block_size, top_k):
            return inputs
    raise RuntimeError(f"no draw without near-ties in {tries} tries")
