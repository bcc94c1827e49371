#!/usr/bin/env python3
"""CPU benchmarks of the optimising passes (issue: the optimising passes).

Measures, side by side in one run on the cpu-small shape of
shared/PERFORMANCE.md (d=512, f=1024, E=8, k=2) at T = 1, 64, 512, with one
kernel thread:
  - fused vs unfused expert groups (one MoE layer),
  - PathMoE block decisions (one hoisted plan per block) vs per-layer routing,
  - a Looped-MoE loop kept resident vs unrolled,
  - exit compaction with 0%, 50% and 90% of tokens exiting after pass 0,
  - the optimised one-layer stack vs a per-expert OpenBLAS sgemm loop
    (moe-cpu-bench, router + experts only).
Times are medians of --repeat runs of moe-run (compile time excluded).
Writes bench/results/cpu-passes-<commit>.{json,md}."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import moe_reference as ref  # noqa: E402
import random_checkpoint  # noqa: E402

BIN = os.path.join(ROOT, "build", "bin")
SHAPE = {"hidden_size": 512, "moe_intermediate_size": 1024, "num_experts": 8,
         "num_experts_per_tok": 2}
TOKENS = (1, 64, 512)
ENV = dict(os.environ, MOERT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def tool(name, *args):
    return subprocess.run([os.path.join(BIN, name), *args], check=True,
                          capture_output=True, text=True, env=ENV).stdout


class Model:
    """A config with random weights, imported, optionally transformed."""

    def __init__(self, workdir, name, **fields):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        cfg = {"model_type": "moe_stack", "num_hidden_layers": 1, **SHAPE,
               **fields}
        self.config = os.path.join(self.dir, "config.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.cfg = ref.load_config(self.config)
        rng = np.random.default_rng(0)
        self.weights = os.path.join(self.dir, "weights.safetensors")
        ref.write_safetensors(self.weights,
                              random_checkpoint.random_weights(self.cfg, rng))
        self.mlir = os.path.join(self.dir, "model.mlir")
        tool("moe-import", self.config, "-o", self.mlir)

    def variant(self, name, *passes):
        """The model after `passes` (moe-opt flags), run at opt-level 0."""
        path = os.path.join(self.dir, name + ".mlir")
        tool("moe-opt", self.mlir, *passes, "-o", path)
        return path

    def time(self, model, inputs, repeat, opt_level="0"):
        out = os.path.join(self.dir, "out.safetensors")
        text = tool("moe-run", model, "--opt-level=" + opt_level,
                    "--weights", self.weights, "--inputs", inputs,
                    "--outputs", out, "--repeat", str(repeat))
        median = float(re.search(r"median ([0-9.]+) ms", text).group(1))
        exits = ref.read_safetensors(out)["exit_loop"]
        return median, np.asarray(getattr(exits, "array", exits))


def inputs(model, tokens, exit_fraction=0.0, seed=1):
    """hidden_states whose first exit_fraction of tokens are scaled so far up
    that one pass barely moves them (relative_l2 << tau): they exit after
    pass 0 and the others do not."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, SHAPE["hidden_size"])).astype(np.float32)
    x[: int(round(exit_fraction * tokens))] *= 1000.0
    path = os.path.join(model.dir, f"inputs-{tokens}-{exit_fraction}.safetensors")
    ref.write_safetensors(path, {"hidden_states": x})
    return path


def repeats(tokens):
    return {1: 101, 64: 31}.get(tokens, 11)


OPTIMIZE = ["--moe-decompose-experts", "--moe-hoist-shared-routers",
            "--moe-fuse-dispatch-gemm"]


def bench_fusion(workdir, rows):
    m = Model(workdir, "fusion")
    unfused = m.variant("unfused", "--moe-decompose-experts",
                        "--moe-hoist-shared-routers")
    fused = m.variant("fused", *OPTIMIZE)
    for t in TOKENS:
        x, r = inputs(m, t), repeats(t)
        tu, _ = m.time(unfused, x, r)
        tf, _ = m.time(fused, x, r)
        rows.append({"bench": "fusion", "tokens": t, "unfused_ms": tu,
                     "fused_ms": tf, "speedup": tu / tf})


def bench_block(workdir, rows):
    common = dict(num_hidden_layers=4, router_share_block=2)
    per_layer = Model(workdir, "per_layer", router_decision="per_layer", **common)
    block = Model(workdir, "block", router_decision="block", **common)
    for t in TOKENS:
        r = repeats(t)
        tp, _ = per_layer.time(per_layer.mlir, inputs(per_layer, t), r, "1")
        tb, _ = block.time(block.mlir, inputs(block, t), r, "1")
        rows.append({"bench": "pathmoe_block", "tokens": t,
                     "per_layer_ms": tp, "block_ms": tb, "speedup": tp / tb})


def bench_residency(workdir, rows):
    m = Model(workdir, "looped", num_hidden_layers=2, num_loops=3)
    resident = m.variant("resident", *OPTIMIZE, "--moe-loop-residency")
    unrolled = m.variant("unrolled", *OPTIMIZE,
                         "--moe-loop-residency=cache-bytes=0")
    for t in TOKENS:
        x, r = inputs(m, t), repeats(t)
        tr, _ = m.time(resident, x, r)
        tu, _ = m.time(unrolled, x, r)
        rows.append({"bench": "loop_residency", "tokens": t,
                     "resident_ms": tr, "unrolled_ms": tu,
                     "unrolled_vs_resident": tr / tu})


def bench_compaction(workdir, rows):
    m = Model(workdir, "exits", num_hidden_layers=2, num_loops=2,
              exit_criterion="relative_l2", exit_threshold=0.1)
    plain = m.variant("plain", *OPTIMIZE, "--moe-loop-residency")
    compact = m.variant("compact", *OPTIMIZE, "--moe-loop-residency",
                        "--moe-exit-compaction")
    for t in (64, 512):
        for fraction in (0.0, 0.5, 0.9):
            x, r = inputs(m, t, fraction), repeats(t)
            tp, exits_p = m.time(plain, x, r)
            tc, exits_c = m.time(compact, x, r)
            assert (exits_p == exits_c).all()
            exited = float((exits_c == 0).mean())
            # Two equal passes: the ideal saving is the exited share of the
            # second pass, exited/2 of the whole run.
            ideal = tp * exited / 2
            rows.append({"bench": "exit_compaction", "tokens": t,
                         "exited_fraction": exited, "no_compaction_ms": tp,
                         "compaction_ms": tc,
                         "ideal_saving_achieved":
                             (tp - tc) / ideal if ideal > 0 else None})


def bench_blas(workdir, rows, fusion_rows):
    out = os.path.join(workdir, "blas.json")
    tool("moe-cpu-bench", "--reps", "21", "--json", out)
    with open(out) as f:
        layer = json.load(f)
    fused = {r["tokens"]: r["fused_ms"] for r in fusion_rows}
    for entry in layer["results"]:
        if entry.get("caches") != "warm":
            continue
        t = entry["T"]
        rows.append({"bench": "stack_vs_openblas", "tokens": t,
                     "compiled_stack_ms": fused[t],
                     "openblas_layer_ms": entry["openblas_loop_ms"],
                     "speedup": entry["openblas_loop_ms"] / fused[t]})


def markdown(rows, machine, commit):
    lines = [f"CPU pass benchmarks, cpu-small (d=512 f=1024 E=8 k=2), "
             f"1 thread, medians; {machine}; commit {commit}", "",
             "At T=1 a layer streams the weights of its k=2 experts "
             "(2 x 3 x 512 x 1024 x 4 B = 12.6 MB in f32) whatever the "
             "implementation, so both sides are bound by memory bandwidth "
             "there. The unfused chain runs with the default plan tile (16): "
             "its grouped GEMMs compute the padding rows of each expert's "
             "segment, which the fused kernel skips (most visible at T=1). "
             "Single-layer timings are warm-cache (the touched expert weights "
             "stay in L3 between runs), as are the OpenBLAS loop's.", ""]
    by_bench = {}
    for row in rows:
        by_bench.setdefault(row["bench"], []).append(row)
    for bench, items in by_bench.items():
        keys = [k for k in items[0] if k != "bench"]
        lines += [f"### {bench}", "", "| " + " | ".join(keys) + " |",
                  "|" + "---|" * len(keys)]
        for item in items:
            cells = [f"{v:.3f}" if isinstance(v, float) else
                     ("n/a" if v is None else str(v)) for v in item.values()]
            lines.append("| " + " | ".join(cells[1:]) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    machine = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True,
                             capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        bench_fusion(workdir, rows)
        bench_block(workdir, rows)
        bench_residency(workdir, rows)
        bench_compaction(workdir, rows)
        bench_blas(workdir, rows, [r for r in rows if r["bench"] == "fusion"])
    base = os.path.join(args.out, f"cpu-passes-{commit}")
    with open(base + ".json", "w") as f:
        json.dump({"machine": machine, "commit": commit, "threads": 1,
                   "shape": SHAPE, "results": rows}, f, indent=1)
    text = markdown(rows, machine, commit)
    text += "\nReproduce: bash bench/run-cpu.sh && /usr/bin/python3 bench/cpu_passes.py\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
