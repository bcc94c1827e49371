"""Recomputes moe-run --stats from a run's outputs, independently of the
C++ code, in its output format (without the wall time line).

  run_stats.py CONFIG.json OUTPUTS.safetensors"""
import json
import math
import os
import sys
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), *[".."] * 3,
                                "scripts"))
import moe_reference as ref  # noqa: E402

config = json.load(open(sys.argv[1]))
out = ref.read_safetensors(sys.argv[2])
ids = out["expert_ids"].array            # [K*L, T, k]
exit_loop = out["exit_loop"].array       # [T]
E, L = config["num_experts"], config["num_hidden_layers"]
K = config.get("num_loops", 1)
steps, T, k = ids.shape
print(f"stats: tokens {T}, passes {K}, layers {L}, experts {E}, top_k {k}")
for layer in range(L):
    load = np.zeros(E, dtype=int)
    for p in range(K):
        for e in ids[p * L + layer].reshape(-1):
            if 0 <= e < E:
                load[e] += 1
    print(f"  layer {layer} expert load: " + " ".join(str(n) for n in load))
paths = Counter(tuple(ids[:, t, :].reshape(-1)) for t in range(T))
entropy = -sum(c / T * math.log2(c / T) for c in paths.values())
print(f"  distinct expert paths: {len(paths)} of {T} tokens, "
      f"path entropy {entropy:.3f} bits")
same = pairs = 0
for s in range(1, steps):
    for t in range(T):
        prev, cur = ids[s - 1, t, 0], ids[s, t, 0]
        if prev >= 0 and cur >= 0:
            pairs += 1
            same += prev == cur
print(f"  cross-layer top-1 consistency: {same / pairs if pairs else 0:.3f} "
      f"({same} of {pairs} consecutive steps)")
stops = [int((exit_loop == p).sum()) for p in range(K)]
print("  tokens stopping after each pass: " + " ".join(str(n) for n in stops))
