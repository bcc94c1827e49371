"""Copies a checkpoint directory's config and weights with the weights rounded
to bfloat16 (torch_dtype "bfloat16"), as a bf16 Hugging Face checkpoint is.

  to_bf16.py IN_DIR OUT_DIR"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), *[".."] * 4,
                                "scripts"))
import moe_reference as ref  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
tensors = ref.read_safetensors(os.path.join(src, "model.safetensors"))
ref.write_safetensors(os.path.join(dst, "model.safetensors"),
                      {n: ref.f32_to_bf16_bits(t.array) for n, t in tensors.items()})
with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
config["torch_dtype"] = "bfloat16"
with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
