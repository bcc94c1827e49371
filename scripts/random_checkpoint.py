#!/usr/bin/env python3
"""Writes random weights and inputs for a moe_stack config.json.

  random_checkpoint.py CONFIG.json OUTDIR [--tokens T] [--seed S]

OUTDIR gets weights.safetensors (every tensor the model contract requires,
scaled so activations stay O(1)) and inputs.safetensors (hidden_states F32
[T, d]). The bundled example uses it so that no weight file is checked in.

A LoopLM config (model_type loop-lm or loop-moe) gets a checkpoint directory
instead: config.json, model.safetensors with the checkpoints' tensor names,
inputs.safetensors (input_ids I32 [2, T]) and golden.safetensors (prefill
logits, 4 greedy tokens, exit_loop) from scripts/looplm_reference.py."""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_reference as ref  # noqa: E402


def random_weights(cfg, rng):
    weights = {}
    for name, shape in ref.expected_weight_shapes(cfg).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[-1])
            if ".down_proj." in name:
                w *= 0.5  # small residual updates, so loop exits can fire
        weights[name] = w.astype(np.float32)
    if cfg["torch_dtype"] == "bfloat16":
        weights = {k: ref.f32_to_bf16_bits(v) for k, v in weights.items()}
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("outdir")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.config) as f:
        model_type = json.load(f).get("model_type")
    if model_type in ("loop-lm", "loop-moe"):
        import looplm_reference
        with open(args.config) as f:
            looplm_reference.gen_case(json.load(f), args.outdir, args.seed,
                                      seq=min(args.tokens, 5))
        return
    cfg = ref.load_config(args.config)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.outdir, exist_ok=True)
    ref.write_safetensors(os.path.join(args.outdir, "weights.safetensors"),
                          random_weights(cfg, rng))
    x = rng.standard_normal((args.tokens, cfg["hidden_size"]))
    ref.write_safetensors(os.path.join(args.outdir, "inputs.safetensors"),
                          {"hidden_states": x.astype(np.float32)})


if __name__ == "__main__":
    main()
