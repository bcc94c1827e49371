#!/usr/bin/env python3
"""NumPy reference of LoopLM (Looped-MoE) checkpoints, arXiv 2605.09165.

Written from the published forward (the `modeling_loop_lm.py` of the
ml-ryanlee Looped-MoE checkpoints, as its public port documents it), not from
this compiler's IR:

  x = token_embeddings[ids]
  for each head layer, then num_stacks times the num_layers_in_stack stack
  layers (shared weights), then each tail layer:
      x = x + attn(rmsnorm(x))          # causal MHA, RoPE on pairs (2i, 2i+1),
                                        # scores q.k / d_k (muP), o = output_proj
      h = rmsnorm(x)
      p = softmax(h @ router.gate^T); top-k of p, renormalised to sum to 1
      x = x + sum_k p_k * (silu(h @ w1[e]) * (h @ w3[e])) @ w2[e]
                                        # w1, w3 [E, d, d_ff/k], w2 [E, d_ff/k, d]
  logits = rmsnorm(x) @ lm_head^T
  rmsnorm(x) = x / sqrt(mean(x^2) + 1e-5)   (no gain)

Head and tail layers have 8 experts.  Each attention's `rope.rotations` buffer
[context_length, d_k/2, 2, 2] must equal the table of rope_theta (checked).
The contract extensions apply to the stack: router_share_block /
router_decision, and the exit_* fields with the loop count num_stacks (the
freeze rule of docs/user-guide.md; the LM-head criteria read
softmax(lm_head(rmsnorm(state)))).

  looplm_reference.py gen --out DIR [--head-layers H --tail-layers T ...]
  looplm_reference.py run --model DIR --inputs X --outputs Y [--generate N]
Compare with `decoder_reference.py compare`."""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_reference as ref  # noqa: E402  (safetensors I/O)
import decoder_reference as dec  # noqa: E402  (checkpoint files, greedy_token)

ContractError = ref.ContractError
EPS = 1e-5
HEAD_TAIL_EXPERTS = 8
EXIT_AT_LEAST = ("cosine", "max_prob")
MIN_LOGIT_GAP = 1e-3
MIN_ROUTER_GAP = 1e-4
MIN_EXIT_GAP = 1e-4


class Model:
    def __init__(self, cfg):
        def need(name):
            if name not in cfg:
                raise ContractError(f"config: missing field '{name}'")
            return cfg[name]
        if cfg.get("model_type") not in ("loop-lm", "loop-moe"):
            raise ContractError("config: model_type must be 'loop-lm' or 'loop-moe'")
        self.vocab = need("vocab_size")
        self.context = need("context_length")
        self.d = need("d_model")
        self.heads = need("num_heads")
        self.d_ff = need("d_ff")
        self.theta = float(need("rope_theta"))
        self.L = need("num_layers_in_stack")
        self.R = need("num_stacks")
        self.E = need("num_experts")
        self.k = need("num_active")
        self.head_layers = cfg.get("num_head_layers", 0)
        self.tail_layers = cfg.get("num_tail_layers", 0)
        self.share = cfg.get("router_share_block", 1)
        self.decision = cfg.get("router_decision", "per_layer")
        self.criterion = cfg.get("exit_criterion", "none")
        self.tau = cfg.get("exit_threshold", 0.0)
        self.min_loops = cfg.get("exit_min_loops", 1)
        self.dk = self.d // self.heads
        self.f = self.d_ff // self.k
        self.exit_passes = [i for i in range(self.R - 1) if i + 1 >= self.min_loops] \
            if self.criterion != "none" else []

    def layers(self):
        """(prefix, experts, router prefix) of every layer in execution order of one
        forward (the stack once)."""
        out = []
        for i in range(self.head_layers):
            out.append(("head", f"model.head_layers.{i}", HEAD_TAIL_EXPERTS))
        for i in range(self.L):
            out.append(("stack", f"model.stack.layers.{i}", self.E))
        for i in range(self.tail_layers):
            out.append(("tail", f"model.tail_layers.{i}", HEAD_TAIL_EXPERTS))
        return out

    def shapes(self):
        s = {"model.token_embeddings.weight": (self.vocab, self.d)}
        for part, p, e in self.layers():
            for proj in ("q_proj", "k_proj", "v_proj", "output_proj"):
                s[f"{p}.attn.{proj}.weight"] = (self.d, self.d)
            s[f"{p}.attn.rope.rotations"] = (self.context, self.dk // 2, 2, 2)
            index = int(p.split(".")[-1])
            if part != "stack" or index % self.share == 0:
                s[f"{p}.router.gate.weight"] = (e, self.d)
            s[f"{p}.experts_w1"] = (e, self.d, self.f)
            s[f"{p}.experts_w3"] = (e, self.d, self.f)
            s[f"{p}.experts_w2"] = (e, self.f, self.d)
        s["model.lm_head.weight"] = (self.vocab, self.d)
        return s


def rotation_table(context, dk, theta):
    """[context, dk/2, 2, 2]: rows [[cos, -sin], [sin, cos]] of angle pos / theta^(2i/dk)."""
    pos = np.arange(context, dtype=np.float64)[:, None]
    angle = pos / theta ** (2 * np.arange(dk // 2, dtype=np.float64) / dk)[None, :]
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def rmsnorm(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)


def rope(x, table):
    """x [..., S, dk] rotated pairwise by table [S, dk/2, 2, 2]."""
    pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    out = np.einsum("sfij,...sfj->...sfi", table, pairs)
    return out.reshape(x.shape)


def attention(m, W, p, x, table):
    B, S, d = x.shape
    def heads(w):
        return (x @ W[w].T).reshape(B, S, m.heads, m.dk).transpose(0, 2, 1, 3)
    q = rope(heads(f"{p}.attn.q_proj.weight"), table)
    k = rope(heads(f"{p}.attn.k_proj.weight"), table)
    v = heads(f"{p}.attn.v_proj.weight")
    scores = q @ k.transpose(0, 1, 3, 2) / m.dk
    scores = np.where(np.tril(np.ones((S, S), bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    out = (scores @ v).transpose(0, 2, 1, 3).reshape(B, S, d)
    return out @ W[f"{p}.attn.output_proj.weight"].T


def moe(m, W, p, router, h, stats, routing=None):
    """Returns (output, routing); `routing` reuses a block's decision."""
    if routing is None:
        logits = h @ W[f"{router}.router.gate.weight"].T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        order = np.argsort(-probs, axis=-1, kind="stable")
        ids = order[..., :m.k]
        top = np.take_along_axis(probs, ids, -1)
        if stats is not None and probs.shape[-1] > m.k:
            nxt = np.take_along_axis(probs, order[..., m.k:m.k + 1], -1)[..., 0]
            stats["router_gap"] = min(stats["router_gap"], float(np.min(top[..., -1] - nxt)))
        routing = (ids, top / top.sum(-1, keepdims=True))
    ids, gates = routing
    w1, w3, w2 = (W[f"{p}.experts_w{i}"] for i in (1, 3, 2))
    out = np.zeros_like(h)
    for slot in range(m.k):
        e = ids[..., slot]
        a = np.einsum("bsd,bsdf->bsf", h, w1[e])
        b = np.einsum("bsd,bsdf->bsf", h, w3[e])
        y = np.einsum("bsf,bsfd->bsd", a / (1 + np.exp(-a)) * b, w2[e])
        out += gates[..., slot:slot + 1] * y
    return out, routing


def layer(m, W, part, p, x, table, stats, routing):
    x = x + attention(m, W, p, rmsnorm(x), table)
    h = rmsnorm(x)
    index = int(p.split(".")[-1])
    router = p
    reuse = None
    if part == "stack":
        head = index - index % m.share
        router = f"model.stack.layers.{head}"
        if m.decision == "block" and index != head:
            reuse = routing
    out, routing = moe(m, W, p, router, h, stats, reuse)
    return x + out, routing


def exit_values(m, W, after, before):
    if m.criterion in ("max_prob", "entropy"):
        logits = rmsnorm(after) @ W["model.lm_head.weight"].T
        logits = logits - logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        if m.criterion == "max_prob":
            return p.max(-1)
        return -np.sum(p * np.log(np.maximum(p, 1e-300)), -1)
    if m.criterion == "cosine":
        return np.sum(after * before, -1) / (np.linalg.norm(after, axis=-1) *
                                             np.linalg.norm(before, axis=-1))
    return np.linalg.norm(after - before, axis=-1) / np.linalg.norm(after, axis=-1)


def forward(m, W, ids, stats=None, tau=None):
    """(logits [B,S,V], exit_loop [B,S], exit values [R,B,S]) from position 0."""
    tau = m.tau if tau is None else tau
    S = ids.shape[1]
    table = rotation_table(S, m.dk, m.theta)
    x = W["model.token_embeddings.weight"][ids]
    layers = m.layers()
    for part, p, _ in layers:
        if part == "head":
            x, _ = layer(m, W, part, p, x, table, stats, None)
    active = np.ones(ids.shape, bool)
    exit_loop = np.full(ids.shape, m.R - 1, np.int32)
    values_seen = np.full((m.R,) + ids.shape, np.nan)
    for i in range(m.R):
        out, routing = x, None
        for part, p, _ in layers:
            if part == "stack":
                out, routing = layer(m, W, part, p, out, table, stats, routing)
        leaving = np.zeros_like(active)
        if i in m.exit_passes:
            values = exit_values(m, W, out, x)
            values_seen[i] = values
            if stats is not None and np.any(active):
                stats["exit_gap"] = min(stats["exit_gap"],
                                        float(np.min(np.abs(values[active] - tau))))
            hit = values >= tau if m.criterion in EXIT_AT_LEAST else values <= tau
            leaving = active & hit
            exit_loop[leaving] = i
        x = np.where(active[..., None], out, x)  # exited tokens stay frozen
        active &= ~leaving
    for part, p, _ in layers:
        if part == "tail":
            x, _ = layer(m, W, part, p, x, table, stats, None)
    return rmsnorm(x) @ W["model.lm_head.weight"].T, exit_loop, values_seen


def generate(m, W, ids, steps, stats=None):
    seq = np.asarray(ids, np.int64)
    prefill, exit_loop, generated = None, None, []
    for step in range(steps + 1):
        logits, el, _ = forward(m, W, seq, stats)
        if prefill is None:
            prefill, exit_loop = logits, el
        if step == steps:
            break
        nxt, gap = dec.greedy_token(logits[:, -1])
        if stats is not None:
            stats["logit_gap"] = min(stats["logit_gap"], float(np.min(gap)))
        generated.append(nxt)
        seq = np.concatenate([seq, nxt[:, None]], 1)
    gen = np.stack(generated, 1) if generated else np.zeros((seq.shape[0], 0), np.int64)
    return prefill, gen, exit_loop


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        m = Model(json.load(f))
    tensors = dec.read_checkpoint(model_dir)
    expected = m.shapes()
    for name in expected:
        if name not in tensors:
            raise ContractError(f"weights: missing tensor '{name}'")
    for name, t in tensors.items():
        if name not in expected:
            raise ContractError(f"weights: unexpected tensor '{name}'")
        if tuple(t.array.shape) != expected[name]:
            raise ContractError(f"weights: '{name}' has shape {list(t.array.shape)}, "
                                f"expected {list(expected[name])}")
    W = {n: t.array.astype(np.float64) for n, t in tensors.items()}
    table = rotation_table(m.context, m.dk, m.theta)
    for name in expected:
        if name.endswith(".rope.rotations") and not np.allclose(W[name], table, atol=1e-5):
            raise ContractError(f"weights: '{name}' is not the rotation table of "
                                f"rope_theta {m.theta}")
    return m, W


def run_files(model_dir, inputs, outputs, steps):
    m, W = load(model_dir)
    ids = ref.read_safetensors(inputs)["input_ids"].array.astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logits, gen, exit_loop = generate(m, W, ids, steps)
    out = dec.output_tensors(logits, gen, exit_loop if m.R > 1 else None)
    ref.write_safetensors(outputs, out, {"format": "pt"})
    return out


def random_weights(m, rng, output_scale=1.0):
    weights = {}
    for name, shape in m.shapes().items():
        if name.endswith(".rope.rotations"):
            value = rotation_table(m.context, m.dk, m.theta)
        elif name == "model.token_embeddings.weight":
            value = rng.standard_normal(shape)
        elif name.endswith("router.gate.weight") or name == "model.lm_head.weight":
            value = 2.0 / math.sqrt(m.d) * rng.standard_normal(shape)
        elif name.endswith("experts_w1") or name.endswith("experts_w3") or \
                name.endswith("experts_w2"):
            value = rng.standard_normal(shape) / math.sqrt(shape[1])  # fan_in = dim 1
        else:
            value = rng.standard_normal(shape) / math.sqrt(shape[1])
        if name.endswith("experts_w2") or name.endswith("output_proj.weight"):
            value = value * output_scale
        weights[name] = value.astype(np.float32)
    return weights


def tiny_config(head_layers=0, tail_layers=0, stacks=2, stack_layers=2, model_type="loop-lm",
                extensions=None):
    cfg = {"architectures": ["LoopLMForCausalLM"], "model_type": model_type,
           "model_variant": "looped-moe", "vocab_size": 97, "context_length": 64,
           "max_length": 64, "d_model": 32, "num_heads": 4, "d_ff": 48, "rope_theta": 10000.0,
           "width_ratio": 0.25, "num_layers": stack_layers * stacks,
           "num_layers_in_stack": stack_layers, "num_stacks": stacks, "num_experts": 4,
           "num_active": 2, "weight_tying": False, "lb_loss_factor": 0.01,
           "lz_loss_factor": 0.001, "dtype": "float32", "transformers_version": "5.3.0",
           "auto_map": {"AutoConfig": "modeling_loop_lm.LoopLMConfig",
                        "AutoModelForCausalLM": "modeling_loop_lm.LoopLMForCausalLM"}}
    if head_layers or tail_layers:
        cfg["num_head_layers"] = head_layers
        cfg["num_tail_layers"] = tail_layers
    cfg.update(extensions or {})
    return cfg


def choose_tau(m, values):
    """A threshold between the tested exit values that splits them, or None."""
    tested = values[m.exit_passes].ravel()
    tested = np.unique(tested[np.isfinite(tested)])
    best, best_key = None, None
    for tau in (tested[:-1] + tested[1:]) / 2:
        tau = float(f"{tau:.6g}")
        gap = float(np.min(np.abs(tested - tau)))
        hit = tested >= tau if m.criterion in EXIT_AT_LEAST else tested <= tau
        balance = min(np.sum(hit), np.sum(~hit))
        if gap < MIN_EXIT_GAP or balance == 0:
            continue
        key = (balance, gap)
        if best_key is None or key > best_key:
            best, best_key = tau, key
    return best


def gen_case(cfg, out_dir, seed=0, batch=2, seq=5, steps=4, shards=1):
    """Write config.json, a random checkpoint meeting the margins, inputs and golden."""
    m = Model(cfg)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for attempt in range(200):
            rng = np.random.default_rng([seed, attempt])
            scale = (1.0, 0.5, 0.25)[attempt % 3] if m.exit_passes else 1.0
            weights = random_weights(m, rng, scale)
            ids = rng.integers(0, m.vocab, size=(batch, seq)).astype(np.int32)
            W = {n: w.astype(np.float64) for n, w in weights.items()}
            if m.exit_passes:
                never = math.inf if m.criterion in EXIT_AT_LEAST else -math.inf
                _, _, values = forward(m, W, ids, tau=never)
                tau = choose_tau(m, values)
                if tau is None:
                    continue
                m.tau = cfg["exit_threshold"] = tau
            stats = {"router_gap": math.inf, "logit_gap": math.inf, "exit_gap": math.inf}
            _, _, exit_loop = generate(m, W, ids, steps, stats)
            if stats["router_gap"] < MIN_ROUTER_GAP or stats["logit_gap"] < MIN_LOGIT_GAP:
                continue
            if m.exit_passes and (stats["exit_gap"] < MIN_EXIT_GAP or
                                  len(np.unique(exit_loop)) < 2):
                continue
            break
        else:
            raise ContractError("gen: no draw met the margins in 200 tries")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    files = dec.write_checkpoint(out_dir, weights, shards)
    inputs = os.path.join(out_dir, "inputs.safetensors")
    ref.write_safetensors(inputs, {"input_ids": ids})
    golden = run_files(out_dir, inputs, os.path.join(out_dir, "golden.safetensors"), steps)
    print(f"wrote {cfg['model_type']} case to {out_dir} (seed {seed}, draw {attempt}): "
          f"{len(weights)} tensors in {', '.join(files)}; golden "
          + ", ".join(f"{n} {list(t.shape)}" for n, t in golden.items()))
    print(f"  min greedy top-2 logit gap {stats['logit_gap']:.3e}, "
          f"min router top-k gap {stats['router_gap']:.3e}")
    if m.exit_passes:
        print(f"  exit threshold {m.tau!r}, exit_loop of the prompt tokens "
              f"{np.bincount(golden['exit_loop'].ravel(), minlength=m.R).tolist()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="write a tiny random LoopLM case")
    g.add_argument("--out", required=True)
    g.add_argument("--config", help="start from this config.json instead of the tiny one")
    g.add_argument("--model-type", default="loop-lm", choices=("loop-lm", "loop-moe"))
    g.add_argument("--head-layers", type=int, default=0)
    g.add_argument("--tail-layers", type=int, default=0)
    g.add_argument("--stacks", type=int, default=2)
    g.add_argument("--stack-layers", type=int, default=2)
    g.add_argument("--share-block", type=int, default=1)
    g.add_argument("--decision", default="per_layer", choices=("per_layer", "block"))
    g.add_argument("--exit-criterion", default="none",
                   choices=("none", "cosine", "relative_l2", "max_prob", "entropy"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--seq", type=int, default=5)
    g.add_argument("--generate", type=int, default=4)
    g.add_argument("--shards", type=int, default=1)
    r = sub.add_parser("run", help="evaluate a checkpoint directory")
    r.add_argument("--model", required=True)
    r.add_argument("--inputs", required=True)
    r.add_argument("--outputs", required=True)
    r.add_argument("--generate", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "run":
            run_files(args.model, args.inputs, args.outputs, args.generate)
            return 0
        if args.config:
            with open(args.config) as f:
                cfg = json.load(f)
        else:
            ext = {}
            if args.share_block != 1:
                ext["router_share_block"] = args.share_block
            if args.decision != "per_layer":
                ext["router_decision"] = args.decision
            if args.exit_criterion != "none":
                ext.update(exit_criterion=args.exit_criterion, exit_threshold=0.0,
                           exit_min_loops=1)
            cfg = tiny_config(args.head_layers, args.tail_layers, args.stacks,
                              args.stack_layers, args.model_type, ext)
        gen_case(cfg, args.out, args.seed, args.batch, args.seq, args.generate, args.shards)
        return 0
    except ContractError as e:
        print(f"looplm_reference.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
