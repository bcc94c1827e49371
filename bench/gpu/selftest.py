#!/usr/bin/env python3
"""Checks of bench/gpu/ that need no GPU (run on the CPU in a few seconds):

  python3 bench/gpu/selftest.py

- the roofline arithmetic (E_eff, bytes, bound) on PERFORMANCE.md's shapes;
- the streaming safetensors writer against scripts/moe_reference.py's reader
  (and the safetensors package when installed);
- argument parsing and moe-run's output parsing;
- the Markdown/JSON report with fake timings;
- with torch: the torch moe_stack model (fp32 activations) against the NumPy
  reference of the contract on the same weights file, and the eager loop,
  torch._grouped_mm (where torch has it on the CPU) and the Triton kernels
  (TRITON_INTERPRET=1, fp32: the interpreter's bf16 tl.dot is broken)
  against each other.
Prints 'N passed, N failed'."""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench as gb  # noqa: E402
import numpy as np  # noqa: E402

ref = gb.ref
torch = gb.torch
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))


def test_roofline():
    mix = gb.SHAPES["mixtral-8x7b"]
    check("E_eff(1) = k", abs(gb.experts_touched(1, mix) - 2) < 1e-12)
    check("E_eff(8192) = E", abs(gb.experts_touched(8192, mix) - 8) < 1e-9)
    q = gb.SHAPES["qwen3-30b-a3b"]
    expect = 128 * (1 - (1 - 8 / 128) ** 16)
    check("E_eff(16) qwen3", abs(gb.experts_touched(16, q) - expect) < 1e-9)
    b = gb.layer_bytes(1, mix)
    exact = 2 * 3 * 4096 * 14336 * 2 + 2 * 4096 * 2 + 8 * 4096 * 2 + 2 * 2 * 14336 * 2
    check("bytes mixtral T=1", b == exact, f"{b} vs {exact}")
    t, bound = gb.roofline(1, mix, 3000.0, 989.0)
    check("mixtral T=1 memory bound", bound == "memory" and abs(t - exact / 3e12 * 1e3) < 1e-12)
    t, bound = gb.roofline(8192, mix, 3000.0, 989.0)
    check("mixtral T=8192 compute bound",
          bound == "compute" and abs(t - 6 * 8192 * 2 * 4096 * 14336 / 989e12 * 1e3) < 1e-12)
    # PERFORMANCE.md: compute bound from about 295*E/k tokens (qwen3: ~4720).
    _, b1 = gb.roofline(2048, q, 3350.0, 989.0)
    _, b2 = gb.roofline(8192, q, 3350.0, 989.0)
    check("qwen3 turns compute bound between 2048 and 8192", b1 == "memory" and b2 == "compute")
    check("flops", gb.flops(16, q) == 6 * 16 * 8 * 2048 * 768)
    check("no bandwidth -> n/a", gb.roofline(1, q, float("nan"), 989.0)[1] == "n/a")


def test_writer(tmp):
    path = os.path.join(tmp, "w.safetensors")
    bits = ref.f32_to_bf16_bits(np.array([[1.5, -2.0], [3.25, 0.0]], np.float32))
    tensors = [("b.np_bf16", bits), ("a.f32", np.arange(6, dtype=np.float32).reshape(2, 3)),
               ("c.i32", np.array([7, -1], np.int32))]
    if torch is not None:
        w = torch.randn(4, 6, 3).to(torch.bfloat16)
        tensors += [("d.torch_bf16_slice", w[1, :3]), ("e.torch_f32", torch.ones(2))]
    gb.write_safetensors(path, tensors)
    back = ref.read_safetensors(path)
    check("writer: names", sorted(back) == sorted(n for n, _ in tensors))
    check("writer: bf16 bits", back["b.np_bf16"].dtype == "BF16"
          and np.array_equal(back["b.np_bf16"].array, [[1.5, -2.0], [3.25, 0.0]]))
    check("writer: f32 / i32", np.array_equal(back["a.f32"].array, np.arange(6).reshape(2, 3))
          and np.array_equal(back["c.i32"].array, [7, -1]))
    if torch is not None:
        check("writer: torch bf16 slice", np.array_equal(
            back["d.torch_bf16_slice"].array, w[1, :3].float().numpy()))
    try:
        from safetensors.torch import load_file  # numpy has no bf16
    except ImportError:
        print("skip safetensors package (not installed, or no torch)")
        return
    other = load_file(path)
    check("writer: safetensors package reads it", other["c.i32"].tolist() == [7, -1]
          and torch.equal(other["d.torch_bf16_slice"], w[1, :3]))


def test_source_commit():
    # A lent machine's copy of the tree has no git: the commit gpu-pack.sh
    # packed (MOE_BENCH_COMMIT) names the results.
    real_root, saved = gb.ROOT, os.environ.get("MOE_BENCH_COMMIT")
    try:
        with tempfile.TemporaryDirectory() as no_git:
            gb.ROOT = no_git
            os.environ["MOE_BENCH_COMMIT"] = "abc1234-dirty"
            check("commit from the pack", gb.source_commit() == ("abc1234", True))
            os.environ["MOE_BENCH_COMMIT"] = "abc1234"
            check("clean packed commit", gb.source_commit() == ("abc1234", False))
            del os.environ["MOE_BENCH_COMMIT"]
            check("no git, no pack: unknown", gb.source_commit() == ("unknown", False))
    finally:
        gb.ROOT = real_root
        if saved is None:
            os.environ.pop("MOE_BENCH_COMMIT", None)
        else:
            os.environ["MOE_BENCH_COMMIT"] = saved
    commit, _ = gb.source_commit()
    check("git wins where there is one", commit not in ("unknown", "abc1234"))


def test_args():
    a = gb.parse_args(["--quick"])
    check("--quick", a.tokens == [1, 128] and a.looped_tokens == [1, 16]
          and a.shapes == gb.DEFAULT_SHAPES and a.repeat_scale == 0.5)
    a = gb.parse_args(["--shapes", "olmoe-1b-7b,tiny", "--tokens", "4,32", "--no-looped"])
    check("--shapes/--tokens/--no-looped", a.shapes == ["olmoe-1b-7b", "tiny"]
          and a.tokens == [4, 32] and a.looped_tokens == [] and a.looped_reserve == 0)
    a = gb.parse_args(["--dry-run"])
    check("--dry-run defaults to tiny", a.shapes == ["tiny"] and a.tokens == gb.DEFAULT_TOKENS)
    try:
        gb.parse_args(["--shapes", "nope"])
        check("unknown shape rejected", False)
    except SystemExit:
        check("unknown shape rejected", True)
    check("repeats >= 10", all(gb.repeats(t, 0.1) >= 10 for t in (1, 16, 128, 1024, 8192)))
    line = "compiling...\nrun time: median 0.1234 ms, min 0.1000 ms, 51 runs\n"
    check("parse moe-run --repeat", gb.parse_run_time(line) == (0.1234, 0.1, 51))


def test_report(tmp):
    env = {"machine": "NVIDIA H200", "torch": "x", "triton": "y", "bandwidth_gbs": 4300.0,
           "bandwidth_source": "fake", "peak_tflops": 989.0, "torch_device": "cuda"}
    rows = []
    for T, ours in ((1, 0.05), (8192, 40.0)):
        s = gb.SHAPES["mixtral-8x7b"]
        row = {"shape": "mixtral-8x7b", **s, "T": T, "flops": gb.flops(T, s),
               "ours": {"median_ms": ours, "pass": True},
               "eager": {"median_ms": 2 * ours, "pass": True},
               "grouped_mm": {"error": "n/a"},
               "triton": {"median_ms": ours / 2, "pass": False},
               "ours_wgmma": {"median_ms": ours / 4, "pass": True},
               "ours_copies_est_ms": 0.01}
        if T == 1:
            row["ours_1row"] = {"median_ms": 3 * ours, "pass": True}
        gb.derive(row, s, env)
        rows.append(row)
    rows.append({"shape": "mixtral-8x7b", "T": 99, "skipped": "budget"})
    r = rows[0]
    check("speedups", abs(r["speedup"]["eager"] - 2) < 1e-12 and r["speedup"]["grouped_mm"] is None
          and abs(r["speedup"]["triton"] - 0.5) < 1e-12)
    check("tflops", abs(rows[1]["ours"]["tflops"] - gb.flops(8192, gb.SHAPES["mixtral-8x7b"])
                        / 0.04 / 1e12) < 1e-9)
    frac = gb.roofline(1, gb.SHAPES["mixtral-8x7b"], 4300.0, 989.0)[0] / 0.05
    check("roofline fraction", abs(r["ours"]["roofline_fraction"] - frac) < 1e-12)
    check("mma over wgmma", abs(r["mma_over_wgmma"] - 4) < 1e-12)
    check("one row over ours", abs(r["one_row_over_ours"] - 3) < 1e-12
          and rows[1]["one_row_over_ours"] is None)
    result = {"env": env, "commit": "abc1234", "layer": rows, "notes": ["a note"],
              "looped": [{"shape": "looped-moe-scaled", "d": 1, "f": 2, "E": 8, "k": 2,
                          "layers": 2, "loops": 3, "T": 1,
                          "resident": {"median_ms": 1.0, "pass": True},
                          "host_loop": {"median_ms": 1.2, "pass": True},
                          "unrolled": {"median_ms": 1.5, "pass": True},
                          "eager": {"median_ms": 3.0}, "host_loop_over_resident": 1.2,
                          "unrolled_over_resident": 1.5,
                          "eager_over_resident": 3.0}],
              "command": "bash bench/gpu/run.sh"}
    text = gb.markdown(result)
    print(text)
    table = [l for l in text.splitlines() if l.startswith("| mixtral")]
    check("markdown rows", len(table) == 4 and "FAIL triton" in table[0]
          and "| 2.00 |" in table[0] and "skipped" in table[2]
          and "| 0.013 | 4.00 |" in table[0])
    check("markdown decode batches",
          table[3] == "| mixtral-8x7b | 1 | 0.050 | 0.150 | 3.00 | ok |", table[3])
    check("markdown looped",
          "| 1 | 1.00 | 1.20 | 1.50 | 3.00 | 1.20 | 1.50 | 3.00 | ok |" in text)
    blob = json.dumps(gb.plain({"x": float("nan"), "y": [np.float32(1.5)], "z": np.bool_(True)}))
    check("JSON: NaN -> null", blob == '{"x": null, "y": [1.5], "z": true}', blob)


def test_torch_model(tmp):
    """Torch model (fp32 activations) vs the contract's NumPy reference, and
    the peers against each other, on a tiny shape through the files."""
    peers = gb.peers
    s = dict(d=32, f=48, E=8, k=2)
    model = gb.Model(s, 2, 3, "cpu")
    config, weights = gb.write_model(tmp, "m", model, loops=2)
    x = gb.make_inputs(os.path.join(tmp, "x.safetensors"), 11, 32, 5, "cpu")
    cfg = ref.load_config(config)
    res = ref.forward(cfg, ref.check_weights(cfg, ref.read_safetensors(weights)),
                      x.double().numpy())
    h, ids = model.exact(x, 2)
    err = np.abs(h - res.hidden_states).max()
    check("torch fp32 model = NumPy reference", err < 1e-4, f"max err {err:.2e}")
    check("torch routing = NumPy reference",
          all(np.array_equal(np.sort(a, -1), np.sort(b, -1)) for a, b in zip(ids, res.expert_ids)))
    layer = model.layers[0]
    n = peers.rmsnorm(x, layer.norm, gb.EPS).to(torch.bfloat16)
    base = peers.eager_moe(n, layer, 2)
    if peers.has_grouped_mm():
        try:
            g = peers.grouped_mm_moe(n, layer, 2)
            ok, e, _ = peers.compare(g, base)
            check("grouped_mm = eager (CPU)", ok, f"max err {e:.2e}")
        except RuntimeError as e:
            print(f"skip grouped_mm on the CPU: {e}")
    # Triton in the interpreter, fp32 (a subprocess: the variable must be set
    # before triton is imported).
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "import torch, peers, triton_moe\n"
            "torch.manual_seed(0)\n"
            "E, k, d, f = 8, 2, 64, 96\n"
            "L = peers.Layer(torch.ones(d), torch.randn(E, d) / 4, torch.randn(E, 2 * f, d) / 8,"
            " torch.randn(E, d, f) / 10)\n"
            "worst = 0.0\n"
            "for T, cfg in ((1, None), (37, None), (37, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32,"
            " num_warps=4, num_stages=2)), (300, None)):\n"
            "    x = torch.randn(T, d)\n"
            "    a = peers.eager_moe(x, L, k); b = triton_moe.fused_moe(x, L, k, cfg)\n"
            "    worst = max(worst, (a - b).abs().max().item())\n"
            "print(worst)\n") % HERE
    try:
        import triton  # noqa: F401
    except ImportError:
        print("skip triton (not installed)")
        return
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    ok = p.returncode == 0 and float(p.stdout.split()[-1]) < 1e-4
    check("triton fused_moe = eager (interpreter, fp32)", ok,
          p.stdout.strip()[-80:] if p.returncode == 0 else p.stderr.strip()[-400:])


def test_gpu_path_on_cpu(tmp):
    """The non-dry-run code path (timing, budget, speedups, report) with the
    CUDA parts swapped for CPU ones: wall-clock timing of the peers and
    moe-run on the CPU."""
    import time
    real_run, real_time = gb.moe_run, gb.cuda_time

    def cpu_time(fn, reps, warmup=3):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[len(times) // 2], min(times)

    gb.cuda_time = cpu_time
    # On the CPU the host loop is the only form: drop the GPU-only flag.
    # --wgmma and --split-chunk-rows kernels run emulated.
    gb.moe_run = lambda m, w, i, o, device, reps, timeout, extra=(): real_run(
        m, w, i, o, "cpu", reps, timeout,
        [e for e in extra if e != "--resident-loops=false"]
        + (["--gpu-emulation"] if any(e == "--wgmma" or e.startswith("--split-chunk-rows")
                                      for e in extra) else []))
    try:
        args = gb.parse_args(["--shapes", "tiny", "--tokens", "1,16", "--looped-tokens",
                              "1", "--skip-peers", "triton", "--repeat-scale", "0.2",
                              "--out", tmp])
        env = {"machine": "cpu stand-in", "torch": "x", "triton": "y", "torch_device": "cpu",
               "bandwidth_gbs": 100.0, "bandwidth_source": "fake", "peak_tflops": 1.0,
               "wgmma": True}
        notes = []
        clock = gb.Clock(120)
        layer = gb.layer_rows(args, clock, notes, env)
        looped, _ = gb.looped_rows(args, clock, notes, env)
    finally:
        gb.moe_run, gb.cuda_time = real_run, real_time
    ok = all(r["ours"].get("median_ms", 0) > 0 and r["ours"]["pass"] and
             r["ours_wgmma"].get("median_ms", 0) > 0 and r["ours_wgmma"]["pass"] and
             r["mma_over_wgmma"] > 0 and
             (r["T"] == 1 or (r["ours_1row"].get("median_ms", 0) > 0 and
                              r["ours_1row"]["pass"] and r["one_row_over_ours"] > 0)) and
             r["eager"]["median_ms"] > 0 and r["speedup"]["eager"] > 0 for r in layer)
    check("timed path: layer rows", ok and len(layer) == 2,
          json.dumps(gb.plain(layer[0]))[:300])
    check("timed path: looped rows", len(looped) == 1 and all(
        looped[0][v]["pass"] and looped[0][v]["median_ms"] > 0
        for v in ("resident", "host_loop", "unrolled"))
        and looped[0]["eager_over_resident"] > 0,
        json.dumps(gb.plain(looped))[:300])
    text = gb.markdown({"env": env, "commit": "x", "layer": layer, "looped": looped,
                        "notes": notes, "command": "-"})
    check("timed path: report", "| tiny | 16 |" in text and "err" not in text, text[-600:])


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_roofline()
        test_writer(tmp)
        test_args()
        test_source_commit()
        test_report(tmp)
        if torch is not None:
            test_torch_model(tmp)
            if os.path.exists(os.path.join(gb.BIN, "moe-run")):
                test_gpu_path_on_cpu(tmp)
            else:
                print("skip the timed path (no build/bin/moe-run)")
        else:
            print("skip the torch checks (torch not installed)")
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
