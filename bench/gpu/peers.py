"""PyTorch implementations of one moe_stack MoE layer, used as the GPU peers
and as the numerics reference of bench/gpu/gpu_bench.py.

Weights are held stacked: router [E, d], w1 [E, 2f, d] (gate_proj rows then
up_proj rows), w2 [E, d, f] (down_proj), all bf16. The MoE functions take the
normed activations x [T, d] (bf16) and return the expert mixture [T, d]
(bf16); the router is part of every peer (softmax over all experts, top-k,
no renormalisation: the moe_stack defaults).

  eager_moe      the Hugging Face MixtralSparseMoeBlock loop (one_hot mask,
                 loop over the experts hit, index_select / index_add_)
  grouped_mm_moe tokens sorted by expert, each group padded to 16 rows,
                 two torch._grouped_mm calls (None when torch lacks it)
  (the Triton fused kernel is in triton_moe.py)

moe_stack_forward() is the whole model of scripts/moe_reference.py (L layers
of h + moe(rmsnorm(h)), K passes, final rmsnorm) in fp32 around a MoE
function, to compare against moe-run's hidden_states."""
import torch
import torch.nn.functional as F

GROUPED_MM_ALIGN = 16


class Layer:
    """One MoE layer's weights (stacked, bf16) and its input norm."""

    def __init__(self, norm, router, w1, w2):
        self.norm, self.router, self.w1, self.w2 = norm, router, w1, w2
        self.experts = router.shape[0]
        self.f = w2.shape[2]
        # torch._grouped_mm wants mat_b [G, K, N]: the transposed views.
        self.w1t = w1.transpose(1, 2)
        self.w2t = w2.transpose(1, 2)


def fp32(layer):
    """The layer with its bf16 weights upcast: the exact reference (fp32
    activations) that every implementation is checked against."""
    return Layer(layer.norm.float(), layer.router.float(), layer.w1.float(),
                 layer.w2.float())


def route(x, router, k):
    """HF Mixtral routing: bf16 logits, softmax in fp32, top-k."""
    logits = F.linear(x, router)
    probs = F.softmax(logits, dim=1, dtype=torch.float)
    return torch.topk(probs, k, dim=-1)  # (weights fp32 [T, k], ids [T, k])


def eager_moe(x, layer, k):
    """MixtralSparseMoeBlock.forward, minus the reshape of batch x sequence."""
    topw, topi = route(x, layer.router, k)
    topw = topw.to(x.dtype)
    out = torch.zeros_like(x)
    mask = F.one_hot(topi, num_classes=layer.experts).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    f = layer.f
    for e in hit.flatten().tolist():
        idx, top_x = torch.where(mask[e])
        cur = x[top_x]
        w1 = layer.w1[e]
        h = F.silu(F.linear(cur, w1[:f])) * F.linear(cur, w1[f:])
        h = F.linear(h, layer.w2[e]) * topw[top_x, idx, None]
        out.index_add_(0, top_x, h.to(x.dtype))
    return out


def has_grouped_mm():
    return hasattr(torch, "_grouped_mm")


def sort_by_expert(topi, experts, align, min_rows=0):
    """Assignments (token-major flat index t*k+j) sorted by expert, each
    expert's group padded to a multiple of `align` rows (at least min_rows).

    Returns order [T*k] (flat assignment in sorted order), dest [T*k] (its
    row in the padded layout), ends [E] (int32 cumulative padded group ends)
    and rows (an upper bound of the padded rows, known without a sync)."""
    flat = topi.flatten()
    tk = flat.numel()
    counts = torch.bincount(flat, minlength=experts)
    padded = (counts + align - 1) // align * align
    if min_rows:
        padded = torch.clamp_min(padded, min_rows)
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    unpadded_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(tk, device=flat.device) - unpadded_start[e_sorted]
    dest = (ends - padded)[e_sorted] + rank
    rows = tk + experts * max(align, min_rows)
    return order, dest, ends.to(torch.int32), rows


def grouped_mm_moe(x, layer, k):
    """Sorted, padded tokens through torch._grouped_mm (CUTLASS on sm90)."""
    T, d = x.shape
    f = layer.f
    topw, topi = route(x, layer.router, k)
    order, dest, ends, rows = sort_by_expert(
        topi, layer.experts, GROUPED_MM_ALIGN, GROUPED_MM_ALIGN)
    token = order // k
    xs = x.new_zeros(rows, d)
    xs[dest] = x[token]
    h = torch._grouped_mm(xs, layer.w1t, offs=ends)
    a = F.silu(h[:, :f]) * h[:, f:]
    y = torch._grouped_mm(a, layer.w2t, offs=ends)
    contrib = y[dest].float() * topw.flatten()[order, None]
    out = torch.zeros(T, d, dtype=torch.float, device=x.device)
    out.index_add_(0, token, contrib)
    return out.to(x.dtype)


def rmsnorm(h, w, eps):
    """fp32 RMSNorm (h fp32, w any dtype)."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w.float()


def moe_stack_forward(h, layers, final_norm, k, loops, moe_fn, eps=1e-6,
                      dtype=torch.bfloat16):
    """scripts/moe_reference.py's forward without exits: h fp32 [T, d], the
    residual stream and the norms in fp32, the MoE on `dtype` activations;
    returns the final-normed hidden states (fp32) and, per (pass, layer)
    step, the expert ids [T, k] the router chose."""
    ids = []
    for _ in range(loops):
        for layer in layers:
            n = rmsnorm(h, layer.norm, eps).to(dtype)
            ids.append(route(n, layer.router, k)[1])
            h = h + moe_fn(n, layer, k).float()
    return rmsnorm(h, final_norm, eps), ids


def compare(actual, expected, atol=2e-2, rtol=2e-2, rows=None):
    """allclose-style check; `rows` (bool [T]) restricts it to some tokens.
    Returns (passed, max abs error, max error over the tolerance)."""
    a, e = actual.float(), expected.float()
    if rows is not None:
        a, e = a[rows], e[rows]
    if a.numel() == 0:
        return True, 0.0, 0.0
    err = (a - e).abs()
    excess = (err - (atol + rtol * e.abs())).max().item()
    bad = bool(torch.isnan(a).any() or torch.isinf(a).any())
    return (excess <= 0) and not bad, err.max().item(), excess
