"""Prints a generated checkpoint's first prompt (token ids) and, on a second
line, its reference continuation as `generated: ...`, the app's format."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), *[".."] * 4,
                                "scripts"))
import moe_reference as ref  # noqa: E402


def values(tensor):
    return [int(v) for v in getattr(tensor, "array", tensor).reshape(-1)]


model = sys.argv[1]
inputs = ref.read_safetensors(os.path.join(model, "inputs.safetensors"))
golden = ref.read_safetensors(os.path.join(model, "golden.safetensors"))
prompt = getattr(inputs["input_ids"], "array", inputs["input_ids"])[0]
generated = getattr(golden["generated"], "array", golden["generated"])[0]
print(" ".join(str(int(v)) for v in prompt))
print("generated: " + " ".join(str(int(v)) for v in generated))
