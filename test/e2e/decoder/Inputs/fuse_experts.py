"""Rewrites a checkpoint's per-expert MLP tensors in the fused layout of newer
Hugging Face checkpoints: <prefix>.experts.gate_up_proj [E, 2f, d] (gate rows,
then up rows) and <prefix>.experts.down_proj [E, d, f].

  fuse_experts.py IN.safetensors OUT.safetensors"""
import collections
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), *[".."] * 4,
                                "scripts"))
import moe_reference as ref  # noqa: E402

PATTERN = re.compile(r"(.*)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")

tensors = {name: t.array for name, t in ref.read_safetensors(sys.argv[1]).items()}
groups = collections.defaultdict(dict)
out = {}
for name, array in tensors.items():
    match = PATTERN.fullmatch(name)
    if not match:
        out[name] = array.astype(np.float32)
        continue
    prefix, expert, proj = match.group(1), int(match.group(2)), match.group(3)
    groups[prefix].setdefault(proj, {})[expert] = array
for prefix, projs in groups.items():
    experts = sorted(projs["gate_proj"])
    out[prefix + ".experts.gate_up_proj"] = np.stack(
        [np.concatenate([projs["gate_proj"][e], projs["up_proj"][e]]) for e in experts]
    ).astype(np.float32)
    out[prefix + ".experts.down_proj"] = np.stack(
        [projs["down_proj"][e] for e in experts]).astype(np.float32)
ref.write_safetensors(sys.argv[2], out)
