#!/usr/bin/env python3
"""CPU decoder benchmark: prefill and greedy-decode throughput of a Qwen3-MoE
shaped model (d=512, 8 heads / 2 KV heads of 64, 8 experts of 512, top-2,
4 layers, vocab 4096) with random weights, unoptimised vs optimised, one
kernel thread; each also with the GEMMs kept on AVX2 tiles (MOERT_CPU_ISA=avx2,
the same bits), interleaved run by run, which differs on CPUs with AVX-512.
Writes bench/results/cpu-decoder-<commit>.{json,md}."""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import decoder_reference as dec  # noqa: E402
import moe_reference as ref  # noqa: E402

SHAPE = dict(vocab_size=4096, hidden_size=512, moe_intermediate_size=512,
             intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, head_dim=64, num_experts=8,
             num_experts_per_tok=2, max_position_embeddings=1024)
PROMPT, GENERATE, REPEATS = 128, 32, 5


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    machine = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True,
                             capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, MOERT_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        config = dec.tiny_config("qwen3_moe", **SHAPE)
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(config, f)
        m = dec.parse_config(config)
        rng = np.random.default_rng(0)
        ref.write_safetensors(os.path.join(work, "model.safetensors"),
                              dec.random_weights(m, rng))
        ids = rng.integers(0, SHAPE["vocab_size"], size=(1, PROMPT)).astype(np.int32)
        inputs = os.path.join(work, "inputs.safetensors")
        ref.write_safetensors(inputs, {"input_ids": ids})
        isas = {"default": env, "avx2": dict(env, MOERT_CPU_ISA="avx2")}
        for level in ("0", "1"):
            prefill = {isa: [] for isa in isas}
            decode = {isa: [] for isa in isas}
            for _ in range(REPEATS):
                for isa, isa_env in isas.items():
                    text = subprocess.run(
                        [os.path.join(ROOT, "build", "bin", "moe-run"),
                         os.path.join(work, "config.json"), "--opt-level=" + level,
                         "--weights", work, "--inputs", inputs, "--outputs",
                         os.path.join(work, f"out-{isa}.safetensors"),
                         "--generate", str(GENERATE), "--stats"],
                        check=True, capture_output=True, text=True,
                        env=isa_env).stdout
                    rates = re.findall(r"\(([0-9.]+) tokens/s\)", text)
                    prefill[isa].append(float(rates[0]))
                    decode[isa].append(float(rates[1]))
            with open(os.path.join(work, "out-default.safetensors"), "rb") as a, \
                    open(os.path.join(work, "out-avx2.safetensors"), "rb") as b:
                if a.read() != b.read():
                    sys.exit("the AVX2 tiles gave other outputs")
            for isa in isas:
                rows.append({"opt_level": int(level), "gemm_tiles": isa,
                             "prefill_tokens_per_s": float(np.median(prefill[isa])),
                             "decode_tokens_per_s": float(np.median(decode[isa]))})
    base = os.path.join(ROOT, "bench", "results", f"cpu-decoder-{commit}")
    with open(base + ".json", "w") as f:
        json.dump({"machine": machine, "commit": commit, "threads": 1,
                   "shape": SHAPE, "prompt": PROMPT, "generate": GENERATE,
                   "results": rows}, f, indent=1)
    lines = [f"CPU decoder (Qwen3-MoE shape {SHAPE}), prompt {PROMPT}, "
             f"{GENERATE} greedy tokens, 1 thread, median of {REPEATS}; {machine}; "
             f"commit {commit}", "",
             "| opt-level | GEMM tiles | prefill tokens/s | decode tokens/s |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['opt_level']} | {r['gemm_tiles']} | "
                     f"{r['prefill_tokens_per_s']:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} |")
    lines += ["", "GEMM tiles: default is what the CPU supports (AVX-512 where it has "
              "it), avx2 the 8-lane tiles (MOERT_CPU_ISA=avx2); both give the same "
              "output bits (checked)."]
    lines += ["", "Reproduce: /usr/bin/python3 bench/cpu_decoder.py"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
