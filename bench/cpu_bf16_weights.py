#!/usr/bin/env python3
"""CPU benchmark of bf16 weights kept bf16 in memory (the default: expert
weights, embedding table and LM head, read widened by their kernels) against
widened to f32 at load (--cpu-bf16-weights=false), both variants interleaved
in one run, one kernel thread:
- a 4-layer bf16 moe_stack of the cpu-small shape (d=512 f=1024 E=8 k=2,
  48 MiB of bf16 expert weights), T = 1, 64, 512: moe-run's median run time;
- the Qwen3-MoE-shaped decoder of bench/cpu_decoder.py as a bf16
  checkpoint: prefill (128 tokens) and greedy decode (32) tokens/s.
Both variants give the same output bits (checked); peak RSS of each process.
Writes bench/results/cpu-bf16-weights-<commit>.{json,md}.

    /usr/bin/python3 bench/cpu_bf16_weights.py [--rounds N] [--repeat N]
"""
import argparse
import filecmp
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
SHAPE = {"hidden_size": 512, "moe_intermediate_size": 1024, "num_experts": 8,
         "num_experts_per_tok": 2, "num_hidden_layers": 4}
TOKENS = (1, 64, 512)
VARIANTS = (("bf16", []), ("f32", ["--cpu-bf16-weights=false"]))


def run_once(work, variant_args, repeat, out):
    """(median ms, peak RSS KiB) of one moe-run --repeat process."""
    cmd = ["/usr/bin/time", "-f", "maxrss %M",
           os.path.join(ROOT, "build", "bin", "moe-run"),
           os.path.join(work, "config.json"), "--weights",
           os.path.join(work, "weights.safetensors"), "--inputs",
           os.path.join(work, "inputs.safetensors"), "--outputs", out,
           "--repeat", str(repeat)] + variant_args
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, MOERT_NUM_THREADS="1"))
    if p.returncode:
        sys.exit(f"moe-run failed: {p.stderr.strip()}")
    median = float(re.search(r"median ([0-9.]+) ms", p.stdout).group(1))
    rss = int(re.search(r"maxrss ([0-9]+)", p.stderr).group(1))
    return median, rss


def run_decoder(work, variant_args, out):
    """(prefill tokens/s, decode tokens/s, peak RSS KiB) of one run."""
    import cpu_decoder
    cmd = ["/usr/bin/time", "-f", "maxrss %M",
           os.path.join(ROOT, "build", "bin", "moe-run"),
           os.path.join(work, "config.json"), "--weights", work, "--inputs",
           os.path.join(work, "inputs.safetensors"), "--outputs", out,
           "--generate", str(cpu_decoder.GENERATE), "--stats"] + variant_args
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, MOERT_NUM_THREADS="1"))
    if p.returncode:
        sys.exit(f"moe-run failed: {p.stderr.strip()}")
    rates = re.findall(r"\(([0-9.]+) tokens/s\)", p.stdout)
    rss = int(re.search(r"maxrss ([0-9]+)", p.stderr).group(1))
    return float(rates[0]), float(rates[1]), rss


def decoder_rows(work, rounds):
    """The decoder of bench/cpu_decoder.py, as a bf16 checkpoint."""
    import numpy as np
    import cpu_decoder
    import decoder_reference as dec
    import moe_reference as ref
    work = os.path.join(work, "decoder")
    os.makedirs(work)
    config = dec.tiny_config("qwen3_moe", **cpu_decoder.SHAPE)
    config["torch_dtype"] = "bfloat16"
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(0)
    weights = dec.random_weights(dec.parse_config(config), rng)
    ref.write_safetensors(os.path.join(work, "model.safetensors"),
                          {n: ref.f32_to_bf16_bits(np.asarray(a, np.float32))
                           for n, a in weights.items()})
    ids = rng.integers(0, cpu_decoder.SHAPE["vocab_size"],
                       size=(1, cpu_decoder.PROMPT)).astype(np.int32)
    ref.write_safetensors(os.path.join(work, "inputs.safetensors"),
                          {"input_ids": ids})
    got = {name: ([], [], []) for name, _ in VARIANTS}
    for _ in range(rounds):
        for name, variant_args in VARIANTS:
            for sink, value in zip(got[name], run_decoder(
                    work, variant_args, os.path.join(work, name + ".safetensors"))):
                sink.append(value)
    same = filecmp.cmp(os.path.join(work, "bf16.safetensors"),
                       os.path.join(work, "f32.safetensors"), shallow=False)
    row = {"prompt": cpu_decoder.PROMPT, "generate": cpu_decoder.GENERATE,
           "same_output_bits": same}
    for name, _ in VARIANTS:
        prefill, decode, rss = got[name]
        row[name] = {"prefill_tokens_per_s": statistics.median(prefill),
                     "decode_tokens_per_s": statistics.median(decode),
                     "peak_rss_mib": max(rss) / 1024}
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved rounds per T (median over them)")
    ap.add_argument("--repeat", type=int, default=9,
                    help="moe-run --repeat per round")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    machine = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True,
                             capture_output=True, text=True).stdout.strip()
    cores = os.cpu_count()
    config = dict(model_type="moe_stack", hidden_act="silu",
                  scoring_func="softmax", norm_topk_prob=True,
                  torch_dtype="bfloat16", **SHAPE)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(config, f)
        for tokens in TOKENS:
            subprocess.run([sys.executable,
                            os.path.join(ROOT, "scripts", "random_checkpoint.py"),
                            os.path.join(work, "config.json"), work,
                            "--tokens", str(tokens)], check=True,
                           capture_output=True)
            times = {name: [] for name, _ in VARIANTS}
            rss = {name: [] for name, _ in VARIANTS}
            for _ in range(args.rounds):
                for name, variant_args in VARIANTS:
                    ms, kib = run_once(work, variant_args, args.repeat,
                                       os.path.join(work, name + ".safetensors"))
                    times[name].append(ms)
                    rss[name].append(kib)
            same = filecmp.cmp(os.path.join(work, "bf16.safetensors"),
                               os.path.join(work, "f32.safetensors"),
                               shallow=False)
            row = {"tokens": tokens, "same_output_bits": same}
            for name, _ in VARIANTS:
                row[name] = {"median_ms": statistics.median(times[name]),
                             "peak_rss_mib": max(rss[name]) / 1024}
            row["speedup"] = row["f32"]["median_ms"] / row["bf16"]["median_ms"]
            rows.append(row)
            print(f"T={tokens}: bf16 {row['bf16']['median_ms']:.3f} ms, "
                  f"f32 {row['f32']['median_ms']:.3f} ms, same bits: {same}",
                  file=sys.stderr)
        decoder = decoder_rows(work, args.rounds)
        print(f"decoder: bf16 {decoder['bf16']['decode_tokens_per_s']:.1f}, "
              f"f32 {decoder['f32']['decode_tokens_per_s']:.1f} decode tokens/s",
              file=sys.stderr)
    base = os.path.join(ROOT, "bench", "results", f"cpu-bf16-weights-{commit}")
    with open(base + ".json", "w") as f:
        json.dump({"machine": machine, "cores": cores, "commit": commit,
                   "threads": 1, "shape": SHAPE, "rounds": args.rounds,
                   "repeat": args.repeat, "results": rows,
                   "decoder_shape": __import__("cpu_decoder").SHAPE,
                   "decoder": decoder}, f, indent=1)
    lines = [f"CPU MoE stack, bf16 checkpoint {SHAPE}, 1 kernel thread, median "
             f"of {args.rounds} interleaved rounds of moe-run --repeat "
             f"{args.repeat}; {machine}, {cores} cores; commit {commit}", "",
             "| T | bf16 kept (ms) | widened to f32 (ms) | speedup | peak RSS "
             "bf16 / f32 (MiB) | same bits |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['bf16']['median_ms']:.3f} | "
                     f"{r['f32']['median_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['bf16']['peak_rss_mib']:.0f} / "
                     f"{r['f32']['peak_rss_mib']:.0f} | "
                     f"{'yes' if r['same_output_bits'] else 'NO'} |")
    import cpu_decoder
    d = decoder
    lines += ["", "Peak RSS includes the memory-mapped weight file (f32 here, "
              "100 MB, as scripts/random_checkpoint.py writes it; the runtime "
              "rounds it to the declared bf16).", "",
              f"Decoder (Qwen3-MoE shape {cpu_decoder.SHAPE}), bf16 checkpoint, "
              f"prompt {d['prompt']}, {d['generate']} greedy tokens:", "",
              "| weights | prefill tokens/s | decode tokens/s | peak RSS (MiB) |",
              "|---|---|---|---|"]
    for name, label in (("bf16", "bf16 kept"), ("f32", "widened to f32")):
        lines.append(f"| {label} | {d[name]['prefill_tokens_per_s']:.1f} | "
                     f"{d[name]['decode_tokens_per_s']:.1f} | "
                     f"{d[name]['peak_rss_mib']:.0f} |")
    lines += ["", f"Same output bits: {'yes' if d['same_output_bits'] else 'NO'}.",
              "", "Reproduce: /usr/bin/python3 bench/cpu_bf16_weights.py"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
