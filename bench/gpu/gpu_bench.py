#!/usr/bin/env python3
"""GPU benchmark of one MoE layer (and a Looped-MoE decode step): the
compiler's CUDA backend (moe-run --device cuda) against PyTorch peers, side
by side in one run, on the shapes of shared/PERFORMANCE.md.

Per (shape, T): ours (moe-run --repeat N, its median), a Hugging Face style
eager loop, torch._grouped_mm, and a Triton fused MoE (triton_moe.py); the
peers' numerics against the eager loop and ours against the same moe_stack
layer computed in torch; TFLOP/s, fraction of the roofline and speedups.
Then a Looped-MoE decode step (2 layers x 3 passes): resident kernel vs host
loop of launches vs unrolled vs torch eager. Writes bench/results/gpu-layer-<commit>.{json,md}.

--dry-run does no GPU work: it generates the configs, weights and inputs,
runs moe-run on the CPU for small shapes (checking its output against the
torch eager reference on the CPU, or the NumPy reference without torch),
and writes the result files with NaN timings (to a temp dir by default)."""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import moe_reference as ref  # noqa: E402

try:
    import torch
    import peers
except ImportError:  # the dry run and ours-only runs still work
    torch = peers = None

BIN = os.path.join(ROOT, "build", "bin")

# shared/PERFORMANCE.md's shapes; "tiny" is for dry runs and tests only.
SHAPES = {
    "mixtral-8x7b": dict(d=4096, f=14336, E=8, k=2),
    "qwen3-30b-a3b": dict(d=2048, f=768, E=128, k=8),
    "olmoe-1b-7b": dict(d=2048, f=1024, E=64, k=8),
    "looped-moe-scaled": dict(d=1024, f=2752, E=8, k=2),
    "tiny": dict(d=64, f=128, E=8, k=2),
}
# Mixtral last: its T=8192 row is the one the time budget cuts first.
DEFAULT_SHAPES = ["looped-moe-scaled", "olmoe-1b-7b", "qwen3-30b-a3b",
                  "mixtral-8x7b"]
DEFAULT_TOKENS = [1, 16, 128, 1024, 8192]
QUICK_TOKENS = [1, 128]
LOOPED = dict(shape="looped-moe-scaled", layers=2, loops=3)
LOOPED_TOKENS = [1, 4, 16, 64]
# Ours (resident kernel, host loop, unrolled) and the peer.
LOOPED_VARIANTS = ("resident", "host_loop", "unrolled", "eager")
PEERS = ("eager", "grouped_mm", "triton")
# Our variants timed per row: as compiled, with --wgmma, with a warp per row.
OURS = ("ours", "ours_wgmma", "ours_1row")
# Decode batches (more than one row per expert, few rows) also time a warp
# per row against ours' chunks of rows.
DECODE_BATCH_MAX_T = 64
TOLERANCE = 2e-2          # atol = rtol, bf16 (vLLM's fused_moe test)
# The looped model chains L*K = 6 MoE layers on bf16 activations.
LOOPED_TOLERANCE = 5e-2
PEAK_TFLOPS = 989.0       # H100/H200 bf16 dense tensor peak
# Measured copy bandwidths of PERFORMANCE.md, used only without torch.
NOMINAL_COPY_GBS = {"H200": 4300.0, "H100": 3000.0}
EPS = 1e-6


# ---------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------

def flops(T, s):
    return 6.0 * T * s["k"] * s["d"] * s["f"]


def experts_touched(T, s):
    """E_eff(T) = E (1 - (1 - k/E)^T): experts hit by T tokens under uniform
    routing."""
    E, k = s["E"], s["k"]
    return E * (1.0 - (1.0 - k / E) ** T)


def layer_bytes(T, s, b=2):
    """Bytes one layer must move (PERFORMANCE.md): the touched experts'
    weights, activations in and out, the router, and the [T*k, f]
    intermediate written once and read once."""
    d, f, E, k = s["d"], s["f"], s["E"], s["k"]
    return (experts_touched(T, s) * 3 * d * f * b + 2 * T * d * b + E * d * b
            + 2 * T * k * f * b)


def roofline(T, s, bandwidth_gbs, peak_tflops):
    """(t_roof in ms, 'memory' | 'compute'); NaN without a bandwidth."""
    if not (bandwidth_gbs and math.isfinite(bandwidth_gbs)):
        return float("nan"), "n/a"
    t_mem = layer_bytes(T, s) / (bandwidth_gbs * 1e9)
    t_flop = flops(T, s) / (peak_tflops * 1e12)
    return (max(t_mem, t_flop) * 1e3, "memory" if t_mem >= t_flop else "compute")


def repeats(T, scale=1.0):
    return max(10, int(round({1: 50, 4: 50, 16: 50, 64: 30, 128: 30,
                              1024: 20}.get(T, 10) * scale)))


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def _as_numpy(t):
    """A tensor as the array whose bytes go to the file (bf16 as uint16)."""
    if torch is not None and isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    return np.ascontiguousarray(t)


_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.uint16): "BF16",
                np.dtype(np.int32): "I32"}


def write_safetensors(path, tensors):
    """Streaming safetensors writer: tensors is a list of (name, tensor) of
    torch tensors (bf16, f32, i32) or numpy arrays (uint16 = bf16 bits); each
    is copied to the file on its own, so a 2.8 GB checkpoint never needs a
    second copy in memory."""
    header, offset, shapes = {}, 0, []
    for name, t in tensors:
        if torch is not None and isinstance(t, torch.Tensor):
            dtype = {torch.bfloat16: "BF16", torch.float32: "F32",
                     torch.int32: "I32"}[t.dtype]
            size, shape = t.numel() * t.element_size(), list(t.shape)
        else:
            dtype = _DTYPE_NAMES[np.asarray(t).dtype]
            size, shape = np.asarray(t).nbytes, list(np.asarray(t).shape)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + size]}
        offset += size
        shapes.append(size)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for (name, t), size in zip(tensors, shapes):
            array = _as_numpy(t)
            assert array.nbytes == size, name
            array.tofile(f)


def config_dict(s, layers=1, loops=1):
    return {"model_type": "moe_stack", "hidden_size": s["d"],
            "moe_intermediate_size": s["f"], "num_experts": s["E"],
            "num_experts_per_tok": s["k"], "num_hidden_layers": layers,
            "num_loops": loops, "hidden_act": "silu", "scoring_func": "softmax",
            "norm_topk_prob": False, "rms_norm_eps": EPS,
            "torch_dtype": "bfloat16"}


class Model:
    """A moe_stack model's weights: stacked per layer for the peers (torch,
    on `device`) or, without torch, as NumPy bf16 bits; scaled as
    scripts/moe_reference.py's random_weights (router 2/sqrt(d), gate and up
    1/sqrt(d), down 1/sqrt(f), norms 1 + 0.1 N(0, 1))."""

    def __init__(self, s, layers, seed, device):
        self.s, self.nlayers = s, layers
        d, f, E = s["d"], s["f"], s["E"]
        if torch is None:
            return self._numpy_init(seed)
        g = torch.Generator(device=device).manual_seed(seed)
        bf16 = torch.bfloat16

        def randn(*shape, std=1.0, mean=0.0):
            return (torch.randn(*shape, generator=g, device=device) * std
                    + mean).to(bf16)

        self.layers = []
        for _ in range(layers):
            norm = randn(d, std=0.1, mean=1.0)
            router = randn(E, d, std=2.0 / math.sqrt(d))
            w1 = torch.empty(E, 2 * f, d, dtype=bf16, device=device)
            w2 = torch.empty(E, d, f, dtype=bf16, device=device)
            for e in range(E):  # one expert at a time: no fp32 copy of all
                w1[e] = randn(2 * f, d, std=1.0 / math.sqrt(d))
                w2[e] = randn(d, f, std=1.0 / math.sqrt(f))
            self.layers.append(peers.Layer(norm, router, w1, w2))
        self.final_norm = randn(d, std=0.1, mean=1.0)

    def _numpy_init(self, seed):
        cfg = ref.parse_config(config_dict(self.s, self.nlayers))
        self.np_weights = ref.stored_weights(
            cfg, ref.random_weights(cfg, np.random.default_rng(seed), 1.0))

    def tensors(self):
        """(name, tensor) in the file's order, with the contract's names."""
        if torch is None:
            return sorted(self.np_weights.items())
        f, out = self.s["f"], []
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}"
            w1, w2 = layer.w1.cpu(), layer.w2.cpu()
            out += [(f"{p}.post_attention_layernorm.weight", layer.norm),
                    (f"{p}.mlp.gate.weight", layer.router)]
            for e in range(self.s["E"]):
                q = f"{p}.mlp.experts.{e}"
                out += [(f"{q}.gate_proj.weight", w1[e, :f]),
                        (f"{q}.up_proj.weight", w1[e, f:]),
                        (f"{q}.down_proj.weight", w2[e])]
        out.append(("model.norm.weight", self.final_norm))
        return out

    def exact(self, x, loops):
        """The model on x with fp32 activations (bf16 weights upcast):
        (hidden_states [T, d], expert ids per step) as NumPy arrays."""
        if not hasattr(self, "_fp32"):
            self._fp32 = [peers.fp32(layer) for layer in self.layers]
        h, ids = peers.moe_stack_forward(x, self._fp32, self.final_norm,
                                         self.s["k"], loops, peers.eager_moe,
                                         EPS, torch.float32)
        return h.cpu().numpy(), [i.cpu().numpy() for i in ids]


def weight_bytes(s, layers=1):
    return layers * s["E"] * 3 * s["d"] * s["f"] * 2


def write_model(workdir, name, model, loops=1):
    """config.json and weights.safetensors under workdir/name."""
    path = os.path.join(workdir, name)
    os.makedirs(path, exist_ok=True)
    config = os.path.join(path, "config.json")
    with open(config, "w") as f:
        json.dump(config_dict(model.s, model.nlayers, loops), f, indent=1)
    weights = os.path.join(path, "weights.safetensors")
    write_safetensors(weights, model.tensors())
    return config, weights


def make_inputs(path, T, d, seed, device):
    """hidden_states F32 [T, d], N(0, 1); returns the tensor (or array)."""
    if torch is not None:
        g = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(T, d, generator=g, device=device)
    else:
        x = np.random.default_rng(seed).standard_normal((T, d)).astype(np.float32)
    write_safetensors(path, [("hidden_states", x)])
    return x


def workspace(need_bytes):
    """A temp dir, in /dev/shm when it has room (weights stay in memory)."""
    base = None
    if os.path.isdir("/dev/shm"):
        try:
            if shutil.disk_usage("/dev/shm").free > 2 * need_bytes + (1 << 30):
                base = "/dev/shm"
        except OSError:
            pass
    return tempfile.mkdtemp(prefix="moe-gpu-bench-", dir=base)


# ---------------------------------------------------------------------------
# ours: moe-run
# ---------------------------------------------------------------------------

RUN_TIME = re.compile(r"run time: median ([0-9.]+) ms, min ([0-9.]+) ms, (\d+) runs")


def parse_run_time(text):
    """moe-run --repeat's line -> (median ms, min ms, runs) or None."""
    m = RUN_TIME.search(text)
    return (float(m.group(1)), float(m.group(2)), int(m.group(3))) if m else None


def moe_run(model, weights, inputs, outputs, device, reps, timeout, extra=()):
    """Runs moe-run; returns dict(median_ms, min_ms, runs, wall_s) or
    dict(error=...)."""
    cmd = [os.path.join(BIN, "moe-run"), model, "--weights", weights,
           "--inputs", inputs, "--outputs", outputs, *extra]
    if device == "cuda":
        cmd += ["--device", "cuda"]
    if reps > 1:
        cmd += ["--repeat", str(reps)]
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    wall = time.monotonic() - start
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"moe-run exit {p.returncode}: " + " | ".join(tail)}
    parsed = parse_run_time(p.stdout)
    result = {"wall_s": round(wall, 2)}
    if parsed:
        result.update(median_ms=parsed[0], min_ms=parsed[1], runs=parsed[2])
    return result


def read_outputs(path):
    out = ref.read_safetensors(path)
    return {name: t.array for name, t in out.items()}


def same_routing(ids, other_ids, steps):
    """Tokens whose expert sets agree on every step. ids: [steps, T, k]."""
    same = np.ones(np.asarray(ids).shape[1], dtype=bool)
    for step in range(steps):
        mine = np.sort(np.asarray(ids[step]), axis=-1)
        theirs = np.sort(np.asarray(other_ids[step]), axis=-1)
        same &= (mine == theirs).all(axis=-1)
    return same


def check_ours(outputs, expected, expected_ids, steps, k, vs_eager=None,
               tol=TOLERANCE):
    """moe-run's hidden_states against the exact model output (torch with
    fp32 activations, or the NumPy reference), skipping tokens routed to
    other experts (near ties: a backend may decide them either way; a broken
    router would reroute most tokens, which fails the check).
    expected_ids: per step [T, k]. vs_eager: (hidden, ids per step) of the
    bf16 eager model, whose distance on commonly routed tokens is recorded."""
    hidden = np.asarray(outputs["hidden_states"])
    ids = outputs["expert_ids"]  # [steps, T, k]
    same = same_routing(ids, expected_ids, steps)
    a, e = hidden[same].astype(np.float64), np.asarray(expected)[same].astype(np.float64)
    err = np.abs(a - e)
    passed = bool(np.all(err <= tol + tol * np.abs(e))) if a.size else True
    passed &= bool(np.isfinite(hidden).all())
    rerouted = int((~same).sum())
    passed &= rerouted <= max(1, math.ceil(0.05 * hidden.shape[0] * steps))
    result = {"pass": passed, "max_abs_err": float(err.max()) if err.size else 0.0,
              "rerouted_tokens": rerouted}
    if vs_eager is not None:
        both = same & same_routing(ids, vs_eager[1], steps)
        if both.any():
            result["max_abs_err_vs_eager"] = float(
                np.abs(hidden[both] - np.asarray(vs_eager[0])[both]).max())
    return result


# ---------------------------------------------------------------------------
# peers: timing
# ---------------------------------------------------------------------------

def cuda_time(fn, reps, warmup=3):
    """Median and min of reps calls (ms), each between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times)


def copy_bandwidth_gbs():
    """Device-to-device copy of 1 GiB, read + write bytes over the median."""
    n = 1 << 30
    buffers = [torch.empty(n, dtype=torch.uint8, device="cuda") for _ in range(2)]
    median, _ = cuda_time(lambda: buffers[1].copy_(buffers[0]), 10)
    buffers.clear()
    torch.cuda.empty_cache()
    return 2 * n / (median * 1e-3) / 1e9


def host_copy_ms(T, d, k):
    """What moe-run's activation copies cost: hidden_states f32 [T, d] from
    pageable host memory to the device, and the outputs (hidden_states,
    expert ids and gates) back, timed with torch."""
    x = torch.randn(T, d)
    ys = [torch.empty(T, d, device="cuda"), torch.empty(T, 2 * k, device="cuda")]

    def run():
        x.to("cuda")
        for y in ys:
            y.cpu()
    return cuda_time(run, 5, warmup=1)[0]


def peer_functions(args):
    fns = {"eager": peers.eager_moe}
    reasons = {}
    if peers.has_grouped_mm():
        fns["grouped_mm"] = peers.grouped_mm_moe
    else:
        reasons["grouped_mm"] = f"torch {torch.__version__} has no _grouped_mm"
    try:
        import triton_moe
        fns["triton"] = triton_moe.fused_moe
    except ImportError as e:
        reasons["triton"] = f"no triton ({e})"
    for name in args.skip_peers:
        fns.pop(name, None)
        reasons[name] = "skipped (--skip-peers)"
    return fns, reasons


# ---------------------------------------------------------------------------
# the benchmarks
# ---------------------------------------------------------------------------

class Clock:
    def __init__(self, budget):
        self.start, self.budget = time.monotonic(), budget

    def left(self):
        return self.budget - (time.monotonic() - self.start)


def layer_rows(args, clock, notes, env):
    """One row per (shape, T)."""
    rows = []
    device = env["torch_device"]
    fns, reasons = (peer_functions(args) if (torch is not None and not args.dry_run)
                    else ({}, {p: "dry run" if args.dry_run else "no torch"
                               for p in PEERS}))
    if args.dry_run and torch is not None:
        fns = {"eager": peers.eager_moe}
        if peers.has_grouped_mm():
            fns["grouped_mm"] = peers.grouped_mm_moe  # numerics only, on the CPU
    for name in args.shapes:
        s = SHAPES[name]
        wbytes = weight_bytes(s)
        if args.dry_run and wbytes > args.dry_run_max_bytes:
            notes.append(f"dry run: {name} not generated ({wbytes / 2**30:.2f} GiB "
                         "of weights); pass --dry-run-max-mb to include it")
            continue
        if clock.left() < args.looped_reserve + 20 and not args.dry_run:
            notes.append(f"{name}: skipped, time budget spent")
            continue
        work, model = workspace(wbytes), None
        try:
            t0 = time.monotonic()
            model = Model(s, 1, args.seed, device)
            config, weights = write_model(work, name, model)
            print(f"[{name}] weights {wbytes / 2**30:.2f} GiB generated in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
            prev = None  # (T, ours median ms, compile+load s) for the budget
            for T in args.tokens:
                row = {"shape": name, **s, "T": T, "flops": flops(T, s)}
                rows.append(row)
                if not args.dry_run:
                    predicted = 0.0
                    if prev:
                        per_run = prev[1] * max(1.0, T / prev[0]) / 1e3
                        predicted = prev[2] + per_run * (repeats(T, args.repeat_scale) + 2)
                    if predicted > clock.left() - args.looped_reserve:
                        row["skipped"] = (f"predicted {predicted:.0f} s would not fit "
                                          f"the time budget ({clock.left():.0f} s left)")
                        notes.append(f"{name} T={T}: {row['skipped']}")
                        continue
                try:
                    one_row(args, row, s, model, config, weights, work, T, fns,
                            reasons, clock, env)
                except Exception as e:  # one broken row must not end the run
                    traceback.print_exc()
                    row["skipped"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
                    notes.append(f"{name} T={T}: {row['skipped']}")
                    continue
                ours = row.get("ours", {})
                if "median_ms" in ours:
                    prev = (T, ours["median_ms"],
                            max(0.0, ours["wall_s"] - ours["median_ms"] * (ours["runs"] + 1) / 1e3))
                print(f"[{name}] T={T}: " + summary(row), flush=True)
        except Exception as e:  # e.g. out of memory generating the weights
            traceback.print_exc()
            notes.append(f"{name}: failed: {type(e).__name__}: {str(e)[:200]}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
            del model
            if torch is not None and device == "cuda":
                torch.cuda.empty_cache()
    return rows


def summary(row):
    parts = []
    for impl in ("ours",) + PEERS:
        r = row.get(impl, {})
        parts.append(f"{impl} " + (f"{r['median_ms']:.3f} ms" if "median_ms" in r
                                   else r.get("error", "n/a")))
    return ", ".join(parts)


def one_row(args, row, s, model, config, weights, work, T, fns, reasons, clock, env):
    device = env["torch_device"]
    d, k = s["d"], s["k"]
    reps = repeats(T, args.repeat_scale)
    inputs = os.path.join(work, f"inputs-{T}.safetensors")
    outputs = os.path.join(work, f"outputs-{T}.safetensors")
    x = make_inputs(inputs, T, d, args.seed + T, device)

    # The peers: the MoE of the normed activations.
    expected = expected_ids = vs_eager = None
    if torch is not None:
        layer = model.layers[0]
        n = peers.rmsnorm(x, layer.norm, EPS).to(torch.bfloat16)
        results = {}
        for name in PEERS:
            if name not in fns:
                row[name] = {"error": reasons.get(name, "n/a")}
                continue
            fn = fns[name]
            try:
                out = fn(n, layer, k)
                results[name] = out
                entry = {}
                if not args.dry_run:
                    entry["median_ms"], entry["min_ms"] = cuda_time(
                        lambda: fn(n, layer, k), reps)
                    entry["runs"] = reps
                row[name] = entry
            except Exception as e:  # a peer that fails is reported, not fatal
                row[name] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
        base = results.get("eager")
        for name, out in results.items():
            if name != "eager" and base is not None:
                ok, err, _ = peers.compare(out, base, TOLERANCE, TOLERANCE)
                row[name].update({"pass": ok, "max_abs_err": err})
        # The whole moe_stack layer (residual, final norm) with fp32
        # activations: the reference of ours and of the eager loop's layer.
        expected, expected_ids = model.exact(x, 1)
        if base is not None:
            h, ids = peers.moe_stack_forward(x, model.layers, model.final_norm, k,
                                             1, lambda a, b, c: base, EPS)
            vs_eager = (h.cpu().numpy(), [i.cpu().numpy() for i in ids])
            row["eager"].update(check_ours(
                {"hidden_states": vs_eager[0], "expert_ids": vs_eager[1]},
                expected, expected_ids, 1, k))
        if device == "cuda" and not args.dry_run:
            row["ours_copies_est_ms"] = host_copy_ms(T, d, k)

    # Ours, and with the Hopper warpgroup tiles (--wgmma) side by side; for
    # decode batches also with a warp per row (--split-chunk-rows=1: each
    # row reads its expert's weights) against ours' chunks of 4 rows. In a
    # dry run on the CPU those variants go through the emulated kernels.
    def run_ours(extra):
        limit = min(args.run_timeout, max(clock.left() - args.looped_reserve, 30))
        r = moe_run(config, weights, inputs, outputs, "cpu" if args.dry_run else "cuda",
                    1 if args.dry_run else reps, limit, list(args.moe_run_arg) + extra)
        if args.dry_run:
            r.pop("median_ms", None)
        return r

    if args.dry_run and weight_bytes(s) > args.dry_run_cpu_bytes:
        row["ours"] = {"error": "dry run: too large for moe-run on the CPU"}
    else:
        variants = [("ours", [])]
        emulated = ["--gpu-emulation"] if args.dry_run else []
        if env.get("wgmma"):
            variants.append(("ours_wgmma", ["--wgmma"] + emulated))
        if 1 < T <= DECODE_BATCH_MAX_T:
            variants.append(("ours_1row", ["--split-chunk-rows=1"] + emulated))
        for impl, extra in variants:
            r = row[impl] = run_ours(extra)
            if "error" in r:
                continue
            if expected is None:  # no torch: the NumPy reference (float64)
                cfg = ref.load_config(config)
                res = ref.forward(cfg, ref.check_weights(cfg, ref.read_safetensors(weights)),
                                  np.asarray(x, dtype=np.float64))
                expected, expected_ids = res.hidden_states, list(res.expert_ids)
            r.update(check_ours(read_outputs(outputs), expected, expected_ids, 1, k,
                                vs_eager))
    derive(row, s, env)


def derive(row, s, env):
    """TFLOP/s, fraction of the roofline and speedups of a timed row."""
    T = row["T"]
    t_roof, bound = roofline(T, s, env["bandwidth_gbs"], env["peak_tflops"])
    row["roofline_ms"], row["bound"] = t_roof, bound
    row["layer_bytes"] = layer_bytes(T, s)
    for impl in OURS + PEERS:
        r = row.get(impl)
        if r and r.get("median_ms"):
            r["tflops"] = row["flops"] / (r["median_ms"] * 1e-3) / 1e12
            r["roofline_fraction"] = t_roof / r["median_ms"]
    ours = row.get("ours", {}).get("median_ms")
    wgmma = row.get("ours_wgmma", {}).get("median_ms")
    # > 1: the warpgroup tiles are faster than mma.sync.
    row["mma_over_wgmma"] = ours / wgmma if ours and wgmma else None
    one_row = row.get("ours_1row", {}).get("median_ms")
    # > 1: chunks of 4 rows per warp are faster than a warp per row.
    row["one_row_over_ours"] = one_row / ours if ours and one_row else None
    row["speedup"] = {p: (row[p]["median_ms"] / ours
                          if ours and row.get(p, {}).get("median_ms") else None)
                      for p in PEERS}


def looped_rows(args, clock, notes, env):
    """Looped-MoE decode step: resident vs unrolled vs torch eager."""
    device = env["torch_device"]
    name = LOOPED["shape"] if not args.dry_run else args.shapes[0]
    s = SHAPES[name]
    L, K = LOOPED["layers"], LOOPED["loops"]
    wbytes = weight_bytes(s, L)
    if args.dry_run and wbytes > args.dry_run_max_bytes:
        notes.append(f"dry run: looped benchmark skipped ({name} too large)")
        return [], name
    rows = []
    work = workspace(wbytes)
    try:
        model = Model(s, L, args.seed, device)
        config, weights = write_model(work, "looped", model, loops=K)
        mlir = os.path.join(work, "looped", "model.mlir")
        subprocess.run([os.path.join(BIN, "moe-import"), config, "-o", mlir],
                       check=True, capture_output=True)
        variants = {}
        for variant, option in (
                ("resident", "cache-bytes=4611686018427387904"),
                ("unrolled", "cache-bytes=0 max-unrolled-ops=1000000000")):
            path = os.path.join(work, "looped", variant + ".mlir")
            subprocess.run([os.path.join(BIN, "moe-opt"), mlir,
                            f"--moe-loop-residency={option}", "-o", path],
                           check=True, capture_output=True)
            mode = "resident" if variant == "resident" else "unroll"
            with open(path) as f:
                if f"mode = {mode}" not in f.read():
                    raise RuntimeError(f"moe-opt did not set mode = {mode}")
            variants[variant] = (path, [])
        # The resident body again, as a host loop of launches that reads the
        # active count back after each pass (the CPU has only that form).
        variants["host_loop"] = (variants["resident"][0],
                                 [] if args.dry_run else ["--resident-loops=false"])
        for T in args.looped_tokens:
            row = {"shape": name, **s, "layers": L, "loops": K, "T": T}
            rows.append(row)
            if not args.dry_run and clock.left() < 15:
                row["skipped"] = "time budget spent"
                notes.append(f"looped T={T}: skipped, time budget spent")
                continue
            reps = repeats(T, args.repeat_scale)
            inputs = os.path.join(work, f"inputs-{T}.safetensors")
            outputs = os.path.join(work, f"outputs-{T}.safetensors")
            x = make_inputs(inputs, T, s["d"], args.seed + 1000 + T, device)
            expected = expected_ids = vs_eager = None
            if torch is not None:
                def fwd():
                    return peers.moe_stack_forward(x, model.layers, model.final_norm,
                                                   s["k"], K, peers.eager_moe, EPS)
                h, ids = fwd()
                vs_eager = (h.cpu().numpy(), [i.cpu().numpy() for i in ids])
                expected, expected_ids = model.exact(x, K)
                row["eager"] = check_ours(
                    {"hidden_states": vs_eager[0], "expert_ids": vs_eager[1]},
                    expected, expected_ids, L * K, s["k"], tol=LOOPED_TOLERANCE)
                if not args.dry_run:
                    row["eager"]["median_ms"], row["eager"]["min_ms"] = cuda_time(fwd, reps)
            else:
                row["eager"] = {"error": "no torch"}
            for variant, (path, variant_args) in variants.items():
                if args.dry_run and wbytes > args.dry_run_cpu_bytes:
                    row[variant] = {"error": "dry run: too large for the CPU"}
                    continue
                limit = min(args.run_timeout, max(clock.left(), 10))
                r = moe_run(path, weights, inputs, outputs,
                            "cpu" if args.dry_run else "cuda",
                            1 if args.dry_run else reps, limit,
                            list(args.moe_run_arg) + variant_args)
                if "error" not in r:
                    got = read_outputs(outputs)
                    if expected is None:
                        cfg = ref.load_config(config)
                        res = ref.forward(cfg, ref.check_weights(
                            cfg, ref.read_safetensors(weights)),
                            np.asarray(x, dtype=np.float64))
                        expected, expected_ids = res.hidden_states, list(res.expert_ids)
                    r.update(check_ours(got, expected, expected_ids, L * K, s["k"],
                                        vs_eager, tol=LOOPED_TOLERANCE))
                row[variant] = r
            res_ms = row.get("resident", {}).get("median_ms")
            for other in ("host_loop", "unrolled", "eager"):
                o = row.get(other, {}).get("median_ms")
                row[f"{other}_over_resident"] = o / res_ms if (o and res_ms) else None
            print(f"[looped] T={T}: " + ", ".join(
                f"{v} " + (f"{row[v]['median_ms']:.3f} ms" if "median_ms" in row.get(v, {})
                           else row.get(v, {}).get("error", "n/a"))
                for v in LOOPED_VARIANTS), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, name


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------

def fmt_ms(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def check_cell(row, impls):
    """'ok', or the implementations whose numerics failed; n/a if none ran."""
    checked = [i for i in impls if "pass" in row.get(i, {})]
    failed = [i for i in checked if not row[i]["pass"]]
    if failed:
        return "FAIL " + ",".join(failed)
    return "ok" if checked else "n/a"


def markdown(result):
    env = result["env"]
    lines = [
        f"GPU MoE layer benchmark; {env['machine']}; commit {result['commit']}; "
        f"torch {env['torch']}, triton {env['triton']}",
        "",
        f"One moe_stack MoE layer (router softmax + top-k, SiLU experts, bf16 "
        f"weights), times in ms (medians). Roofline: copy bandwidth "
        f"{fmt(env['bandwidth_gbs'], '.0f')} GB/s ({env['bandwidth_source']}), "
        f"tensor peak {env['peak_tflops']:.0f} TFLOP/s; TFLOP/s counts "
        "6*T*k*d*f. Ours is timed around moert_model_run, so it includes the "
        "host<->device copies of the f32 activations (estimated in 'copies'); "
        "the peers start from bf16 normed activations already on the device. "
        "x P = P's time / ours (>1: ours faster). check, within "
        f"atol = rtol = {TOLERANCE}: grouped_mm and triton against the eager "
        "loop's MoE output; ours and the eager loop's whole layer (residual and "
        "final norm) against the same layer in torch with fp32 activations.",
        "",
        "ours wgmma: the same with --wgmma (Hopper warpgroup tiles, when the "
        "GPU is an sm_90 one); mma/wgmma = ours / ours wgmma.",
        "",
        "| shape | T | ours | eager | grouped_mm | triton | copies | ours TFLOP/s "
        "| ours % roof | bound | x eager | x gmm | x triton | ours wgmma "
        "| mma/wgmma | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["layer"]:
        if "skipped" in row:
            lines.append(f"| {row['shape']} | {row['T']} | skipped | | | | | | | | | | | | | "
                         f"{row['skipped']} |")
            continue
        ours = row.get("ours", {})
        sp = row.get("speedup", {})
        lines.append("| " + " | ".join([
            row["shape"], str(row["T"]),
            fmt_ms(ours.get("median_ms")) if "error" not in ours else "err",
            *[fmt_ms(row.get(p, {}).get("median_ms")) for p in PEERS],
            fmt_ms(row.get("ours_copies_est_ms")),
            fmt(ours.get("tflops"), ".1f"),
            fmt(100 * ours["roofline_fraction"] if "roofline_fraction" in ours else None, ".0f"),
            row.get("bound", ""),
            *[fmt(sp.get(p), ".2f") for p in PEERS],
            (fmt_ms(row["ours_wgmma"].get("median_ms"))
             if "error" not in row["ours_wgmma"] else "err")
            if "ours_wgmma" in row else "n/a",
            fmt(row.get("mma_over_wgmma"), ".2f"),
            check_cell(row, OURS + PEERS)]) + " |")
    decode = [row for row in result["layer"] if "ours_1row" in row]
    if decode:
        lines += ["", "Decode batches: ours (a warp per output column and 4 rows of "
                  "an expert, its weights read once for them) vs a warp per row "
                  "(--split-chunk-rows=1); 1-row/ours > 1: the chunks are faster.", "",
                  "| shape | T | ours | 1-row | 1-row/ours | check |", "|---|---|---|---|---|---|"]
        for row in decode:
            one = row["ours_1row"]
            lines.append("| " + " | ".join([
                row["shape"], str(row["T"]), fmt_ms(row.get("ours", {}).get("median_ms")),
                fmt_ms(one.get("median_ms")) if "error" not in one else "err",
                fmt(row.get("one_row_over_ours"), ".2f"),
                check_cell(row, ("ours_1row",))]) + " |")
    errors = sorted({f"{impl}: {row[impl]['error']}" for row in result["layer"]
                     for impl in OURS + PEERS
                     if "error" in row.get(impl, {})})
    if result["looped"]:
        r0 = result["looped"][0]
        lines += ["", f"Looped-MoE decode step: {r0['shape']} (d={r0['d']} f={r0['f']} "
                  f"E={r0['E']} k={r0['k']}), {r0['layers']} layers x {r0['loops']} "
                  "passes; ours with the loop kept resident (one kernel for all "
                  "passes), the same body as a host loop of launches "
                  "(--resident-loops=false), and unrolled (moe-loop-residency "
                  "forced either way), vs the same model in torch eager (HF loop "
                  "per layer). ms, medians; check within "
                  f"atol = rtol = {LOOPED_TOLERANCE} of the model with fp32 "
                  "activations (6 chained bf16 MoE layers).", "",
                  "| T | resident | host loop | unrolled | eager "
                  "| host loop/resident | unrolled/resident | eager/resident "
                  "| check |", "|---|---|---|---|---|---|---|---|---|"]
        for row in result["looped"]:
            if "skipped" in row:
                lines.append(f"| {row['T']} | skipped | | | | | | | {row['skipped']} |")
                continue
            lines.append("| " + " | ".join([
                str(row["T"]),
                *[fmt_ms(row.get(v, {}).get("median_ms")) if "error" not in row.get(v, {})
                  else "err" for v in LOOPED_VARIANTS],
                fmt(row.get("host_loop_over_resident"), ".2f"),
                fmt(row.get("unrolled_over_resident"), ".2f"),
                fmt(row.get("eager_over_resident"), ".2f"),
                check_cell(row, LOOPED_VARIANTS)]) + " |")
        errors += sorted({f"looped {v}: {row[v]['error']}" for row in result["looped"]
                          for v in LOOPED_VARIANTS
                          if "error" in row.get(v, {})})
    if result["notes"] or errors:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"] + errors]
    lines += ["", "Warm caches: every implementation is timed over repeated runs "
              "on the same weights, so when the touched experts fit in L2 "
              "(small T on the small shapes) % roof can pass 100.",
              "", f"Reproduce: {result['command']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------

def plain(v):
    """JSON-safe: NaN and inf become null, numpy scalars Python ones."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def int_list(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=lambda t: t.split(","), default=None,
                   help="comma list of " + ", ".join(SHAPES) +
                   " (default: the four of PERFORMANCE.md; tiny with --dry-run)")
    p.add_argument("--tokens", type=int_list, default=None,
                   help="comma list of T (default 1,16,128,1024,8192)")
    p.add_argument("--looped-tokens", type=int_list, default=None,
                   help="T of the Looped-MoE decode step (default 1,4,16,64)")
    p.add_argument("--no-looped", action="store_true",
                   help="skip the Looped-MoE decode benchmark")
    p.add_argument("--quick", action="store_true",
                   help="T in 1,128 (looped 1,16) and fewer repeats")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU work: generate files, check moe-run on the CPU "
                   "for small shapes, write reports with NaN timings")
    p.add_argument("--dry-run-max-mb", type=float, default=64,
                   help="dry run: largest weights to generate (MiB)")
    p.add_argument("--dry-run-cpu-mb", type=float, default=64,
                   help="dry run: largest weights to run moe-run on the CPU "
                   "with (MiB)")
    p.add_argument("--budget", type=float, default=360,
                   help="seconds for all the GPU work; rows that would not "
                   "fit are skipped and listed (default 360)")
    p.add_argument("--looped-reserve", type=float, default=None,
                   help="seconds of the budget kept for the looped benchmark")
    p.add_argument("--run-timeout", type=float, default=150,
                   help="limit of one moe-run call (s)")
    p.add_argument("--repeat-scale", type=float, default=1.0,
                   help="scale the repeat counts (never below 10)")
    p.add_argument("--skip-peers", type=lambda t: t.split(","), default=[],
                   help="comma list of eager,grouped_mm,triton not to run")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="copy bandwidth for the roofline (default: measured)")
    p.add_argument("--moe-run-arg", action="append", default=[],
                   help="extra moe-run argument (repeatable), e.g. "
                   "--moe-run-arg=--cuda-toolkit=/usr/local/cuda")
    p.add_argument("--wgmma", choices=("auto", "on", "off"), default="auto",
                   help="also time ours with --wgmma (Hopper warpgroup tiles); "
                   "auto: on an H100/H200-class GPU, never in a dry run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="results folder (default bench/results; a temp dir "
                   "for --dry-run)")
    args = p.parse_args(argv)
    if args.shapes is None:
        args.shapes = ["tiny"] if args.dry_run else list(DEFAULT_SHAPES)
    for s in args.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    if args.tokens is None:
        args.tokens = QUICK_TOKENS if args.quick else DEFAULT_TOKENS
    if args.looped_tokens is None:
        args.looped_tokens = [1, 16] if args.quick else LOOPED_TOKENS
    if args.quick:
        args.repeat_scale = min(args.repeat_scale, 0.5)
    if args.no_looped:
        args.looped_tokens = []
    if args.looped_reserve is None:
        args.looped_reserve = 12.0 * len(args.looped_tokens) if args.looped_tokens else 0.0
    args.dry_run_max_bytes = args.dry_run_max_mb * (1 << 20)
    args.dry_run_cpu_bytes = args.dry_run_cpu_mb * (1 << 20)
    for name in args.skip_peers:
        if name not in PEERS:
            p.error(f"--skip-peers: unknown peer {name!r}")
    return args


def gpu_name():
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args):
    env = {"torch": torch.__version__ if torch is not None else "n/a",
           "peak_tflops": args.peak_tflops}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "n/a"
    if args.dry_run:
        env.update(machine="dry run (no GPU work)", torch_device="cpu",
                   bandwidth_gbs=args.bandwidth_gbs or float("nan"),
                   bandwidth_source="given" if args.bandwidth_gbs else "not measured",
                   wgmma=args.wgmma == "on")
        return env
    name = gpu_name()
    if name is None:
        sys.exit("gpu_bench: no GPU found (torch.cuda and nvidia-smi); "
                 "use --dry-run to test without one")
    env["machine"] = name
    if torch is not None and not torch.cuda.is_available():
        sys.exit("gpu_bench: torch cannot use the GPU (a CPU-only build?)")
    env["torch_device"] = "cuda"
    if args.bandwidth_gbs:
        env["bandwidth_gbs"], env["bandwidth_source"] = args.bandwidth_gbs, "given"
    elif torch is not None:
        env["bandwidth_gbs"] = copy_bandwidth_gbs()
        env["bandwidth_source"] = "measured, 1 GiB device-to-device copy"
    else:
        key = next((k for k in NOMINAL_COPY_GBS if k in name), "H100")
        env["bandwidth_gbs"] = NOMINAL_COPY_GBS[key]
        env["bandwidth_source"] = f"PERFORMANCE.md's {key} figure (no torch)"
    hopper = any(g in name for g in ("H100", "H200", "H800", "GH200"))
    if not hopper:
        env["peak_note"] = f"peak {args.peak_tflops} TFLOP/s is the H100/H200 figure"
    env["wgmma"] = args.wgmma == "on" or (args.wgmma == "auto" and hopper)
    return env


def git_output(*command):
    """What git prints, or "" where there is no git or no repository (a lent
    GPU machine gets a copy of the tree without either)."""
    try:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def source_commit():
    """(commit, dirty) of the source: from git, else MOE_BENCH_COMMIT, which
    scripts/gpu-check.sh --from-pack sets from the commit gpu-pack.sh packed
    ("<hash>" or "<hash>-dirty")."""
    commit = git_output("rev-parse", "--short", "HEAD")
    if commit:
        return commit, bool(git_output("status", "--porcelain", "--untracked-files=no"))
    packed = os.environ.get("MOE_BENCH_COMMIT", "")
    return (packed.removesuffix("-dirty") or "unknown"), packed.endswith("-dirty")


def main(argv=None):
    args = parse_args(argv)
    clock = Clock(args.budget)
    commit, dirty = source_commit()
    env = environment(args)
    print(f"gpu_bench: {env['machine']}, torch {env['torch']}, triton {env['triton']}, "
          f"copy bandwidth {fmt(env['bandwidth_gbs'], '.0f')} GB/s", flush=True)
    if torch is not None:
        torch.set_float32_matmul_precision("highest")  # the fp32 reference: no TF32
    notes = []
    if "peak_note" in env:
        notes.append(env["peak_note"])
    if torch is None:
        notes.append("torch not importable: peers n/a, ours checked only in dry runs")
    layer = layer_rows(args, clock, notes, env)
    looped, looped_shape = ([], None)
    if args.looped_tokens:
        try:
            looped, looped_shape = looped_rows(args, clock, notes, env)
        except Exception as e:
            traceback.print_exc()
            notes.append(f"looped benchmark failed: {type(e).__name__}: {str(e)[:200]}")
    command = "bash bench/gpu/run.sh" + ("".join(f" {a}" for a in (argv or sys.argv[1:])))
    result = {"bench": "gpu-layer", "commit": commit, "dirty_tree": dirty,
              "machine": env["machine"], "env": env, "tolerance": TOLERANCE,
              "budget_s": args.budget, "elapsed_s": round(args.budget - clock.left(), 1),
              "layer": layer, "looped": looped, "notes": notes, "command": command,
              "tokens": args.tokens, "shapes": args.shapes}
    out = args.out or (tempfile.mkdtemp(prefix="gpu-bench-dry-") if args.dry_run
                       else os.path.join(ROOT, "bench", "results"))
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"gpu-layer-{commit}" + ("-dryrun" if args.dry_run else ""))
    with open(base + ".json", "w") as f:
        json.dump(plain(result), f, indent=1)
    text = markdown(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {base}.json and {base}.md ({result['elapsed_s']} s)")
    failed = [r for r in layer + looped
              for impl in ("ours",) + LOOPED_VARIANTS + PEERS
              if r.get(impl, {}).get("pass") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
