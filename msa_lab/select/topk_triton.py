"""The shared top-k rule (``topk.top_blocks``) in Triton: a program per (query row, selection
head) puts the own block in slot 0, then picks the ``top_k - 1`` best earlier blocks by repeated
max, ties to the lower id; NaN scores count as -inf; unused slots are -1. MSA's and MoBA's
selection kernels and MSA's decode run it on their scores."""

import triton
import triton.language as tl


@triton.jit
def top_blocks_kernel(
    score_ptr, sel_ptr, q0,
    ssb, ssg, ssn, sib, sig, sin,
    K: tl.constexpr, BS: tl.constexpr, NB_PAD: tl.constexpr,
):
    r = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    t = q0 + r
    own = t // BS
    j = tl.arange(0, NB_PAD)
    avail = j < own
    x = tl.load(score_ptr + b.to(tl.int64) * ssb + g.to(tl.int64) * ssg + r.to(tl.int64) * ssn + j, mask=avail,
                other=float("-inf"))
    x = tl.where(x == x, x, float("-inf"))  # NaN ranks last
    # One int64 key per block orders by score, then by lower id: the float's bits made
    # order-preserving as a signed int, above the reversed block id. One max per pick.
    bits = x.to(tl.int32, bitcast=True)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (bits.to(tl.int64) << 32) | (NB_PAD - 1 - j).to(tl.int64)
    taken = -9223372036854775807 - 1  # int64 min: no longer a candidate
    key = tl.where(avail, key, taken)
    out = sel_ptr + b.to(tl.int64) * sib + g.to(tl.int64) * sig + t.to(tl.int64) * sin
    tl.store(out, own)
    for s in range(1, K):
        best = tl.max(key, 0)
        pick = NB_PAD - 1 - (best & 0xFFFFFFFF).to(tl.int32)
        tl.store(out + s, tl.where(s <= own, pick, -1))
        key = tl.where(key == best, taken, key)
