#!/usr/bin/env python3
"""Independent reference of the full MoE decoder models of MODEL_CONTRACT.md section 2.

A NumPy re-implementation of the Hugging Face `transformers` forward pass of

  mixtral    MixtralForCausalLM
  olmoe      OlmoeForCausalLM
  qwen3_moe  Qwen3MoeForCausalLM

read from the checkpoint as Hugging Face writes it: config.json plus
model.safetensors, or model-0000i-of-0000N.safetensors shards with
model.safetensors.index.json.  Subcommands:

  gen      write a tiny random checkpoint, inputs and golden outputs
  run      evaluate a checkpoint: prefill logits and greedy generation
  compare  check an actual output file against a golden one (fp32 1e-3)

The math is float64 on the stored float32 (or bfloat16) values and the outputs
are float32.  Greedy generation re-runs the full forward pass over the growing
sequence (no KV cache), so it checks a KV-cache implementation independently.

Differences between the three model types, as in their Hugging Face modeling code:
  * Mixtral: no q/k norm; router softmax -> top-k -> always renormalised;
    experts `block_sparse_moe.experts.{e}.w2(silu(w1 x) * w3 x)`.
  * OLMoE: q_norm/k_norm are RMSNorms over the full projection width
    (hidden_size and num_key_value_heads*head_dim), applied to the q/k
    projections before the split into heads; then, when clip_qkv is set, q, k
    and v are clamped to [-clip_qkv, clip_qkv] (HF OlmoeAttention.forward:
    `query_states = self.q_norm(self.q_proj(x))`, then `clamp_`); renormalise
    the top-k only if norm_topk_prob; head_dim is always hidden/heads.
  * Qwen3-MoE: q_norm/k_norm are RMSNorms over head_dim, per head; head_dim
    from the config when given; renormalise the top-k if norm_topk_prob;
    layers in mlp_only_layers or off the decoder_sparse_step grid are dense MLPs.
All three: pre-norm residual decoder, rotate_half RoPE (applied after the q/k
norms), grouped-query attention (head h reads kv head h // (H/KV)), causal
softmax attention scaled by 1/sqrt(head_dim), final model.norm, lm_head.

Contract extensions (MODEL_CONTRACT.md sections 1 and 2), for all three types:
  * router_share_block B (default 1), router_decision "per_layer" | "block"
    (PathMoE): layers [B*j, B*j+B) use the router of layer B*j, the only layer
    of the block whose `<moe>.gate.weight` is in the checkpoint.  "per_layer":
    every layer routes its own normed input (post_attention_layernorm) with the
    shared router; "block": the head's expert ids and gates, computed on the
    head's input, are reused by the other layers of the block within the same
    loop pass.  (qwen3_moe: a MoE layer whose block head is a dense MLP layer is
    an error.)
  * num_loops K (default 1): the L decoder layers (attention + MoE) are applied
    K times with shared weights.  Every (pass i, layer l) has its own KV cache,
    slot i*L + l: attention at pass i, layer l attends over the keys and values
    that the same (i, l) produced for the earlier tokens.
  * exit_criterion "none" | "cosine" | "relative_l2", exit_threshold tau,
    exit_min_loops M (default 1): after pass i, if i+1 >= M and i < K-1, each
    still running token tests cos(h_after, h_before) >= tau, or
    |h_after - h_before| / |h_after| <= tau, on its hidden state after and
    before the pass.  ("max_prob" and "entropy" are rejected: not supported yet.)

  THE FREEZE RULE.  A token that exits after pass i has its hidden state frozen
  at its value after pass i.  In every later pass it still runs that pass's
  layers, starting from its frozen state, so that its keys and values of those
  passes exist for the later tokens to attend to; but that pass's result for
  it is discarded and its state stays frozen.  Each token decides on its own,
  a generated token too (it runs the passes and may exit like any other).  The
  logits come from model.norm and lm_head on each token's final (possibly
  frozen) state.  `exit_loop` is the pass after which a token stopped (K-1 if it
  ran them all); it is written (I32 [B, S], the prefill tokens) when K > 1.
  Because attention is causal, a token's exit decisions depend only on itself
  and the tokens before it, so the full recomputation used here gives every
  token the same decisions as a KV-cache decoder would.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_reference as ref  # noqa: E402  (safetensors I/O, bf16 helpers, rmsnorm)

ContractError = ref.ContractError

MODEL_TYPES = ("mixtral", "olmoe", "qwen3_moe")
ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM"}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Generation margins: every greedy step's top-2 logit gap and every router's
# k-th vs (k+1)-th probability gap in a generated case are at least these.
MIN_LOGIT_GAP = 1e-3
MIN_ROUTER_GAP = 1e-4
MIN_EXIT_GAP = 1e-4       # every tested exit value is at least this far from tau
MAX_ATTEMPTS = 200
# With an exit criterion, draw a attempts use OUTPUT_SCALES[a % 4] on the
# attention and MLP output projections (o_proj, the experts' and dense MLPs'
# down projections): smaller ones make the states change less per pass, which
# brings the passes' exit values together so that one tau can split the tokens.
OUTPUT_SCALES = (1.0, 0.5, 0.25, 0.125)

DEFAULT_ATOL = DEFAULT_RTOL = 1e-3  # the contract's fp32 tolerance


# ---------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------

REQUIRED = object()

# The fields this reference reads, per model type: name -> (type, default).
# The defaults are those of the Hugging Face config classes; the sizes have none
# here, so that a config missing one is an error naming it.
_COMMON_FIELDS = {
    "vocab_size": (int, REQUIRED),
    "hidden_size": (int, REQUIRED),
    "num_hidden_layers": (int, REQUIRED),
    "num_attention_heads": (int, REQUIRED),
    "num_experts_per_tok": (int, REQUIRED),
    "hidden_act": (str, "silu"),
    "tie_word_embeddings": (bool, False),
    "rope_scaling": (dict, None),
    "rope_parameters": (dict, None),   # transformers 5: rope_theta and the scaling
    "max_position_embeddings": (int, None),
}
_TYPE_FIELDS = {
    "mixtral": {
        "intermediate_size": (int, REQUIRED),
        "num_local_experts": (int, REQUIRED),
        "num_key_value_heads": (int, 8),
        "head_dim": (int, None),
        "rms_norm_eps": (float, 1e-5),
        "rope_theta": (float, 1e6),
        "sliding_window": (int, None),
    },
    "olmoe": {
        "intermediate_size": (int, REQUIRED),
        "num_experts": (int, REQUIRED),
        "num_key_value_heads": (int, None),
        "rms_norm_eps": (float, 1e-5),
        "rope_theta": (float, 1e4),
        "clip_qkv": (float, None),
        "norm_topk_prob": (bool, False),
        "attention_bias": (bool, False),
    },
    "qwen3_moe": {
        "moe_intermediate_size": (int, REQUIRED),
        "intermediate_size": (int, None),
        "num_experts": (int, REQUIRED),
        "num_key_value_heads": (int, 4),
        "head_dim": (int, None),
        "rms_norm_eps": (float, 1e-6),
        "rope_theta": (float, 1e4),
        "norm_topk_prob": (bool, False),
        "attention_bias": (bool, False),
        "decoder_sparse_step": (int, 1),
        "mlp_only_layers": (list, None),
        "use_sliding_window": (bool, False),
        "sliding_window": (int, None),
        "max_window_layers": (int, 28),
        "layer_types": (list, None),
    },
}
# Contract extensions (sections 1 and 2): name -> (type, default).
_EXTENSION_FIELDS = {
    "router_share_block": (int, 1),
    "router_decision": (str, "per_layer"),
    "num_loops": (int, 1),
    "exit_criterion": (str, "none"),
    "exit_threshold": (float, 0.0),
    "exit_min_loops": (int, 1),
}
ROUTER_DECISIONS = ("per_layer", "block")
EXIT_CRITERIA = ("none", "cosine", "relative_l2", "max_prob", "entropy")
# Criteria that exit when the value is at least tau (the others: at most).
EXIT_AT_LEAST = ("cosine", "max_prob")


@dataclass
class Model:
    """The architecture a config.json describes, in one form for all three types."""
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_size: int            # expert FFN width
    dense_size: int             # dense-MLP width (qwen3_moe dense layers), else 0
    rms_norm_eps: float
    rope_theta: float
    norm_topk_prob: bool        # always True for mixtral
    clip_qkv: float             # olmoe only; None = no clamp
    qk_norm: str                # "none" (mixtral), "full" (olmoe), "head" (qwen3_moe)
    attention_bias: bool
    tie_word_embeddings: bool
    sliding_window: int         # None = full causal attention
    windowed_layers: tuple      # the layers that mask keys sliding_window or more back
    sparse_layers: tuple = field(default=())  # per layer: MoE (True) or dense MLP
    rope_inv_freq: object = None          # [head_dim/2] float64, from rope_scaling
    rope_attention_factor: float = 1.0    # multiplies cos and sin (YaRN)
    router_share_block: int = 1           # B (PathMoE)
    router_decision: str = "per_layer"    # "per_layer" or "block"
    num_loops: int = 1                    # K (looped decoder)
    exit_criterion: str = "none"          # "none", "cosine" or "relative_l2"
    exit_threshold: float = 0.0           # tau
    exit_min_loops: int = 1

    def router_head(self, layer):
        """The layer whose router `layer` uses: the head of its PathMoE block."""
        return self.router_share_block * (layer // self.router_share_block)

    @property
    def exit_passes(self):
        """The loop passes after which the exit criterion is tested."""
        if self.exit_criterion == "none":
            return []
        return [i for i in range(self.num_loops - 1) if i + 1 >= self.exit_min_loops]

    @property
    def moe_prefix(self):
        return "block_sparse_moe" if self.model_type == "mixtral" else "mlp"

    @property
    def expert_proj(self):
        """Names of the (gate, up, down) projections of an expert."""
        if self.model_type == "mixtral":
            return ("w1", "w3", "w2")
        return ("gate_proj", "up_proj", "down_proj")


def _read_fields(raw, fields):
    values = {}
    for name, (kind, default) in fields.items():
        value = raw.get(name, None)
        if value is None:
            if default is REQUIRED:
                raise ContractError(f"config: missing required field '{name}'")
            value = default
        elif not ref.has_type(value, kind):
            raise ContractError(f"config: field '{name}' must be of type {kind.__name__}, "
                                f"got {value!r}")
        values[name] = float(value) if kind is float and value is not None else value
    return values


def parse_config(raw):
    """Validate a Hugging Face config dict; return a Model."""
    if not isinstance(raw, dict):
        raise ContractError("config: the top level must be a JSON object")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ContractError(f"config: field 'model_type' must be one of {list(MODEL_TYPES)}, "
                            f"got {model_type!r}")
    c = _read_fields(raw, {**_COMMON_FIELDS, **_TYPE_FIELDS[model_type]})
    x = _read_extensions(raw)
    if c["hidden_act"] != "silu":
        raise ContractError(f"config: field 'hidden_act' must be 'silu', got {c['hidden_act']!r}")

    heads = c["num_attention_heads"]
    kv_heads = c["num_key_value_heads"] if c["num_key_value_heads"] is not None else heads
    if model_type == "olmoe":
        head_dim = c["hidden_size"] // heads  # OlmoeAttention ignores config.head_dim
    else:
        head_dim = c["head_dim"] or c["hidden_size"] // heads
    experts = c["num_local_experts"] if model_type == "mixtral" else c["num_experts"]
    layers = c["num_hidden_layers"]
    for name, value in (("vocab_size", c["vocab_size"]), ("hidden_size", c["hidden_size"]),
                        ("num_hidden_layers", layers), ("num_attention_heads", heads),
                        ("num_key_value_heads", kv_heads), ("head_dim", head_dim),
                        ("num_experts_per_tok", c["num_experts_per_tok"]),
                        ("num_experts" if model_type != "mixtral" else "num_local_experts",
                         experts)):
        if value < 1:
            raise ContractError(f"config: field '{name}' must be >= 1, got {value}")
    if heads % kv_heads:
        raise ContractError(f"config: field 'num_attention_heads' ({heads}) must be a multiple "
                            f"of 'num_key_value_heads' ({kv_heads})")
    if head_dim % 2:
        raise ContractError(f"config: head_dim must be even for RoPE, got {head_dim}")
    if model_type == "olmoe" and head_dim * heads != c["hidden_size"]:
        raise ContractError("config: field 'hidden_size' must be divisible by "
                            "'num_attention_heads' for olmoe")
    if c["num_experts_per_tok"] > experts:
        raise ContractError(f"config: field 'num_experts_per_tok' must be <= the number of "
                            f"experts ({c['num_experts_per_tok']} > {experts})")
    if c["rms_norm_eps"] < 0:
        raise ContractError("config: field 'rms_norm_eps' must be >= 0")
    if c.get("clip_qkv") is not None and c["clip_qkv"] <= 0:
        raise ContractError("config: field 'clip_qkv' must be > 0")
    if c.get("sliding_window") is not None and c["sliding_window"] < 1:
        raise ContractError("config: field 'sliding_window' must be >= 1")

    sparse = (True,) * layers
    dense_size = 0
    if model_type == "qwen3_moe":
        step = c["decoder_sparse_step"]
        if step < 1:
            raise ContractError("config: field 'decoder_sparse_step' must be >= 1")
        only = c["mlp_only_layers"] or []
        if not all(ref.has_type(v, int) for v in only):
            raise ContractError("config: field 'mlp_only_layers' must be a list of ints")
        sparse = tuple(l not in only and (l + 1) % step == 0 for l in range(layers))
        if not all(sparse):
            if c["intermediate_size"] is None:
                raise ContractError("config: missing required field 'intermediate_size' "
                                    "(the model has dense MLP layers)")
            dense_size = c["intermediate_size"]
    for l in range(layers):
        head = x["router_share_block"] * (l // x["router_share_block"])
        if sparse[l] and not sparse[head]:
            raise ContractError(f"config: layer {l} is a MoE layer but the head of its "
                                f"router_share_block block, layer {head}, is a dense MLP layer "
                                "(it has no router to share)")
    if c["rope_parameters"] is not None and c["rope_scaling"] is not None:
        raise ContractError("config: give rope_parameters or rope_scaling, not both")
    scaling = c["rope_parameters"] if c["rope_parameters"] is not None else c["rope_scaling"]
    if scaling is not None and "rope_theta" in scaling:
        c["rope_theta"] = float(scaling["rope_theta"])
    inv_freq, attention_factor = rope_frequencies(head_dim, c["rope_theta"], scaling,
                                                  c["max_position_embeddings"])
    expert_size = c["moe_intermediate_size"] if model_type == "qwen3_moe" \
        else c["intermediate_size"]
    return Model(model_type=model_type, vocab_size=c["vocab_size"],
                 hidden_size=c["hidden_size"], num_layers=layers, num_heads=heads,
                 num_kv_heads=kv_heads, head_dim=head_dim, num_experts=experts,
                 top_k=c["num_experts_per_tok"], expert_size=expert_size,
                 dense_size=dense_size, rms_norm_eps=c["rms_norm_eps"],
                 rope_theta=c["rope_theta"], rope_inv_freq=inv_freq,
                 rope_attention_factor=attention_factor,
                 norm_topk_prob=True if model_type == "mixtral" else c["norm_topk_prob"],
                 clip_qkv=c.get("clip_qkv"),
                 qk_norm={"mixtral": "none", "olmoe": "full", "qwen3_moe": "head"}[model_type],
                 attention_bias=c.get("attention_bias", False),
                 tie_word_embeddings=c["tie_word_embeddings"],
                 sliding_window=c.get("sliding_window"),
                 windowed_layers=_windowed_layers(model_type, c, layers),
                 sparse_layers=sparse, **x)


def _windowed_layers(model_type, c, layers):
    """The layers whose attention has the sliding window, as transformers decides:
    every layer of Mixtral; Qwen3-MoE's layer_types 'sliding_attention' layers or,
    without layer_types and with use_sliding_window, those from max_window_layers on."""
    if c.get("sliding_window") is None:
        return ()
    if model_type == "mixtral":
        return tuple(range(layers))
    types = c.get("layer_types")
    if types is not None:
        if len(types) != layers or any(t not in ("full_attention", "sliding_attention")
                                       for t in types):
            raise ContractError("config: field 'layer_types' must give full_attention or "
                                "sliding_attention for each layer")
        return tuple(l for l, t in enumerate(types) if t == "sliding_attention")
    if not c.get("use_sliding_window"):
        return ()
    return tuple(range(c["max_window_layers"], layers))


def _read_extensions(raw):
    """The contract extension fields of a config dict, checked."""
    x = _read_fields(raw, _EXTENSION_FIELDS)
    for name, low in (("router_share_block", 1), ("num_loops", 1), ("exit_min_loops", 0)):
        if x[name] < low:
            raise ContractError(f"config: field '{name}' must be >= {low}, got {x[name]}")
    for name, allowed in (("router_decision", ROUTER_DECISIONS),
                          ("exit_criterion", EXIT_CRITERIA)):
        if x[name] not in allowed:
            raise ContractError(f"config: field '{name}' must be one of {list(allowed)}, "
                                f"got {x[name]!r}")
    if not math.isfinite(x["exit_threshold"]):
        raise ContractError(f"config: field 'exit_threshold' must be finite, "
                            f"got {x['exit_threshold']!r}")
    return x


def load_config(path):
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ContractError(f"{path}: not valid JSON: {e}") from None
    return parse_config(raw)


def tiny_config(model_type, **overrides):
    """The config.json `gen` writes: real Hugging Face fields, tiny sizes."""
    if model_type not in MODEL_TYPES:
        raise ContractError(f"unknown model type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    common = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
              "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
              "max_position_embeddings": 64, "initializer_range": 0.02, "use_cache": True,
              "tie_word_embeddings": False, "num_experts_per_tok": 2,
              "output_router_logits": False, "attention_dropout": 0.0,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
              "transformers_version": "4.51.3"}
    if model_type == "mixtral":
        config = {**common, "intermediate_size": 48, "num_local_experts": 4,
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": None,
                  "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0}
    elif model_type == "olmoe":
        config = {**common, "intermediate_size": 48, "num_experts": 4, "rms_norm_eps": 1e-5,
                  "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
                  "clip_qkv": 8.0, "norm_topk_prob": False, "pad_token_id": 1,
                  "router_aux_loss_coef": 0.01}
    else:
        config = {**common, "head_dim": 8, "intermediate_size": 96,
                  "moe_intermediate_size": 48, "num_experts": 4, "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False,
                  "use_sliding_window": False, "sliding_window": None, "max_window_layers": 2,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
                  "router_aux_loss_coef": 0.001}
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

def expected_weight_shapes(m):
    """name -> shape of every tensor of the checkpoint, in model order."""
    d, hd = m.hidden_size, m.head_dim
    q_width, kv_width = m.num_heads * hd, m.num_kv_heads * hd
    shapes = {"model.embed_tokens.weight": (m.vocab_size, d)}
    for l in range(m.num_layers):
        p = f"model.layers.{l}"
        shapes[f"{p}.input_layernorm.weight"] = (d,)
        for proj, width in (("q", q_width), ("k", kv_width), ("v", kv_width)):
            shapes[f"{p}.self_attn.{proj}_proj.weight"] = (width, d)
            if m.attention_bias:
                shapes[f"{p}.self_attn.{proj}_proj.bias"] = (width,)
        shapes[f"{p}.self_attn.o_proj.weight"] = (d, q_width)
        if m.attention_bias:
            shapes[f"{p}.self_attn.o_proj.bias"] = (d,)
        if m.qk_norm == "full":
            shapes[f"{p}.self_attn.q_norm.weight"] = (q_width,)
            shapes[f"{p}.self_attn.k_norm.weight"] = (kv_width,)
        elif m.qk_norm == "head":
            shapes[f"{p}.self_attn.q_norm.weight"] = (hd,)
            shapes[f"{p}.self_attn.k_norm.weight"] = (hd,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (d,)
        if m.sparse_layers[l]:
            if m.router_head(l) == l:  # PathMoE: only block heads hold a router
                shapes[f"{p}.{m.moe_prefix}.gate.weight"] = (m.num_experts, d)
            gate, up, down = m.expert_proj
            for e in range(m.num_experts):
                q = f"{p}.{m.moe_prefix}.experts.{e}"
                shapes[f"{q}.{gate}.weight"] = (m.expert_size, d)
                shapes[f"{q}.{up}.weight"] = (m.expert_size, d)
                shapes[f"{q}.{down}.weight"] = (d, m.expert_size)
        else:
            shapes[f"{p}.mlp.gate_proj.weight"] = (m.dense_size, d)
            shapes[f"{p}.mlp.up_proj.weight"] = (m.dense_size, d)
            shapes[f"{p}.mlp.down_proj.weight"] = (d, m.dense_size)
    shapes["model.norm.weight"] = (d,)
    if not m.tie_word_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, d)
    return shapes


def read_checkpoint(model_dir):
    """name -> Tensor from DIR/model.safetensors or, failing that, the shards of
    DIR/model.safetensors.index.json (the order Hugging Face looks them up in)."""
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.exists(single):
        return ref.read_safetensors(single)
    index_path = os.path.join(model_dir, INDEX_FILE)
    if not os.path.exists(index_path):
        raise ContractError(f"{model_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} exists")
    with open(index_path) as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as e:
            raise ContractError(f"{index_path}: not valid JSON: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):
        raise ContractError(f"{index_path}: missing or malformed 'weight_map'")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard:
            raise ContractError(f"{index_path}: shard name {shard!r} is not a plain file name")
        content = ref.read_safetensors(os.path.join(model_dir, shard))
        for name, tensor in content.items():
            if weight_map.get(name) != shard:
                raise ContractError(f"{shard}: tensor '{name}' is not mapped to this file "
                                    f"in {INDEX_FILE}")
            tensors[name] = tensor
    for name, shard in weight_map.items():
        if name not in tensors:
            raise ContractError(f"{INDEX_FILE}: tensor '{name}' is not in {shard}")
    return tensors


def check_weights(m, tensors):
    """Check names, shapes and dtypes; return name -> float64 array."""
    expected = expected_weight_shapes(m)
    allowed_extra = {"lm_head.weight"} if m.tie_word_embeddings else set()
    for name in expected:
        if name not in tensors:
            raise ContractError(f"weights: missing tensor '{name}'")
    for name in sorted(tensors):
        if name in allowed_extra:
            continue  # tied: the embedding is the head, as in Hugging Face
        if name not in expected:
            raise ContractError(f"weights: unexpected tensor '{name}'")
        if tuple(tensors[name].array.shape) != expected[name]:
            raise ContractError(f"weights: tensor '{name}' has shape "
                                f"{list(tensors[name].array.shape)}, expected {list(expected[name])}")
        if tensors[name].dtype not in ("F32", "BF16"):
            raise ContractError(f"weights: tensor '{name}' has dtype {tensors[name].dtype}, "
                                "expected F32 or BF16")
    return {name: tensors[name].array.astype(np.float64) for name in expected}


def load_model(model_dir):
    """(Model, float64 weights) of a checkpoint directory."""
    m = load_config(os.path.join(model_dir, "config.json"))
    return m, check_weights(m, read_checkpoint(model_dir))


def _clear_checkpoint_files(model_dir):
    """Remove the weight files a previous `gen` may have left in model_dir, so the
    loader never picks up a stale single file next to new shards or vice versa."""
    for name in os.listdir(model_dir):
        if name in (SINGLE_FILE, INDEX_FILE) or (
                name.startswith("model-") and "-of-" in name and name.endswith(".safetensors")):
            os.remove(os.path.join(model_dir, name))


def write_checkpoint(model_dir, tensors, shards=1):
    """Write name -> float32 array as one file or as `shards` Hugging Face shards.

    Shards hold contiguous runs of the tensors (in model order) of about equal
    size; the index maps every name to its file and records the total byte size."""
    os.makedirs(model_dir, exist_ok=True)
    _clear_checkpoint_files(model_dir)
    names = list(tensors)
    if shards <= 1:
        ref.write_safetensors(os.path.join(model_dir, SINGLE_FILE), tensors, {"format": "pt"})
        return [SINGLE_FILE]
    if shards > len(names):
        raise ContractError(f"--shards {shards}: the model has only {len(names)} tensors")
    sizes = [np.asarray(tensors[n]).nbytes for n in names]
    total = sum(sizes)
    groups, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        left_names, left_groups = len(names) - i - 1, shards - len(groups) - 1
        if left_groups > 0 and (acc >= total * (len(groups) + 1) / shards
                                or left_names == left_groups):
            groups.append(names[start:i + 1])
            start = i + 1
    groups.append(names[start:])
    files, weight_map = [], {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        ref.write_safetensors(os.path.join(model_dir, file), {n: tensors[n] for n in group},
                              {"format": "pt"})
        files.append(file)
        weight_map.update({n: file for n in group})
    with open(os.path.join(model_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    return files + [INDEX_FILE]


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

rmsnorm = ref.rmsnorm      # x / sqrt(mean(x*x) + eps) * w over the last axis
softmax = ref.softmax
silu = ref.silu


def rope_frequencies(head_dim, theta, scaling, max_positions):
    """(inv_freq [head_dim/2], attention_factor) of config.rope_scaling, as
    transformers 5's modeling_rope_utils computes them: default, linear
    (inv_freq / factor) and yarn; other rope_types are errors."""
    dim = head_dim
    pos_freqs = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = 1.0 / pos_freqs
    if scaling is None:
        return inv_freq, 1.0
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / scaling["factor"], 1.0
    if rope_type != "yarn":
        raise ContractError(f"config: rope_scaling rope_type {rope_type!r} is not supported "
                            "(default, linear, yarn)")
    original = scaling.get("original_max_position_embeddings") or max_positions
    if original is None:
        raise ContractError("config: yarn needs original_max_position_embeddings or "
                            "max_position_embeddings")
    factor = scaling.get("factor")
    if factor is None:
        factor = max_positions / original

    def get_mscale(scale, mscale=1):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def find_correction_dim(num_rotations):
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = find_correction_dim(beta_fast), find_correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    return (inv_freq_interpolation * (1 - extrapolation_factor)
            + inv_freq * extrapolation_factor), float(attention_factor)


def rope_tables(positions, head_dim, theta, inv_freq=None, attention_factor=1.0):
    """cos and sin [len(positions), head_dim] of the (non-interleaved) RoPE:
    inv_freq = theta^(-arange(0, hd, 2)/hd) unless given, emb = concat(freqs, freqs),
    both tables multiplied by attention_factor."""
    if inv_freq is None:
        inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb) * attention_factor, np.sin(emb) * attention_factor


def model_rope_tables(m, positions):
    """rope_tables for model m's RoPE, scaling included."""
    return rope_tables(positions, m.head_dim, m.rope_theta, m.rope_inv_freq,
                       m.rope_attention_factor)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x [..., S, hd] rotated by the tables of its S positions."""
    return x * cos + rotate_half(x) * sin


def _linear(W, prefix, x):
    y = x @ W[f"{prefix}.weight"].T
    bias = W.get(f"{prefix}.bias")
    return y if bias is None else y + bias


@dataclass
class Stats:
    """Decision margins seen while running (for the generator's redraws)."""
    router_gap: float = math.inf     # smallest k-th vs (k+1)-th router probability gap
    logit_gap: float = math.inf      # smallest top-2 logit gap of a greedy step
    clipped: int = 0                 # q/k/v elements clamped by clip_qkv
    clip_total: int = 0
    exit_gap: float = math.inf       # smallest |exit value - tau| of a tested exit decision


@dataclass
class Trace:
    """What one forward pass did, for the generator and the tests (prefill only).

    states[0] is the embedding output and states[i+1] every token's kept hidden
    state after loop pass i (frozen tokens keep theirs); outputs[i] is what pass
    i computed for every token, frozen ones included (their discarded result);
    exit_values[i] holds the criterion's value after pass i for the tokens that
    tested it (NaN elsewhere); expert_ids[i][l] the ids layer l used in pass i
    (None for a dense layer)."""
    states: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    exit_values: np.ndarray = None   # [K, B, S]
    exit_loop: np.ndarray = None     # [B, S]
    expert_ids: list = field(default_factory=list)


def qkv_states(m, W, layer, x, stats=None):
    """q [B,H,S,hd], k and v [B,KV,S,hd] of the normed hidden states x [B,S,d],
    after the model's q/k norm and clip, before RoPE."""
    B, S, _ = x.shape
    p = f"model.layers.{layer}.self_attn"
    q, k, v = (_linear(W, f"{p}.{n}_proj", x) for n in ("q", "k", "v"))
    if m.qk_norm == "full":  # OLMoE: over the whole projection, before the head split
        q = rmsnorm(q, W[f"{p}.q_norm.weight"], m.rms_norm_eps)
        k = rmsnorm(k, W[f"{p}.k_norm.weight"], m.rms_norm_eps)
    if m.model_type == "olmoe" and m.clip_qkv is not None:  # after the norms, as in HF
        if stats is not None:
            stats.clipped += sum(int(np.sum(np.abs(t) > m.clip_qkv)) for t in (q, k, v))
            stats.clip_total += q.size + k.size + v.size
        q, k, v = (np.clip(t, -m.clip_qkv, m.clip_qkv) for t in (q, k, v))
    q = q.reshape(B, S, m.num_heads, m.head_dim)
    k = k.reshape(B, S, m.num_kv_heads, m.head_dim)
    v = v.reshape(B, S, m.num_kv_heads, m.head_dim)
    if m.qk_norm == "head":  # Qwen3: per head over head_dim
        q = rmsnorm(q, W[f"{p}.q_norm.weight"], m.rms_norm_eps)
        k = rmsnorm(k, W[f"{p}.k_norm.weight"], m.rms_norm_eps)
    return (q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))


def kv_head_of(head, num_heads, num_kv_heads):
    """The kv head that query head `head` reads (HF repeat_kv)."""
    return head // (num_heads // num_kv_heads)


def grouped_causal_attention(q, k, v, sliding_window=None):
    """softmax(q k^T / sqrt(hd) + causal mask) v; q [B,H,S,hd], k, v [B,KV,S,hd]."""
    H, S, hd = q.shape[1], q.shape[2], q.shape[3]
    kv_index = [kv_head_of(h, H, k.shape[1]) for h in range(H)]
    k, v = k[:, kv_index], v[:, kv_index]
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    i, j = np.arange(S)[:, None], np.arange(S)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed &= i - j < sliding_window
    scores = np.where(allowed, scores, -np.inf)
    return softmax(scores) @ v


def attention(m, W, layer, x, cos, sin, stats=None):
    """The self-attention block on the normed states x [B,S,d]: [B,S,d]."""
    B, S, _ = x.shape
    q, k, v = qkv_states(m, W, layer, x, stats)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    window = m.sliding_window if layer in m.windowed_layers else None
    out = grouped_causal_attention(q, k, v, window)
    out = out.transpose(0, 2, 1, 3).reshape(B, S, m.num_heads * m.head_dim)
    return _linear(W, f"model.layers.{layer}.self_attn.o_proj", out)


def route(m, router_logits):
    """softmax -> top-k (ties: lower index first) -> renormalise if the model does.

    Returns ids [T,k], gates [T,k] and, per token, the gap between the k-th and
    (k+1)-th probability (inf when k = E)."""
    p = softmax(router_logits)
    order = np.argsort(-p, axis=-1, kind="stable")
    ids = order[:, :m.top_k]
    gates = np.take_along_axis(p, ids, axis=-1)
    if m.norm_topk_prob:
        gates = gates / np.sum(gates, axis=-1, keepdims=True)
    if m.top_k < m.num_experts:
        sorted_p = np.take_along_axis(p, order[:, m.top_k - 1:m.top_k + 1], axis=-1)
        gap = sorted_p[:, 0] - sorted_p[:, 1]
    else:
        gap = np.full(p.shape[0], np.inf)
    return ids, gates, gap


def swiglu(W, prefix, names, x):
    gate, up, down = names
    return (silu(x @ W[f"{prefix}.{gate}.weight"].T) * (x @ W[f"{prefix}.{up}.weight"].T)) \
        @ W[f"{prefix}.{down}.weight"].T


def feed_forward(m, W, layer, x, stats=None, decisions=None):
    """The sparse MoE block (or a qwen3_moe dense MLP) on x [B,S,d].

    `decisions` (layer -> (ids, gates)) holds the routing of the layers already
    run in this loop pass; this layer's is added.  With router_decision "block"
    a layer that is not its block's head reuses the head's ids and gates."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    p = f"model.layers.{layer}"
    if not m.sparse_layers[layer]:
        return swiglu(W, f"{p}.mlp", ("gate_proj", "up_proj", "down_proj"), x).reshape(shape)
    decisions = {} if decisions is None else decisions
    head = m.router_head(layer)
    if m.router_decision == "block" and head != layer:
        if head not in decisions:
            raise ContractError(f"layer {layer}: the routing of its block head {head} is "
                                "not known (run the layers of a pass in order)")
        ids, gates = decisions[head]
    else:
        router = W[f"model.layers.{head}.{m.moe_prefix}.gate.weight"]
        ids, gates, gap = route(m, x @ router.T)
        if stats is not None and gap.size:
            stats.router_gap = min(stats.router_gap, float(np.min(gap)))
    decisions[layer] = (ids, gates)
    moe = f"{p}.{m.moe_prefix}"
    out = np.zeros_like(x)
    for e in np.unique(ids):
        rows, slots = np.nonzero(ids == e)
        out[rows] += gates[rows, slots, None] * swiglu(W, f"{moe}.experts.{e}", m.expert_proj,
                                                       x[rows])
    return out.reshape(shape)


def decoder_pass(m, W, h, cos, sin, stats=None):
    """One loop pass: the L decoder layers on the hidden states h [B,S,d].

    Attention at layer l attends over the keys and values this same pass's
    layer l computes for the earlier tokens (the KV slot i*L + l of pass i).
    Returns the new states and the per-layer expert ids (None: dense layer)."""
    eps = m.rms_norm_eps
    decisions = {}
    for l in range(m.num_layers):
        p = f"model.layers.{l}"
        h = h + attention(m, W, l, rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps),
                          cos, sin, stats)
        h = h + feed_forward(m, W, l, rmsnorm(h, W[f"{p}.post_attention_layernorm.weight"], eps),
                             stats, decisions)
    ids = [decisions[l][0].reshape(h.shape[:-1] + (-1,)) if l in decisions else None
           for l in range(m.num_layers)]
    return h, ids


def exit_values(m, h_after, h_before, W):
    """Per token: the exit criterion's value for one loop pass ([B,S,d] -> [B,S]).
    max_prob and entropy (nats) read the next-token distribution of the state
    after the pass: softmax(lm_head(model.norm(h)))."""
    if m.exit_criterion in ("max_prob", "entropy"):
        head = W["model.embed_tokens.weight"] if m.tie_word_embeddings else W["lm_head.weight"]
        logits = rmsnorm(h_after, W["model.norm.weight"], m.rms_norm_eps) @ head.T
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        if m.exit_criterion == "max_prob":
            return p.max(axis=-1)
        return -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=-1)
    if m.exit_criterion == "cosine":
        norms = np.linalg.norm(h_after, axis=-1) * np.linalg.norm(h_before, axis=-1)
        return np.sum(h_after * h_before, axis=-1) / norms
    return np.linalg.norm(h_after - h_before, axis=-1) / np.linalg.norm(h_after, axis=-1)


def exit_satisfied(m, values, tau=None):
    tau = m.exit_threshold if tau is None else tau
    return values >= tau if m.exit_criterion in EXIT_AT_LEAST else values <= tau


def forward(m, W, input_ids, stats=None, trace=None):
    """Prefill logits [B,S,V] (float64) of input_ids [B,S], each from position 0.

    The L layers run num_loops times; tokens exit and freeze as the module
    docstring's freeze rule says.  `trace`, when given, records the passes."""
    input_ids = np.asarray(input_ids)
    S = input_ids.shape[1]
    K = m.num_loops
    cos, sin = model_rope_tables(m, np.arange(S))
    h = W["model.embed_tokens.weight"][input_ids]
    active = np.ones(input_ids.shape, dtype=bool)
    exit_loop = np.full(input_ids.shape, K - 1, dtype=np.int32)
    values_seen = np.full((K,) + input_ids.shape, np.nan)
    if trace is not None:
        trace.states, trace.outputs, trace.expert_ids = [h.copy()], [], []
    for i in range(K):
        out, ids = decoder_pass(m, W, h, cos, sin, stats)
        leaving = np.zeros_like(active)
        if i in m.exit_passes:
            values = exit_values(m, out, h, W)
            values_seen[i][active] = values[active]
            if stats is not None and np.any(active):
                gap = np.abs(values[active] - m.exit_threshold)
                stats.exit_gap = min(stats.exit_gap, float(np.min(gap)))
            leaving = active & exit_satisfied(m, values)
            exit_loop[leaving] = i
        # Running tokens take the pass's result; exited ones keep their frozen state.
        h = np.where(active[..., None], out, h)
        active &= ~leaving
        if trace is not None:
            trace.states.append(h.copy())
            trace.outputs.append(out)
            trace.expert_ids.append(ids)
    if trace is not None:
        trace.exit_values, trace.exit_loop = values_seen, exit_loop
    eps = m.rms_norm_eps
    h = rmsnorm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if m.tie_word_embeddings else W["lm_head.weight"]
    return h @ head.T


def greedy_token(last_logits):
    """argmax per row (ties: lowest id) and the top-2 gap per row."""
    ids = np.argmax(last_logits, axis=-1)  # first occurrence of the max
    top2 = np.sort(last_logits, axis=-1)[:, -2:] if last_logits.shape[-1] > 1 else None
    gap = top2[:, 1] - top2[:, 0] if top2 is not None else np.full(len(ids), np.inf)
    return ids, gap


def generate(m, W, input_ids, steps, stats=None, trace=None):
    """(prefill logits [B,S,V], generated [B,steps]) by greedy decoding that re-runs
    the full forward pass over the growing sequences (no KV cache).  `trace`
    records the prefill pass; `stats` sees every pass (generated tokens' exits too)."""
    seq = np.asarray(input_ids, dtype=np.int64)
    prefill, generated = None, []
    for step in range(max(steps, 0) + 1):
        logits = forward(m, W, seq, stats, trace if prefill is None else None)
        if prefill is None:
            prefill = logits
        if step == steps:
            break
        nxt, gap = greedy_token(logits[:, -1])
        if stats is not None:
            stats.logit_gap = min(stats.logit_gap, float(np.min(gap)))
        generated.append(nxt)
        if step + 1 < steps:  # the last token is never fed back
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
    gen = np.stack(generated, axis=1) if generated else np.zeros((seq.shape[0], 0), np.int64)
    return prefill, gen


def check_inputs(m, tensors):
    if "input_ids" not in tensors:
        raise ContractError("inputs: missing tensor 'input_ids'")
    t = tensors["input_ids"]
    if t.dtype != "I32" or t.array.ndim != 2 or t.array.shape[1] < 1:
        raise ContractError(f"inputs: tensor 'input_ids' must be I32 [B, S] with S >= 1, got "
                            f"{t.dtype} {list(t.array.shape)}")
    ids = t.array.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= m.vocab_size):
        raise ContractError(f"inputs: 'input_ids' must lie in [0, {m.vocab_size}), found "
                            f"{int(ids.min())}..{int(ids.max())}")
    return ids


def output_tensors(logits, generated, exit_loop=None):
    out = {"logits": logits.astype(np.float32)}
    if generated is not None and generated.shape[1] > 0:
        out["generated"] = generated.astype(np.int32)
    if exit_loop is not None:
        out["exit_loop"] = exit_loop.astype(np.int32)
    return out


def run_files(model_dir, inputs_path, outputs_path, steps, stats=None):
    """Evaluate a checkpoint on an inputs file; write and return the outputs
    (exit_loop I32 [B, S] of the prefill tokens too when num_loops > 1)."""
    m, W = load_model(model_dir)
    ids = check_inputs(m, ref.read_safetensors(inputs_path))
    trace = Trace()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logits, generated = generate(m, W, ids, steps, stats, trace)
    out = output_tensors(logits, generated, trace.exit_loop if m.num_loops > 1 else None)
    ref.write_safetensors(outputs_path, out, {"format": "pt"})
    return out


# ---------------------------------------------------------------------------
# tiny random checkpoints
# ---------------------------------------------------------------------------

def random_weights(m, rng, output_scale=1.0):
    """float32 weights whose activations stay O(1) and whose logits are spread.

    OLMoE's q/k norm weights and v projection are larger so that clip_qkv = 8
    clamps a few percent of q, k and v (otherwise the clamp would never act).
    output_scale multiplies the output projections (o_proj and the down
    projections) after the draw, so the random stream does not depend on it."""
    d = m.hidden_size
    weights = {}
    for name, shape in expected_weight_shapes(m).items():
        leaf = name.split(".")[-2]
        if name == "model.embed_tokens.weight":
            value = rng.standard_normal(shape)
        elif leaf in ("q_norm", "k_norm") and m.model_type == "olmoe":
            value = 2.0 + 0.5 * rng.standard_normal(shape)
        elif len(shape) == 1 and name.endswith(".weight"):  # RMSNorm weights
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:  # biases
            value = 0.1 * rng.standard_normal(shape)
        elif name == "lm_head.weight":
            value = 2.0 / math.sqrt(d) * rng.standard_normal(shape)
        elif leaf == "gate":  # router
            value = 2.0 / math.sqrt(d) * rng.standard_normal(shape)
        elif leaf == "v_proj" and m.model_type == "olmoe":
            value = 4.0 / math.sqrt(d) * rng.standard_normal(shape)
        else:  # projections: std 1/sqrt(fan_in)
            value = rng.standard_normal(shape) / math.sqrt(shape[1])
        if output_scale != 1.0 and leaf in ("o_proj", "down_proj", "w2"):
            value = value * output_scale
        weights[name] = value.astype(np.float32)
    return weights


def exit_groups(m):
    """(required, desired) exit_loop values a generated case's prefill tokens show:
    the first tested pass and K-1 are required, every tested pass is desired."""
    passes = m.exit_passes
    return [passes[0], m.num_loops - 1], passes + [m.num_loops - 1]


def _outcome(m, values, tau):
    """exit_loop of every token for threshold tau, from exit values [K, N] of a
    run without exits (the earliest satisfied tested pass wins)."""
    outcome = np.full(values.shape[1], m.num_loops - 1)
    for i in reversed(m.exit_passes):
        outcome[exit_satisfied(m, values[i], tau)] = i
    return outcome


def choose_threshold(m, values):
    """tau from the exit values [K, N] of a dry run in which no token exits, or None.

    Candidates are the midpoints between the sorted tested values (rounded to 6
    digits).  A candidate must leave every value at least MIN_EXIT_GAP away and
    give the required groups (exit_groups) a token each; the best one has the
    most desired groups filled, then the largest smallest group, then the
    largest gap.  Exits change later passes' inputs (K > 2), so the real run is
    checked again afterwards."""
    required, desired = exit_groups(m)
    tested = values[m.exit_passes]
    finite = np.unique(tested[np.isfinite(tested)])
    best, best_key = None, None
    for tau in (finite[:-1] + finite[1:]) / 2:
        tau = float(f"{tau:.6g}")
        gap = float(np.min(np.abs(tested - tau)))
        outcome = _outcome(m, values, tau)
        sizes = [int(np.sum(outcome == g)) for g in desired]
        if gap < MIN_EXIT_GAP or any(np.sum(outcome == g) == 0 for g in required):
            continue
        key = (sum(n > 0 for n in sizes), min(n for n in sizes if n > 0), gap)
        if best_key is None or key > best_key:
            best, best_key = tau, key
    return best


def try_draw(m, rng, batch, seq, steps, output_scale=1.0):
    """One random draw: (weights, input_ids, stats, model, trace), or None if a
    margin is too small (or, with exits, no threshold splits the prefill tokens).
    The returned model carries the chosen exit_threshold."""
    weights = random_weights(m, rng, output_scale)
    ids = rng.integers(0, m.vocab_size, size=(batch, seq)).astype(np.int32)
    W = {n: w.astype(np.float64) for n, w in weights.items()}
    if m.exit_passes:
        never = math.inf if m.exit_criterion in EXIT_AT_LEAST else -math.inf
        dry = Trace()
        forward(dataclasses.replace(m, exit_threshold=never), W, ids, trace=dry)
        tau = choose_threshold(m, dry.exit_values.reshape(m.num_loops, -1))
        if tau is None:
            return None
        m = dataclasses.replace(m, exit_threshold=tau)
    stats, trace = Stats(), Trace()
    generate(m, W, ids, steps, stats, trace)
    if stats.router_gap < MIN_ROUTER_GAP or stats.logit_gap < MIN_LOGIT_GAP:
        return None
    if m.exit_passes:
        if not stats.exit_gap >= MIN_EXIT_GAP:
            return None
        if any(np.sum(trace.exit_loop == g) == 0 for g in exit_groups(m)[0]):
            return None
    return weights, ids, stats, m, trace


def extension_config(share_block=1, decision="per_layer", loops=1, criterion="none",
                     min_loops=1):
    """The contract extension fields gen writes: none for a plain model, else all six
    (exit_threshold 0.0 here; gen replaces it with the chosen tau)."""
    fields = {"router_share_block": share_block, "router_decision": decision,
              "num_loops": loops, "exit_criterion": criterion, "exit_threshold": 0.0,
              "exit_min_loops": min_loops}
    defaults = {name: default for name, (_, default) in _EXTENSION_FIELDS.items()}
    return {} if fields == defaults else fields


def _draw(m, seed, batch, seq, steps):
    """The first draw that meets every margin and, with exits, fills every desired
    exit group; failing that, the first one that fills the required groups."""
    fallback = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for attempt in range(MAX_ATTEMPTS):
            scale = OUTPUT_SCALES[attempt % len(OUTPUT_SCALES)] if m.exit_passes else 1.0
            drawn = try_draw(m, np.random.default_rng([seed, attempt]), batch, seq, steps,
                             scale)
            if drawn is None:
                continue
            drawn = drawn + (attempt, scale)
            trace = drawn[4]
            if all(np.any(trace.exit_loop == g) for g in exit_groups(m)[1]) \
                    if m.exit_passes else True:
                return drawn
            fallback = fallback or drawn
    if fallback is None:
        raise ContractError(f"no draw met the margins in {MAX_ATTEMPTS} tries")
    return fallback


def generate_case(model_type, out_dir, seed=0, shards=1, batch=2, seq=5, steps=4,
                  overrides=None):
    """Write config.json, the weights, inputs.safetensors and golden.safetensors."""
    if batch < 1 or seq < 1 or steps < 0:
        raise ContractError("gen: --batch and --seq must be >= 1 and --generate >= 0")
    config = tiny_config(model_type, **(overrides or {}))
    m = parse_config(config)
    if m.exit_criterion != "none" and not m.exit_passes:
        raise ContractError(f"gen: exit criterion '{m.exit_criterion}' with num_loops "
                            f"{m.num_loops} and exit_min_loops {m.exit_min_loops} tests no "
                            "pass (exits need num_loops >= 2 and exit_min_loops < num_loops)")
    weights, ids, stats, m, trace, attempt, scale = _draw(m, seed, batch, seq, steps)
    if m.exit_passes:
        config["exit_threshold"] = m.exit_threshold
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    files = write_checkpoint(out_dir, weights, shards)
    inputs_path = os.path.join(out_dir, "inputs.safetensors")
    ref.write_safetensors(inputs_path, {"input_ids": ids})
    # The golden comes from the written files, exactly as `run` computes it.
    golden = run_files(out_dir, inputs_path, os.path.join(out_dir, "golden.safetensors"), steps)
    return {"model": m, "files": files, "attempt": attempt, "stats": stats,
            "input_ids": ids, "golden": golden, "weights": weights, "config": config,
            "output_scale": scale}


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

OUTPUT_DTYPES = {"logits": "F32", "generated": "I32", "exit_loop": "I32"}


def compare_files(golden_path, actual_path, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL):
    """Print a summary per tensor and PASS or FAIL; return True on pass."""
    golden, actual = ref.read_safetensors(golden_path), ref.read_safetensors(actual_path)
    print(f"tolerance: logits |actual-golden| <= {atol:g} + {rtol:g}*|golden|; "
          "generated and exit_loop exactly")
    failures = []
    for name in OUTPUT_DTYPES:
        if name not in golden:
            if name == "logits":
                failures.append("tensor 'logits' is missing from the golden file")
            continue
        problem = None
        if name not in actual:
            problem = f"tensor '{name}' is missing from the actual file"
        elif actual[name].dtype != OUTPUT_DTYPES[name] or golden[name].dtype != OUTPUT_DTYPES[name]:
            problem = (f"tensor '{name}' has dtype {actual[name].dtype} (golden "
                       f"{golden[name].dtype}), expected {OUTPUT_DTYPES[name]}")
        elif actual[name].array.shape != golden[name].array.shape:
            problem = (f"tensor '{name}' has shape {list(actual[name].array.shape)}, "
                       f"expected {list(golden[name].array.shape)}")
        if problem:
            print(f"{name}: FAIL ({problem})")
            failures.append(problem)
            continue
        r, a = golden[name].array, actual[name].array
        shape = list(r.shape)
        if OUTPUT_DTYPES[name] == "I32":  # generated, exit_loop: exactly
            bad = a != r
            print(f"{name}: shape {shape} mismatches={int(np.sum(bad))}/{r.size}")
            if np.any(bad):
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                failures.append(f"tensor '{name}' differs at index {list(idx)}: actual "
                                f"{int(a[idx])}, expected {int(r[idx])}")
            continue
        r64, a64 = r.astype(np.float64), a.astype(np.float64)
        with np.errstate(invalid="ignore"):
            err = np.abs(a64 - r64)
            bound = atol + rtol * np.abs(r64)
            bad = ~(err <= bound)  # NaN fails
        finite = err[np.isfinite(err)]
        max_err = float(np.max(finite)) if finite.size else 0.0
        ratio = err / bound
        finite_ratio = ratio[np.isfinite(ratio)]
        worst = float(np.max(finite_ratio)) if finite_ratio.size else 0.0
        print(f"{name}: shape {shape} max_abs_err={max_err:.3e} worst_err/tol={worst:.3f} "
              f"violations={int(np.sum(bad))}/{r.size}")
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            failures.append(f"tensor 'logits' differs at index {list(idx)}: actual "
                            f"{float(a[idx])!r}, expected {float(r[idx])!r} "
                            f"(|diff| {float(err[idx]):.3e} > tol {float(bound[idx]):.3e})")
    return ref.report(failures)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _shape_line(tensors):
    return ", ".join(f"{n} {list(np.asarray(t).shape)}" for n, t in tensors.items())


def _histogram(exit_loop, loops):
    return np.bincount(np.asarray(exit_loop).reshape(-1), minlength=loops).tolist()


def _cmd_gen(args):
    overrides = extension_config(args.share_block, args.decision, args.loops,
                                 args.exit_criterion, args.exit_min_loops)
    for item in args.set:
        field, sep, value = item.partition("=")
        try:
            if not sep or not field:
                raise ValueError
            overrides[field] = json.loads(value)
        except ValueError:
            raise ContractError(f"gen: --set needs FIELD=JSON, got {item!r}") from None
    res = generate_case(args.model_type, args.out, args.seed, args.shards, args.batch,
                        args.seq, args.generate, overrides)
    m, st = res["model"], res["stats"]
    print(f"wrote {args.model_type} case to {args.out} (seed {args.seed}, draw {res['attempt']})")
    print(f"  weights: {len(res['weights'])} tensors in {', '.join(res['files'])}")
    print(f"  inputs: input_ids {list(res['input_ids'].shape)}")
    print(f"  golden: {_shape_line(res['golden'])}")
    print(f"  min greedy top-2 logit gap {st.logit_gap:.3e}, "
          f"min router top-k gap {st.router_gap:.3e}")
    if m.model_type == "olmoe" and m.clip_qkv is not None:
        print(f"  clip_qkv {m.clip_qkv:g} clamps {st.clipped}/{st.clip_total} q/k/v elements")
    if overrides:
        print("  extensions: " + ", ".join(f"{n}={res['config'][n]!r}" for n in overrides))
    if m.exit_passes:
        print(f"  exit threshold {m.exit_threshold!r} (output projections x"
              f"{res['output_scale']:g}), min |exit value - tau| {st.exit_gap:.3e}")
    if "exit_loop" in res["golden"]:
        print(f"  exit_loop histogram (passes 0..{m.num_loops - 1}) "
              f"{_histogram(res['golden']['exit_loop'], m.num_loops)}")
    return 0


def _cmd_run(args):
    out = run_files(args.model, args.inputs, args.outputs, args.generate)
    print(f"wrote {args.outputs}: {_shape_line(out)}")
    if "exit_loop" in out:
        loops = load_config(os.path.join(args.model, "config.json")).num_loops
        print(f"  exit_loop histogram (passes 0..{loops - 1}) "
              f"{_histogram(out['exit_loop'], loops)}")
    return 0


def _cmd_compare(args):
    return 0 if compare_files(args.golden, args.actual, args.atol, args.rtol) else 1


def build_parser():
    parser = argparse.ArgumentParser(
        description="NumPy reference of the Hugging Face forward pass of MoE decoders "
                    "(mixtral, olmoe, qwen3_moe; MODEL_CONTRACT.md section 2) and a "
                    "tiny-checkpoint generator.",
        epilog="Exit status: 0 ok (compare: PASS), 1 compare FAIL, 2 bad file or config.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "gen", help="write a tiny random checkpoint with inputs and golden outputs",
        description="Write DIR/config.json (a Hugging Face config of MODEL_TYPE with tiny "
                    "sizes), the weights (DIR/model.safetensors, or with --shards N "
                    "DIR/model-0000i-of-0000N.safetensors and DIR/model.safetensors.index.json), "
                    "DIR/inputs.safetensors (input_ids I32 [B, S]) and DIR/golden.safetensors "
                    "(logits F32 [B, S, vocab]; generated I32 [B, N] when N > 0; exit_loop "
                    "I32 [B, S] when --loops > 1). Weights are "
                    f"redrawn until every greedy top-2 logit gap is >= {MIN_LOGIT_GAP:g}, "
                    f"every router top-k probability gap is >= {MIN_ROUTER_GAP:g} and every "
                    f"tested exit value is >= {MIN_EXIT_GAP:g} away from the threshold. Any "
                    "extension option writes all six contract extension fields "
                    "(router_share_block, router_decision, num_loops, exit_criterion, "
                    "exit_threshold, exit_min_loops) to the config. With an exit criterion "
                    "the threshold is picked from a run without exits so that some prefill "
                    "tokens exit after the first tested pass and some run every pass (and, "
                    "where a draw allows, some exit after every other tested pass); the "
                    "attention and MLP output projections are scaled down on some draws so "
                    "that states change slowly enough. Weight files a "
                    "previous gen left in DIR (model.safetensors, model-*-of-*.safetensors, "
                    "the index) are removed first.")
    gen.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--shards", type=int, default=1, metavar="N",
                     help="split the weights over N files with an index (default 1: one file)")
    gen.add_argument("--batch", type=int, default=2, metavar="B", help="sequences (default 2)")
    gen.add_argument("--seq", type=int, default=5, metavar="S", help="prompt length (default 5)")
    gen.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                     help="override a config.json field of the tiny model, e.g. "
                          "max_position_embeddings=512 (repeatable)")
    gen.add_argument("--generate", type=int, default=4, metavar="N",
                     help="greedy tokens to generate (default 4; 0: logits only)")
    gen.add_argument("--share-block", type=int, default=1, metavar="B",
                     help="router_share_block: layers [B*j, B*j+B) share layer B*j's router "
                          "(default 1: independent routers)")
    gen.add_argument("--decision", choices=ROUTER_DECISIONS, default="per_layer",
                     help="router_decision: every layer routes with the shared router "
                          "(per_layer, default) or reuses its block head's ids and gates "
                          "(block)")
    gen.add_argument("--loops", type=int, default=1, metavar="K",
                     help="num_loops: apply the decoder layers K times (default 1)")
    gen.add_argument("--exit-criterion", choices=EXIT_CRITERIA, default="none",
                     help="exit_criterion (default none); the threshold is picked automatically")
    gen.add_argument("--exit-min-loops", type=int, default=1, metavar="M",
                     help="exit_min_loops: exits are tested after pass i only if i+1 >= M "
                          "(default 1)")
    gen.set_defaults(func=_cmd_gen)

    run = sub.add_parser(
        "run", help="evaluate a checkpoint on inputs",
        description="Read DIR/config.json and DIR/model.safetensors (or the shards of "
                    "DIR/model.safetensors.index.json), run input_ids I32 [B, S] and write "
                    "logits F32 [B, S, vocab] (prefill from position 0), generated I32 [B, N] "
                    "(greedy: argmax of the last logits, ties to the lowest id, appended, "
                    "repeated; computed without a KV cache) and, when num_loops > 1, "
                    "exit_loop I32 [B, S] (the pass after which each prefill token stopped).")
    run.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory")
    run.add_argument("--inputs", required=True, help="inputs .safetensors (input_ids)")
    run.add_argument("--outputs", required=True, help="outputs .safetensors to write")
    run.add_argument("--generate", type=int, default=4, metavar="N",
                     help="greedy tokens to generate (default 4, as gen; 0: logits only)")
    run.set_defaults(func=_cmd_run)

    cmp = sub.add_parser(
        "compare", help="check outputs against a golden file",
        description="Check ACTUAL against GOLDEN: logits elementwise |a-g| <= atol + rtol*|g|, "
                    "generated and exit_loop exactly equal (each when the golden has it). "
                    "Prints one summary "
                    "line per tensor, then PASS or FAIL: reason. Exit 0 on PASS, 1 on FAIL.")
    cmp.add_argument("--golden", required=True, help="golden .safetensors (from gen or run)")
    cmp.add_argument("--actual", required=True, help="backend output .safetensors")
    cmp.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                     help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    cmp.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                     help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    cmp.set_defaults(func=_cmd_compare)
    return parser


def main(argv=None):
    return ref.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
