#!/usr/bin/env python3
"""Independent reference implementation of the `moe_stack` model contract.

Implements section 1 of MODEL_CONTRACT.md ("MoE stack models") with python3 and
numpy only, and generates test cases (config + weights + inputs + golden
outputs) for the compiler backends.  Subcommands:

  run      evaluate a model: config.json + weights + inputs -> outputs
  gen      write a named test case (config, weights, inputs, golden)
  compare  check an actual output file against a golden one, with the
           contract tolerances

The math is done in float64 (the weights and inputs are float32 or bfloat16
values) and the outputs are cast to float32, so the golden values are closer to
the exact answer than any fp32 backend; the contract tolerances absorb the
difference.
"""

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

# A top-k or exit decision whose margin is below this is a near-tie: backends
# may legitimately decide it either way, so `compare` exempts the token.
NEAR_TIE_GAP = 1e-5

OUTPUT_NAMES = ("hidden_states", "exit_loop", "expert_ids", "expert_gates")


class ContractError(Exception):
    """A file or config that does not follow the model contract."""


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

# In memory a BF16 tensor is held as its raw uint16 bit patterns.
_FILE_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2"), "I32": np.dtype("<i4")}
_NUMPY_TO_FILE = {np.dtype(np.float32): "F32", np.dtype(np.uint16): "BF16",
                  np.dtype(np.int32): "I32"}


@dataclass
class Tensor:
    """A tensor read from a file: its file dtype and its values.

    BF16 values are decoded to float32, so `array` is float32 or int32."""
    dtype: str
    array: np.ndarray


def f32_to_bf16_bits(x):
    """Round float32 values to bfloat16 (nearest, ties to even); uint16 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # The carry of the rounding must not turn a NaN into an infinity.
    rounded = np.where(np.isnan(x), 0x7FC0, rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits):
    """bfloat16 is the upper half of a float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, metadata=None):
    """Write `tensors` (name -> ndarray) in sorted name order.

    float32 arrays are stored as F32, int32 as I32 and uint16 as BF16 bits."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype not in _NUMPY_TO_FILE:
            raise ContractError(f"tensor '{name}': cannot store numpy dtype {array.dtype}")
        dtype = _NUMPY_TO_FILE[array.dtype]
        data = np.ascontiguousarray(array, dtype=_FILE_DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keeps the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)


def read_safetensors(path):
    """Read a safetensors file into name -> Tensor (metadata is dropped)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ContractError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ContractError(f"{path}: header length {n} exceeds the file size")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContractError(f"{path}: bad safetensors header: {e}") from None
    data = memoryview(blob)[8 + n:]
    return {name: _decode_tensor(path, name, info, data)
            for name, info in header.items() if name != "__metadata__"}


def _int_list(value):
    return isinstance(value, list) and all(has_type(v, int) and v >= 0 for v in value)


def _decode_tensor(path, name, info, data):
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _FILE_DTYPES:
        raise ContractError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
    if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise ContractError(f"{path}: tensor '{name}' has a malformed shape or data_offsets")
    np_dtype, (begin, end) = _FILE_DTYPES[dtype], offsets
    if not (0 <= begin <= end <= len(data)) or end - begin != math.prod(shape) * np_dtype.itemsize:
        raise ContractError(f"{path}: tensor '{name}' has bad data_offsets {offsets}")
    array = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(shape)
    if dtype == "BF16":
        return Tensor(dtype, bf16_bits_to_f32(array))
    return Tensor(dtype, array.astype(np_dtype.newbyteorder("=")))


# ---------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------

REQUIRED_FIELDS = {"model_type": str, "hidden_size": int, "num_hidden_layers": int,
                   "num_experts": int, "num_experts_per_tok": int,
                   "moe_intermediate_size": int}

OPTIONAL_FIELDS = {  # name -> (type, default)
    "hidden_act": (str, "silu"),
    "scoring_func": (str, "softmax"),
    "norm_topk_prob": (bool, False),
    "routed_scaling_factor": (float, 1.0),
    "rms_norm_eps": (float, 1e-6),
    "router_share_block": (int, 1),
    "router_decision": (str, "per_layer"),
    "num_loops": (int, 1),
    "exit_criterion": (str, "none"),
    "exit_threshold": (float, 0.0),
    "exit_min_loops": (int, 1),
    "torch_dtype": (str, "float32"),
}

ENUM_FIELDS = {"model_type": ("moe_stack",), "hidden_act": ("silu", "gelu"),
               "scoring_func": ("softmax", "sigmoid"),
               "router_decision": ("per_layer", "block"),
               "exit_criterion": ("none", "cosine", "relative_l2"),
               "torch_dtype": ("float32", "bfloat16")}

MIN_VALUES = {"hidden_size": 1, "num_hidden_layers": 1, "num_experts": 1,
              "num_experts_per_tok": 1, "moe_intermediate_size": 1,
              "router_share_block": 1, "num_loops": 1, "exit_min_loops": 0,
              "rms_norm_eps": 0.0}


def has_type(value, kind):
    """JSON type check that, like Python, keeps bools apart from numbers."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def parse_config(raw):
    """Validate a config dict and return a copy with the defaults applied."""
    if not isinstance(raw, dict):
        raise ContractError("config: the top level must be a JSON object")
    cfg = {}
    for name, kind in REQUIRED_FIELDS.items():
        if name not in raw:
            raise ContractError(f"config: missing required field '{name}'")
        cfg[name] = raw[name]
    for name, (kind, default) in OPTIONAL_FIELDS.items():
        cfg[name] = raw.get(name, default)
    types = {**REQUIRED_FIELDS, **{n: k for n, (k, _) in OPTIONAL_FIELDS.items()}}
    for name, kind in types.items():
        if not has_type(cfg[name], kind):
            raise ContractError(f"config: field '{name}' must be of type {kind.__name__}, "
                                f"got {cfg[name]!r}")
    for name in sorted(set(raw) - set(types)):
        print(f"note: config field '{name}' is not part of the contract; ignored",
              file=sys.stderr)
    _check_values(cfg)
    return cfg


def _check_values(cfg):
    for name, allowed in ENUM_FIELDS.items():
        if cfg[name] not in allowed:
            raise ContractError(f"config: field '{name}' must be one of {list(allowed)}, "
                                f"got {cfg[name]!r}")
    for name, low in MIN_VALUES.items():
        if cfg[name] < low:
            raise ContractError(f"config: field '{name}' must be >= {low}, got {cfg[name]}")
    if cfg["num_experts_per_tok"] > cfg["num_experts"]:
        raise ContractError("config: field 'num_experts_per_tok' must be <= num_experts "
                            f"({cfg['num_experts_per_tok']} > {cfg['num_experts']})")


def load_config(path):
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ContractError(f"{path}: not valid JSON: {e}") from None
    return parse_config(raw)


# ---------------------------------------------------------------------------
# weights and inputs
# ---------------------------------------------------------------------------

def router_head(cfg, layer):
    """The layer whose router `layer` uses: the head of its PathMoE block."""
    block = cfg["router_share_block"]
    return block * (layer // block)


def expected_weight_shapes(cfg):
    """name -> shape of every tensor the contract requires, and no other."""
    d, f = cfg["hidden_size"], cfg["moe_intermediate_size"]
    shapes = {"model.norm.weight": (d,)}
    for layer in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (d,)
        if router_head(cfg, layer) == layer:
            shapes[f"{prefix}.mlp.gate.weight"] = (cfg["num_experts"], d)
        for e in range(cfg["num_experts"]):
            shapes[f"{prefix}.mlp.experts.{e}.gate_proj.weight"] = (f, d)
            shapes[f"{prefix}.mlp.experts.{e}.up_proj.weight"] = (f, d)
            shapes[f"{prefix}.mlp.experts.{e}.down_proj.weight"] = (d, f)
    return shapes


def check_weights(cfg, tensors):
    """Check names, shapes and dtypes; return name -> float64 array."""
    expected = expected_weight_shapes(cfg)
    dtype = {"float32": "F32", "bfloat16": "BF16"}[cfg["torch_dtype"]]
    for name in sorted(expected):
        if name not in tensors:
            raise ContractError(f"weights: missing tensor '{name}'")
    for name in sorted(tensors):
        if name not in expected:
            raise ContractError(f"weights: unexpected tensor '{name}'")
        if tuple(tensors[name].array.shape) != expected[name]:
            raise ContractError(f"weights: tensor '{name}' has shape "
                                f"{list(tensors[name].array.shape)}, expected {list(expected[name])}")
        if tensors[name].dtype != dtype:
            raise ContractError(f"weights: tensor '{name}' has dtype {tensors[name].dtype}, "
                                f"expected {dtype} (torch_dtype {cfg['torch_dtype']})")
    return {name: t.array.astype(np.float64) for name, t in tensors.items()}


def check_inputs(cfg, tensors):
    """Return the input `hidden_states` [T, d] as float64."""
    if "hidden_states" not in tensors:
        raise ContractError("inputs: missing tensor 'hidden_states'")
    t = tensors["hidden_states"]
    if t.dtype != "F32" or t.array.ndim != 2 or t.array.shape[1] != cfg["hidden_size"]:
        raise ContractError(f"inputs: tensor 'hidden_states' must be F32 [T, "
                            f"{cfg['hidden_size']}], got {t.dtype} {list(t.array.shape)}")
    return t.array.astype(np.float64)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def silu(x):
    return x * sigmoid(x)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


ACTIVATIONS = {"silu": silu, "gelu": gelu_tanh}


def route(n, router_w, cfg):
    """Top-k routing of the normed states n [T, d].

    Returns ids [T, k], gates [T, k] and, per token, the smallest gap between
    consecutive sorted scores among the k+1 largest.  That covers the k-th vs
    (k+1)-th gap (which experts) and the gaps inside the top k (the order of
    `expert_ids`, which is compared exactly)."""
    k = cfg["num_experts_per_tok"]
    logits = n @ router_w.T
    p = softmax(logits) if cfg["scoring_func"] == "softmax" else sigmoid(logits)
    order = np.argsort(-p, axis=-1, kind="stable")  # stable: ties go to the lower index
    ids = order[:, :k]
    g = np.take_along_axis(p, ids, axis=-1)
    if cfg["norm_topk_prob"]:
        g = g / np.sum(g, axis=-1, keepdims=True)
    g = g * cfg["routed_scaling_factor"]
    top = np.take_along_axis(p, order[:, :k + 1], axis=-1)
    gap = np.min(top[:, :-1] - top[:, 1:], axis=-1, initial=np.inf)
    return ids, g, gap


def expert(weights, layer, e, n, act):
    prefix = f"model.layers.{layer}.mlp.experts.{e}"
    gate = n @ weights[f"{prefix}.gate_proj.weight"].T
    up = n @ weights[f"{prefix}.up_proj.weight"].T
    return (act(gate) * up) @ weights[f"{prefix}.down_proj.weight"].T


def mix_experts(weights, layer, n, ids, gates, act):
    """sum_j gates_j * expert_{ids_j}(n), each expert run on its tokens only."""
    out = np.zeros_like(n)
    for e in np.unique(ids):
        rows, slots = np.nonzero(ids == e)
        out[rows] += gates[rows, slots, None] * expert(weights, layer, e, n[rows], act)
    return out


def exit_values(h, h_prev, criterion):
    """Per token: cosine similarity or relative L2 change of one loop pass."""
    if criterion == "cosine":
        norms = np.linalg.norm(h, axis=-1) * np.linalg.norm(h_prev, axis=-1)
        return np.sum(h * h_prev, axis=-1) / norms
    return np.linalg.norm(h - h_prev, axis=-1) / np.linalg.norm(h, axis=-1)


def exit_satisfied(values, tau, criterion):
    return values >= tau if criterion == "cosine" else values <= tau


def tested_passes(cfg):
    """Loop passes after which the exit criterion is evaluated."""
    if cfg["exit_criterion"] == "none":
        return []
    return [i for i in range(cfg["num_loops"] - 1) if i + 1 >= cfg["exit_min_loops"]]


@dataclass
class Result:
    hidden_states: np.ndarray        # [T, d] after the final norm
    exit_loop: np.ndarray            # [T]
    expert_ids: np.ndarray           # [K*L, T, k]
    expert_gates: np.ndarray         # [K*L, T, k]
    decision_gap: np.ndarray         # [T] smallest top-k score gap over all routing
    exit_gap: np.ndarray             # [T] smallest |exit value - tau| over tested passes
    exit_values: np.ndarray = field(repr=False)  # [K, T] exit value per pass, NaN if untested

    @property
    def near_tie(self):
        # `not >=` rather than `<`: a NaN score gives no defined decision either.
        return ~(self.decision_gap >= NEAR_TIE_GAP) | ~(self.exit_gap >= NEAR_TIE_GAP)


def forward(cfg, weights, x):
    """Run the model on x [T, d] (float64) following the contract pseudo-code."""
    T = x.shape[0]
    L, K, k = cfg["num_hidden_layers"], cfg["num_loops"], cfg["num_experts_per_tok"]
    res = Result(hidden_states=None, exit_loop=np.full(T, K - 1, dtype=np.int32),
                 expert_ids=np.full((K * L, T, k), -1, dtype=np.int32),
                 expert_gates=np.zeros((K * L, T, k)),
                 decision_gap=np.full(T, np.inf), exit_gap=np.full(T, np.inf),
                 exit_values=np.full((K, T), np.nan))
    h, active = x.copy(), np.ones(T, dtype=bool)
    with np.errstate(all="ignore"):  # NaN/Inf inputs propagate instead of failing
        for i in range(K):
            h_prev = h.copy()
            rows = np.nonzero(active)[0]
            h[rows] = _loop_pass(cfg, weights, h[rows], i, rows, res)
            if i in tested_passes(cfg):
                _test_exit(cfg, h[rows], h_prev[rows], i, rows, active, res)
        res.hidden_states = rmsnorm(h, weights["model.norm.weight"], cfg["rms_norm_eps"])
    return res


def _loop_pass(cfg, weights, h, i, rows, res):
    """Apply the L layers once to the active tokens h (their indices: rows)."""
    L, act = cfg["num_hidden_layers"], ACTIVATIONS[cfg["hidden_act"]]
    for layer in range(L):
        n = rmsnorm(h, weights[f"model.layers.{layer}.post_attention_layernorm.weight"],
                    cfg["rms_norm_eps"])
        head = router_head(cfg, layer)
        if cfg["router_decision"] == "per_layer" or head == layer:
            ids, gates, gap = route(n, weights[f"model.layers.{head}.mlp.gate.weight"], cfg)
            res.decision_gap[rows] = np.minimum(res.decision_gap[rows], gap)  # NaN sticks
        # with "block", the other layers reuse the head's ids and gates of this pass
        h = h + mix_experts(weights, layer, n, ids, gates, act)
        res.expert_ids[i * L + layer, rows] = ids
        res.expert_gates[i * L + layer, rows] = gates
    return h


def _test_exit(cfg, h, h_prev, i, rows, active, res):
    """Evaluate the exit criterion after pass i and retire the exiting tokens."""
    criterion, tau = cfg["exit_criterion"], cfg["exit_threshold"]
    values = exit_values(h, h_prev, criterion)
    res.exit_values[i, rows] = values
    res.exit_gap[rows] = np.minimum(res.exit_gap[rows], np.abs(values - tau))
    leaving = rows[exit_satisfied(values, tau, criterion)]
    res.exit_loop[leaving] = i
    active[leaving] = False


def output_tensors(res):
    return {"hidden_states": res.hidden_states.astype(np.float32),
            "exit_loop": res.exit_loop.astype(np.int32),
            "expert_ids": res.expert_ids.astype(np.int32),
            "expert_gates": res.expert_gates.astype(np.float32),
            "near_tie": res.near_tie.astype(np.int32)}


def run_files(config_path, weights_path, inputs_path, outputs_path):
    cfg = load_config(config_path)
    weights = check_weights(cfg, read_safetensors(weights_path))
    x = check_inputs(cfg, read_safetensors(inputs_path))
    res = forward(cfg, weights, x)
    write_safetensors(outputs_path, output_tensors(res), {"format": "pt"})
    return res


# ---------------------------------------------------------------------------
# test case generation
# ---------------------------------------------------------------------------

@dataclass
class Case:
    config: dict                 # contract fields beyond the defaults
    tokens: int
    down_scale: float = 1.0      # < 1 makes each pass a small change (spread exit values)
    margin: float = 1e-3         # decision margins a generated case must keep
    same_tokens: bool = False    # every token the same row: the busiest expert gets them all
    first_attempt: int = 0       # the draw to start from (earlier ones are known to miss
                                 # the margins: each costs a forward of the case)


def _dims(d, f, E, k, L):
    return {"hidden_size": d, "moe_intermediate_size": f, "num_experts": E,
            "num_experts_per_tok": k, "num_hidden_layers": L}


CASES = {
    "independent": Case(_dims(16, 32, 4, 2, 2), tokens=7),
    "pathmoe_per_layer": Case({**_dims(24, 32, 6, 2, 4), "router_share_block": 2,
                               "router_decision": "per_layer"}, tokens=9),
    "pathmoe_block": Case({**_dims(24, 32, 6, 2, 4), "router_share_block": 2,
                           "router_decision": "block"}, tokens=9),
    "sigmoid": Case({**_dims(16, 24, 8, 2, 2), "scoring_func": "sigmoid",
                     "norm_topk_prob": True}, tokens=8),
    "normalize_scaled": Case({**_dims(16, 24, 6, 3, 2), "norm_topk_prob": True,
                              "routed_scaling_factor": 2.5}, tokens=6),
    "gelu": Case({**_dims(32, 48, 4, 2, 3), "hidden_act": "gelu"}, tokens=5),
    "k1": Case(_dims(16, 24, 4, 1, 2), tokens=10),
    # Sizes that are no multiple of 4: the GPU's decode form loads single
    # elements instead of 16-byte chunks.
    "odd_dims": Case(_dims(18, 30, 4, 2, 2), tokens=5),
    "kE": Case(_dims(16, 24, 4, 4, 2), tokens=5),
    "t1": Case(_dims(32, 48, 8, 2, 3), tokens=1),
    "looped_exit_cosine": Case({**_dims(16, 32, 4, 2, 2), "num_loops": 3,
                                "exit_criterion": "cosine"}, tokens=13, down_scale=0.6),
    "looped_exit_l2": Case({**_dims(16, 32, 4, 2, 2), "num_loops": 3,
                            "exit_criterion": "relative_l2"}, tokens=13, down_scale=0.6),
    "exit_min_loops": Case({**_dims(16, 32, 4, 2, 2), "num_loops": 3, "exit_min_loops": 2,
                            "exit_criterion": "relative_l2"}, tokens=12, down_scale=0.6),
    # bf16 backends route with bf16 activations: keep the decisions far from ties.
    "bf16": Case({**_dims(16, 32, 4, 2, 2), "torch_dtype": "bfloat16"}, tokens=6,
                 margin=2e-2),
    # Enough routed rows (320) for the GPU's tensor-core form of the expert
    # GEMMs (bf16 operands): the decode-sized cases stay on the split form.
    "bf16_prefill": Case({**_dims(32, 64, 4, 2, 2), "torch_dtype": "bfloat16"},
                         tokens=160, margin=1e-3),
    # Shapes that tile unevenly: gate/up in warp tiles of 8 columns (f = 40),
    # down of 16 columns (d = 48) but f not a whole number of k-steps, so
    # down takes a thread per output.
    "bf16_odd_tiles": Case({**_dims(48, 40, 4, 2, 2), "torch_dtype": "bfloat16"},
                           tokens=160),
    # A resident loop on the GPU whose body has the tensor-core forms: 320
    # routed rows in the first pass, fewer after each exit test.
    "looped_bf16_prefill": Case({**_dims(32, 64, 4, 2, 2), "torch_dtype": "bfloat16",
                                 "num_loops": 3, "exit_criterion": "relative_l2"},
                                tokens=160, down_scale=0.6, margin=1e-3),
    # Shapes that divide into the Hopper warpgroup tiles (--wgmma: 64 x 64
    # tiles, reduction slices of 64): six column tiles and six slices per
    # GEMM, 400 routed rows (past the cost model's hand-over from mma.sync,
    # 336 rows for this shape), about 100 per expert (partial last tiles).
    "bf16_warpgroups": Case({**_dims(384, 384, 4, 2, 2), "torch_dtype": "bfloat16"},
                            tokens=200, margin=1e-3, first_attempt=192),
    # The same with skewed routing: two experts of 250 rows each (three full
    # row tiles and a partial one), the others none.
    "skewed_warpgroups": Case({**_dims(384, 384, 8, 2, 2), "torch_dtype": "bfloat16"},
                              tokens=250, same_tokens=True, margin=4e-3),
    # Wide warpgroup tiles (64 x 128): the down GEMM (512 columns) gets them
    # for its 600 routed rows, past the cost model's hand-over from mma.sync
    # (576 rows for this shape), about 150 per expert (partial last tiles);
    # gate/up (two matrices) would keep 64-column tiles, and keeps mma.sync.
    "bf16_wide_warpgroups": Case({**_dims(512, 128, 4, 2, 2), "torch_dtype": "bfloat16"},
                                 tokens=300, margin=2e-4),
    "looped_pathmoe_block": Case({**_dims(16, 24, 4, 2, 2), "num_loops": 2,
                                  "router_share_block": 2, "router_decision": "block"},
                                 tokens=7),
    # Skewed routing: every token picks the same experts (one expert gets all
    # 64 tokens, the others none), the worst case for plans and grouped GEMMs.
    "skewed": Case(_dims(32, 48, 8, 2, 2), tokens=64, same_tokens=True),
    # The same on the GPU's tensor-core form: two segments of 10 row tiles
    # each, the others empty.
    "skewed_bf16": Case({**_dims(32, 64, 8, 2, 2), "torch_dtype": "bfloat16"},
                        tokens=160, same_tokens=True, margin=4e-3),
}

MAX_ATTEMPTS = 200
MIN_EXIT_GROUP = 2  # tokens per exit pass (and never-exiting) in the looped cases


def random_weights(cfg, rng, down_scale):
    """float32 weights whose activations stay O(1)."""
    d, f = cfg["hidden_size"], cfg["moe_intermediate_size"]
    std = {"gate": 2.0 / math.sqrt(d), "gate_proj": 1.0 / math.sqrt(d),
           "up_proj": 1.0 / math.sqrt(d), "down_proj": down_scale / math.sqrt(f)}
    weights = {}
    for name, shape in expected_weight_shapes(cfg).items():
        if len(shape) == 1:  # norm weights
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = std[name.split(".")[-2]] * rng.standard_normal(shape)
        weights[name] = value.astype(np.float32)
    return weights


def stored_weights(cfg, weights):
    """The weights as written to the file (bf16 bits when torch_dtype says so)."""
    if cfg["torch_dtype"] == "bfloat16":
        return {name: f32_to_bf16_bits(w) for name, w in weights.items()}
    return weights


def file_values(stored):
    """float64 values the reference computes with, from the stored arrays."""
    return {name: (bf16_bits_to_f32(w) if w.dtype == np.uint16 else w).astype(np.float64)
            for name, w in stored.items()}


def choose_threshold(cfg, values, margin):
    """Pick tau so that MIN_EXIT_GROUP tokens exit at every possible pass (and
    as many never exit), or return None.

    Tokens are independent and an exit only freezes a token, so the exit values
    of a run in which nobody exits give every token's exit pass for any tau.
    Candidates are midpoints between the sorted values; the best one maximises
    the smallest outcome group, then its distance to the nearest value."""
    passes = tested_passes(cfg)
    tested = values[passes]
    finite = np.unique(tested[np.isfinite(tested)])
    best, best_key = None, None
    for tau in (finite[:-1] + finite[1:]) / 2:
        tau = float(f"{tau:.6g}")
        gap = np.min(np.abs(tested - tau))
        outcome = np.full(values.shape[1], cfg["num_loops"] - 1)
        for i in reversed(passes):  # the earliest satisfied pass wins
            outcome[exit_satisfied(values[i], tau, cfg["exit_criterion"])] = i
        smallest = min(np.sum(outcome == i) for i in passes + [cfg["num_loops"] - 1])
        key = (smallest, gap)
        if gap >= margin and smallest >= MIN_EXIT_GROUP and (best_key is None or key > best_key):
            best, best_key = tau, key
    return best


def _never_exit_threshold(criterion):
    return math.inf if criterion == "cosine" else -math.inf


def try_case(case, rng):
    """One random draw of a case: (config, stored weights, inputs) or None."""
    cfg = parse_config({"model_type": "moe_stack", **case.config})
    stored = stored_weights(cfg, random_weights(cfg, rng, case.down_scale))
    weights = file_values(stored)
    x = rng.standard_normal((case.tokens, cfg["hidden_size"])).astype(np.float32)
    if case.same_tokens:
        x[:] = x[0]
    config = {"model_type": "moe_stack", **case.config}
    if tested_passes(cfg):
        dry = dict(cfg, exit_threshold=_never_exit_threshold(cfg["exit_criterion"]))
        tau = choose_threshold(cfg, forward(dry, weights, x.astype(np.float64)).exit_values,
                               case.margin)
        if tau is None:
            return None
        config["exit_threshold"] = cfg["exit_threshold"] = tau
    res = forward(cfg, weights, x.astype(np.float64))
    if np.min(res.decision_gap) < case.margin or np.min(res.exit_gap) < case.margin:
        return None
    return config, stored, x


def generate_case(name, out_dir, seed):
    """Write config.json, weights, inputs and golden for case `name` into out_dir."""
    case = CASES[name]
    for attempt in range(case.first_attempt, case.first_attempt + MAX_ATTEMPTS):
        drawn = try_case(case, np.random.default_rng([seed, attempt]))
        if drawn is not None:
            break
    else:
        raise ContractError(f"case '{name}': no draw met the margins in {MAX_ATTEMPTS} tries")
    config, stored, x = drawn
    os.makedirs(out_dir, exist_ok=True)
    paths = {part: os.path.join(out_dir, part) for part in
             ("config.json", "weights.safetensors", "inputs.safetensors", "golden.safetensors")}
    with open(paths["config.json"], "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(paths["weights.safetensors"], stored, {"format": "pt"})
    write_safetensors(paths["inputs.safetensors"], {"hidden_states": x})
    # The golden comes from the written files, exactly as `run` would compute it.
    return run_files(paths["config.json"], paths["weights.safetensors"],
                     paths["inputs.safetensors"], paths["golden.safetensors"])


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

OUTPUT_DTYPES = {"hidden_states": "F32", "exit_loop": "I32", "expert_ids": "I32",
                 "expert_gates": "F32"}
TOKEN_AXIS = {"hidden_states": 0, "exit_loop": 0, "expert_ids": 1, "expert_gates": 1}


def _tensor_problem(name, golden, actual):
    """Why `name` cannot be compared element by element, or None."""
    for label, tensors in (("golden", golden), ("actual", actual)):
        if name not in tensors:
            return f"tensor '{name}' is missing from the {label} file"
        if tensors[name].dtype != OUTPUT_DTYPES[name]:
            return (f"tensor '{name}' in the {label} file has dtype {tensors[name].dtype}, "
                    f"expected {OUTPUT_DTYPES[name]}")
    if golden[name].array.shape != actual[name].array.shape:
        return (f"tensor '{name}' has shape {list(actual[name].array.shape)}, "
                f"expected {list(golden[name].array.shape)}")
    return None


def _violations(name, ref, out, tol):
    """Boolean mask of the elements outside tolerance, and the abs errors."""
    if OUTPUT_DTYPES[name] == "I32":
        return out != ref, np.abs(out.astype(np.int64) - ref.astype(np.int64)).astype(float)
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(out - ref)
        ok = (err <= tol + tol * np.abs(ref)) | (out == ref) | (np.isnan(out) & np.isnan(ref))
    return ~ok, err


def _token_mask(exempt, ref, axis):
    """Broadcast the per-token mask `exempt` (None: no token) to ref's shape."""
    if exempt is None:
        return np.zeros(ref.shape, dtype=bool)
    if len(exempt) != ref.shape[axis]:
        raise ContractError(f"golden near_tie has {len(exempt)} tokens, "
                            f"expected {ref.shape[axis]}")
    shape = [1] * ref.ndim
    shape[axis] = len(exempt)
    return np.broadcast_to(exempt.reshape(shape), ref.shape)


def compare_tensor(name, golden, actual, exempt, tol):
    """Print a summary line for one output; return a failure message or None."""
    problem = _tensor_problem(name, golden, actual)
    if problem:
        print(f"{name}: FAIL ({problem})")
        return problem
    ref, out = golden[name].array, actual[name].array
    bad, err = _violations(name, ref, out, tol)
    checked = ~_token_mask(exempt, ref, TOKEN_AXIS[name])
    bad &= checked
    finite = err[checked & np.isfinite(err)]
    max_err = float(np.max(finite)) if finite.size else 0.0
    count = int(np.sum(bad))
    print(f"{name}: max_abs_err={max_err:.3e} violations={count}/{int(np.sum(checked))}")
    if count == 0:
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"tensor '{name}' differs at index {list(index)}: "
            f"actual {out[index]!r}, expected {ref[index]!r}")


def compare_files(golden_path, actual_path, bf16):
    """Check actual against golden; print a report and return True when it passes."""
    golden, actual = read_safetensors(golden_path), read_safetensors(actual_path)
    tol = 2e-2 if bf16 else 1e-4
    exempt = golden["near_tie"].array.reshape(-1) != 0 if "near_tie" in golden else None
    exempt_list = [] if exempt is None else np.nonzero(exempt)[0].tolist()
    print(f"tolerance atol=rtol={tol:g}; near-tie tokens exempt: {exempt_list}")
    failures = [msg for name in OUTPUT_NAMES
                if (msg := compare_tensor(name, golden, actual, exempt, tol))]
    return report(failures)


def report(failures):
    """Print the verdict of a comparison; True when it passed."""
    for msg in failures:
        print(f"FAIL: {msg}")
    if not failures:
        print("PASS")
    return not failures


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _cmd_run(args):
    res = run_files(args.config, args.weights, args.inputs, args.outputs)
    print(f"wrote {args.outputs}: T={len(res.exit_loop)}, "
          f"near-tie tokens {np.nonzero(res.near_tie)[0].tolist()}")
    return 0


def _cmd_gen(args):
    if args.list:
        print("\n".join(CASES))
        return 0
    if not args.case or not args.out:
        raise ContractError("gen needs --case and --out (or --list)")
    if args.case not in CASES:
        raise ContractError(f"unknown case '{args.case}'; known: {', '.join(CASES)}")
    res = generate_case(args.case, args.out, args.seed)
    histogram = np.bincount(res.exit_loop, minlength=len(res.exit_values)).tolist()
    print(f"wrote case '{args.case}' to {args.out}: T={len(res.exit_loop)}, "
          f"exit_loop histogram {histogram}, "
          f"near-tie tokens {np.nonzero(res.near_tie)[0].tolist()}")
    return 0


def _cmd_compare(args):
    return 0 if compare_files(args.golden, args.actual, args.bf16) else 1


def build_parser():
    parser = argparse.ArgumentParser(
        description="Reference implementation and test-case generator for the "
                    "moe_stack model contract (MODEL_CONTRACT.md, section 1).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate a model on inputs",
                         description="Evaluate a moe_stack model. Writes hidden_states, "
                                     "exit_loop, expert_ids, expert_gates and near_tie (I32 "
                                     "[T]: 1 where a top-k or exit decision of the token had a "
                                     f"margin below {NEAR_TIE_GAP:g}).")
    run.add_argument("--config", required=True, help="config.json")
    run.add_argument("--weights", required=True, help="weights .safetensors (F32 or BF16)")
    run.add_argument("--inputs", required=True, help="inputs .safetensors (hidden_states F32 [T,d])")
    run.add_argument("--outputs", required=True, help="outputs .safetensors to write")
    run.set_defaults(func=_cmd_run)

    gen = sub.add_parser("gen", help="write a named test case",
                         description="Write DIR/config.json, DIR/weights.safetensors, "
                                     "DIR/inputs.safetensors and DIR/golden.safetensors.",
                         epilog=f"cases: {', '.join(CASES)}")
    gen.add_argument("--case", help="case name (see --list)")
    gen.add_argument("--out", help="output directory")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--list", action="store_true", help="print the case names and exit")
    gen.set_defaults(func=_cmd_gen)

    cmp = sub.add_parser("compare", help="check outputs against a golden file",
                         description="Check the four contract outputs of ACTUAL against "
                                     "GOLDEN: floats within atol=rtol=1e-4 (2e-2 with "
                                     "--bf16), ids and exit_loop exactly; tokens marked "
                                     "near_tie in GOLDEN are exempt. Exit status 0 on pass, "
                                     "1 on failure, 2 on an unreadable file.")
    cmp.add_argument("--golden", required=True, help="golden .safetensors (from run or gen)")
    cmp.add_argument("--actual", required=True, help="backend output .safetensors")
    cmp.add_argument("--bf16", action="store_true", help="use the bf16 tolerances")
    cmp.set_defaults(func=_cmd_compare)
    return parser


def run_cli(parser, argv=None):
    """Run the subcommand `parser` selects; a bad file or field exits 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ContractError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv=None):
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
