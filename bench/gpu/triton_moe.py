"""A fused MoE layer in Triton, written for the benchmark in the style of
vLLM's fused_moe (not vLLM's code, and not tuned per shape):

  1. align: assignments (token t, slot j) sorted by expert, each expert's
     group padded to the M tile with a sentinel id, one expert id per M tile
     (vLLM's moe_align_block_size, here in torch ops without a host sync);
  2. gemm1: the gather of the tokens' rows fused into the grouped GEMM with
     w1 = [gate; up], both halves of an N tile accumulated side by side and
     SiLU(gate) * up applied in the epilogue -> intermediate [T*k, f];
  3. gemm2: the grouped GEMM with w2, the routing weight applied in the
     epilogue, rows scattered to their (t, j) slot of [T, k, d]; a sum over
     k (vLLM's moe_sum) gives [T, d]: deterministic, no atomics.

Import guarded by the caller: `import triton_moe` raises ImportError when
Triton is missing. TRITON_INTERPRET=1 runs the kernels on the CPU (slowly),
which is how bench/gpu/selftest.py checks them without a GPU."""
import torch
import triton
import triton.language as tl

from peers import route, sort_by_expert


@triton.jit
def _gemm1_silu_mul(x_ptr, w1_ptr, out_ptr, sorted_ids_ptr, block_expert_ptr,
                    rows_used_ptr, F, D, num_valid, top_k,
                    stride_xm, stride_we, stride_wn, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(rows_used_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + offs_m)
    m_mask = ids < num_valid
    token = (ids // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < F
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xm + offs_k[None, :]
    g_ptrs = (w1_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn
              + offs_k[:, None])
    u_ptrs = g_ptrs + F * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(D, BLOCK_K)):
        k_mask = offs_k < D - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        bg = tl.load(g_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        bu = tl.load(u_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc_g = tl.dot(a, bg, acc_g)
        acc_u = tl.dot(a, bu, acc_u)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    o_ptrs = out_ptr + ids.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(o_ptrs, h.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gemm2_weighted(h_ptr, w2_ptr, out_ptr, sorted_ids_ptr, block_expert_ptr,
                    rows_used_ptr, weight_ptr, D, F, num_valid,
                    stride_hm, stride_we, stride_wn, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(rows_used_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + offs_m)
    m_mask = ids < num_valid
    rows = ids.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < D
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows[:, None] * stride_hm + offs_k[None, :]
    b_ptrs = (w2_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn
              + offs_k[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(F, BLOCK_K)):
        k_mask = offs_k < F - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    w = tl.load(weight_ptr + ids, mask=m_mask, other=0.0)
    acc = acc * w[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_om + offs_n[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def pick_config(tokens, k, experts):
    """Tile sizes by the mean rows per expert (vLLM's untuned defaults are of
    this kind; its tuned JSON files would do better)."""
    mean_rows = tokens * k / experts
    if mean_rows <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4)
    if mean_rows <= 64:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4)
    if mean_rows <= 256:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4)
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


def align(topi, experts, block_m):
    """vLLM's moe_align_block_size: sorted ids (sentinel T*k on padding), the
    expert of each M tile, and the padded row count (a device tensor)."""
    order, dest, ends, rows = sort_by_expert(topi, experts, block_m)
    rows = (rows + block_m - 1) // block_m * block_m
    tk = topi.numel()
    sorted_ids = torch.full((rows,), tk, dtype=torch.int32, device=topi.device)
    sorted_ids[dest] = order.to(torch.int32)
    starts = torch.arange(0, rows, block_m, device=topi.device, dtype=torch.int32)
    block_expert = torch.searchsorted(ends, starts, right=True)
    block_expert = block_expert.clamp_(max=experts - 1).to(torch.int32)
    return sorted_ids, block_expert, ends[-1:].contiguous()


def fused_moe(x, layer, k, config=None):
    T, d = x.shape
    f, E = layer.f, layer.experts
    cfg = dict(config or pick_config(T, k, E))
    bm, bn, bk = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    topw, topi = route(x, layer.router, k)
    sorted_ids, block_expert, rows_used = align(topi, E, bm)
    tk = T * k
    w1, w2 = layer.w1, layer.w2
    inter = torch.empty(tk, f, dtype=x.dtype, device=x.device)
    grid1 = (triton.cdiv(f, bn), sorted_ids.numel() // bm)
    _gemm1_silu_mul[grid1](x, w1, inter, sorted_ids, block_expert, rows_used,
                           f, d, tk, k, x.stride(0), w1.stride(0), w1.stride(1),
                           inter.stride(0), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                           **cfg)
    out = torch.empty(tk, d, dtype=x.dtype, device=x.device)
    grid2 = (triton.cdiv(d, bn), sorted_ids.numel() // bm)
    weights = topw.flatten().contiguous()
    _gemm2_weighted[grid2](inter, w2, out, sorted_ids, block_expert, rows_used,
                           weights, d, f, tk, inter.stride(0), w2.stride(0),
                           w2.stride(1), out.stride(0), BLOCK_M=bm, BLOCK_N=bn,
                           BLOCK_K=bk, **cfg)
    return out.view(T, k, d).sum(dim=1)
