"""Tests of scripts/decoder_reference.py, the reference of the full MoE decoders
(mixtral, olmoe, qwen3_moe; MODEL_CONTRACT.md section 2).

Run with: python3 -m unittest discover -s test/reference

Expected values are computed here with plain python floats (math, lists), never
with the reference's own math helpers; numpy is only used to build inputs.
"""

import contextlib
import io
import json
import math
import os
import sys
import tempfile
import unittest

import numpy as np

_SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")
sys.path.insert(0, os.path.normpath(_SCRIPTS))
import decoder_reference as dec  # noqa: E402
import moe_reference as ref  # noqa: E402

MODEL_TYPES = ("mixtral", "olmoe", "qwen3_moe")


def quiet_main(argv):
    """Exit status and stdout of the CLI."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = dec.main(argv)
    return rc, out.getvalue() + err.getvalue()


def random_model(model_type, seed=0, **overrides):
    m = dec.parse_config(dec.tiny_config(model_type, **overrides))
    weights = dec.random_weights(m, np.random.default_rng(seed))
    return m, {n: w.astype(np.float64) for n, w in weights.items()}


def hand_softmax(xs):
    top = max(xs)
    es = [math.exp(x - top) for x in xs]
    return [e / sum(es) for e in es]


def hand_attention_head(q, k, v):
    """Causal softmax attention of one head; q, k, v: lists [S][hd]."""
    hd = len(q[0])
    out = []
    for i in range(len(q)):
        scores = [sum(a * b for a, b in zip(q[i], k[j])) / math.sqrt(hd) for j in range(i + 1)]
        p = hand_softmax(scores)
        out.append([sum(p[j] * v[j][c] for j in range(i + 1)) for c in range(hd)])
    return out


def hand_rms(xs, eps):
    r = math.sqrt(sum(x * x for x in xs) / len(xs) + eps)
    return [x / r for x in xs]


def matvec(w, x):
    return [sum(a * b for a, b in zip(row, x)) for row in w]


class RopeTest(unittest.TestCase):
    def test_rotate_half_at_position_3(self):
        x = [1.0, 2.0, 3.0, 4.0]
        cos, sin = dec.rope_tables([3], 4, 10000.0)
        got = dec.apply_rope(np.array([x]), cos, sin)[0]
        # inv_freq = [1, 10000^(-2/4)] = [1, 0.01]; angles (3, 0.03) for pairs (0,2), (1,3)
        a, b = 3.0, 0.03
        expected = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                    3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)

    def test_position_0_is_identity(self):
        cos, sin = dec.rope_tables([0], 8, 1e6)
        x = np.arange(8.0)[None]
        np.testing.assert_array_equal(dec.apply_rope(x, cos, sin), x)

    def test_linear_scaling_divides_every_frequency(self):
        plain, _ = dec.rope_frequencies(8, 1e4, None, 64)
        scaled, attention = dec.rope_frequencies(8, 1e4, {"type": "linear", "factor": 2.0}, 64)
        np.testing.assert_array_equal(scaled, plain / 2.0)
        self.assertEqual(attention, 1.0)

    def test_qwen3_yarn(self):
        # Qwen3's long-context setting, worked by hand: head_dim 128, theta 1e6 and an
        # original context of 32768 give pairs that turn 32 times at
        # 128 ln(32768 / 64 pi) / (2 ln 1e6) = 23.7 (floor 23) and once at 39.6 (ceil 40).
        plain, _ = dec.rope_frequencies(128, 1e6, None, None)
        scaled, attention = dec.rope_frequencies(
            128, 1e6, {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 32768}, 40960)
        np.testing.assert_array_equal(scaled[:24], plain[:24])
        np.testing.assert_allclose(scaled[40:], plain[40:] / 4.0, rtol=1e-15)
        # Pair 32 is 9/17 of the way along the ramp.
        r = (32 - 23) / 17
        np.testing.assert_allclose(scaled[32], plain[32] * ((1 - r) + r / 4.0), rtol=1e-15)
        self.assertAlmostEqual(attention, 0.1 * math.log(4.0) + 1.0, places=15)
        cos, sin = dec.rope_tables([0], 128, 1e6, scaled, attention)
        np.testing.assert_allclose(cos, attention)

    def test_unsupported_rope_type_is_an_error(self):
        with self.assertRaisesRegex(dec.ContractError, "'dynamic' is not supported"):
            dec.rope_frequencies(8, 1e4, {"rope_type": "dynamic", "factor": 2.0}, 64)


class AttentionTest(unittest.TestCase):
    def test_gqa_head_h_reads_kv_head_h_div_group(self):
        rng = np.random.default_rng(1)
        H, KV, S, hd = 4, 2, 3, 2
        q = rng.standard_normal((1, H, S, hd))
        k = rng.standard_normal((1, KV, S, hd))
        v = rng.standard_normal((1, KV, S, hd))
        got = dec.grouped_causal_attention(q, k, v)
        for h in range(H):
            kv = h // (H // KV)  # heads 0,1 -> kv 0; heads 2,3 -> kv 1
            expected = hand_attention_head(q[0, h].tolist(), k[0, kv].tolist(), v[0, kv].tolist())
            np.testing.assert_allclose(got[0, h], expected, rtol=1e-12, atol=1e-12)
        self.assertEqual([dec.kv_head_of(h, 4, 2) for h in range(4)], [0, 0, 1, 1])
        self.assertEqual([dec.kv_head_of(h, 8, 2) for h in range(8)], [0, 0, 0, 0, 1, 1, 1, 1])

    def test_constant_values_identify_the_kv_head(self):
        q = np.ones((1, 4, 2, 2))
        k = np.zeros((1, 2, 2, 2))
        v = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 20.0)])[None]
        got = dec.grouped_causal_attention(q, k, v)
        self.assertEqual(got[0, :, 1, 0].tolist(), [10.0, 10.0, 20.0, 20.0])

    def test_causal_mask_whole_model(self):
        # logits at positions < 3 must not depend on the tokens from position 3 on
        for model_type in MODEL_TYPES:
            m, W = random_model(model_type, seed=2)
            ids = np.array([[5, 17, 42, 8, 60, 3]])
            changed = ids.copy()
            changed[0, 3:] = [90, 1, 77]
            a, b = dec.forward(m, W, ids), dec.forward(m, W, changed)
            np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=0, atol=1e-12,
                                       err_msg=model_type)
            self.assertGreater(np.max(np.abs(a[:, 3:] - b[:, 3:])), 1e-3, model_type)


class QKNormTest(unittest.TestCase):
    """d = 4, H = 2, KV = 1, hd = 2, one token: OLMoE's full-width norm then clip
    vs Qwen3's per-head norm on the same projection weights."""
    X = [0.5, -1.0, 2.0, 1.5]
    WQ = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]]
    WK = [[0.0, 1.0, 0.0, -1.0], [3.0, 0.0, 1.0, 0.0]]
    WV = [[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, -3.0, 0.0]]
    EPS = 1e-6
    CLIP = 1.2

    def states(self, model_type, norm_width_q, norm_width_k, **cfg):
        m = dec.parse_config(dec.tiny_config(model_type, hidden_size=4, num_attention_heads=2,
                                             num_key_value_heads=1, head_dim=2,
                                             rms_norm_eps=self.EPS, **cfg))
        p = "model.layers.0.self_attn"
        W = {f"{p}.q_proj.weight": np.array(self.WQ), f"{p}.k_proj.weight": np.array(self.WK),
             f"{p}.v_proj.weight": np.array(self.WV),
             f"{p}.q_norm.weight": np.ones(norm_width_q), f"{p}.k_norm.weight": np.ones(norm_width_k)}
        q, k, v = dec.qkv_states(m, W, 0, np.array([[self.X]]))
        return q[0, :, 0].tolist(), k[0, :, 0].tolist(), v[0, :, 0].tolist()

    def test_olmoe_full_width_norm_then_clip(self):
        q, k, v = self.states("olmoe", 4, 2, clip_qkv=self.CLIP)
        clip = lambda xs: [min(max(x, -self.CLIP), self.CLIP) for x in xs]  # noqa: E731
        qn = clip(hand_rms(matvec(self.WQ, self.X), self.EPS))   # over all 4 = H*hd
        kn = clip(hand_rms(matvec(self.WK, self.X), self.EPS))   # over all 2 = KV*hd
        vn = clip(matvec(self.WV, self.X))                       # v: clipped, not normed
        np.testing.assert_allclose(q, [qn[0:2], qn[2:4]], rtol=1e-12)
        np.testing.assert_allclose(k, [kn], rtol=1e-12)
        np.testing.assert_allclose(v, [vn], rtol=1e-12)
        self.assertEqual(vn, [self.CLIP, -self.CLIP])  # the clamp acts on this input

    def test_qwen_per_head_norm(self):
        q, k, v = self.states("qwen3_moe", 2, 2)
        qp = matvec(self.WQ, self.X)
        np.testing.assert_allclose(q, [hand_rms(qp[0:2], self.EPS), hand_rms(qp[2:4], self.EPS)],
                                   rtol=1e-12)
        np.testing.assert_allclose(k, [hand_rms(matvec(self.WK, self.X), self.EPS)], rtol=1e-12)
        np.testing.assert_allclose(v, [matvec(self.WV, self.X)], rtol=1e-12)  # no clamp

    def test_olmoe_and_qwen_differ(self):
        qo, _, vo = self.states("olmoe", 4, 2, clip_qkv=self.CLIP)
        qq, _, vq = self.states("qwen3_moe", 2, 2)
        self.assertGreater(np.max(np.abs(np.array(qo) - np.array(qq))), 0.1)
        self.assertGreater(np.max(np.abs(np.array(vo) - np.array(vq))), 0.1)

    def test_clip_changes_the_olmoe_model(self):
        m, W = random_model("olmoe", seed=3, clip_qkv=0.5)
        free = dec.parse_config(dec.tiny_config("olmoe", clip_qkv=None))
        ids = np.array([[4, 8, 15, 16]])
        self.assertGreater(np.max(np.abs(dec.forward(m, W, ids) - dec.forward(free, W, ids))),
                           1e-3)


class RouterTest(unittest.TestCase):
    LOGITS = [1.0, 3.0, 2.0, 0.0]

    def test_topk_and_renormalisation_per_model_type(self):
        p = hand_softmax(self.LOGITS)
        raw, norm = [p[1], p[2]], [p[1] / (p[1] + p[2]), p[2] / (p[1] + p[2])]
        for model_type, overrides, expected in (
                ("mixtral", {}, norm),                        # always renormalised
                ("olmoe", {"norm_topk_prob": False}, raw),
                ("olmoe", {"norm_topk_prob": True}, norm),
                ("qwen3_moe", {"norm_topk_prob": True}, norm),
                ("qwen3_moe", {"norm_topk_prob": False}, raw)):
            m = dec.parse_config(dec.tiny_config(model_type, **overrides))
            ids, gates, gap = dec.route(m, np.array([self.LOGITS]))
            self.assertEqual(ids.tolist(), [[1, 2]], model_type)
            np.testing.assert_allclose(gates[0], expected, rtol=1e-12, err_msg=model_type)
            self.assertAlmostEqual(float(gap[0]), p[2] - p[0], places=12)

    def test_ties_pick_the_lower_index(self):
        m = dec.parse_config(dec.tiny_config("mixtral"))
        ids, _, gap = dec.route(m, np.array([[0.0, 1.0, 0.0, 1.0]]))
        self.assertEqual(ids.tolist(), [[1, 3]])
        ids, _, gap = dec.route(m, np.array([[2.0, 1.0, 1.0, 1.0]]))
        self.assertEqual(ids.tolist(), [[0, 1]])
        self.assertEqual(float(gap[0]), 0.0)


class GreedyTest(unittest.TestCase):
    def test_generation_is_argmax_append_rerun(self):
        for model_type in MODEL_TYPES:
            m, W = random_model(model_type, seed=4)
            prompt = [[3, 14, 15, 92], [65, 35, 89, 79]]
            prefill, generated = dec.generate(m, W, np.array(prompt), 3)
            seqs = [list(s) for s in prompt]
            expected = [[], []]
            for step in range(3):
                logits = dec.forward(m, W, np.array(seqs))
                if step == 0:
                    np.testing.assert_array_equal(prefill, logits)
                for b in range(2):
                    row = logits[b, -1].tolist()
                    best = max(range(len(row)), key=lambda i: (row[i], -i))
                    expected[b].append(best)
                    seqs[b].append(best)
            self.assertEqual(generated.tolist(), expected, model_type)

    def test_ties_go_to_the_lowest_id(self):
        ids, gap = dec.greedy_token(np.array([[0.0, 2.0, 2.0, 1.0], [5.0, 1.0, 5.0, 4.0]]))
        self.assertEqual(ids.tolist(), [1, 0])
        self.assertEqual(gap.tolist(), [0.0, 0.0])


class CheckpointTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def gen(self, model_type, name, *extra):
        path = os.path.join(self.tmp, name)
        rc, out = quiet_main(["gen", "--model-type", model_type, "--out", path, "--seed", "7",
                              "--batch", "2", "--seq", "4", "--generate", "3", *extra])
        self.assertEqual(rc, 0, out)
        return path

    def run_cli(self, model_dir, inputs, name, generate="3"):
        out_path = os.path.join(self.tmp, name)
        rc, out = quiet_main(["run", "--model", model_dir, "--inputs", inputs,
                              "--outputs", out_path, "--generate", generate])
        self.assertEqual(rc, 0, out)
        return out_path

    def read(self, path):
        return {n: t.array for n, t in ref.read_safetensors(path).items()}

    def test_sharded_and_single_file_agree(self):
        for model_type in MODEL_TYPES:
            single = self.gen(model_type, f"{model_type}-single")
            sharded = self.gen(model_type, f"{model_type}-sharded", "--shards", "3")
            self.assertEqual(sorted(os.listdir(sharded)), [
                "config.json", "golden.safetensors", "inputs.safetensors",
                "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"])
            with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
                index = json.load(f)
            m = dec.load_config(os.path.join(sharded, "config.json"))
            shapes = dec.expected_weight_shapes(m)
            self.assertEqual(set(index["weight_map"]), set(shapes))
            self.assertEqual(len(set(index["weight_map"].values())), 3)
            self.assertEqual(index["metadata"]["total_size"],
                             sum(4 * math.prod(s) for s in shapes.values()))
            inputs = os.path.join(single, "inputs.safetensors")
            a = self.run_cli(single, inputs, f"{model_type}-a.safetensors")
            b = self.run_cli(sharded, inputs, f"{model_type}-b.safetensors")
            with open(a, "rb") as fa, open(b, "rb") as fb:
                self.assertEqual(fa.read(), fb.read(), model_type)
            golden = self.read(os.path.join(single, "golden.safetensors"))
            out = self.read(a)
            np.testing.assert_array_equal(out["logits"], golden["logits"])
            self.assertEqual(golden["logits"].shape, (2, 4, 97))
            self.assertEqual(golden["generated"].shape, (2, 3))
            self.assertEqual(golden["generated"].dtype, np.int32)

    def test_tensor_names_per_model_type(self):
        shapes = {t: dec.expected_weight_shapes(dec.parse_config(dec.tiny_config(t)))
                  for t in MODEL_TYPES}
        mix, olm, qwen = shapes["mixtral"], shapes["olmoe"], shapes["qwen3_moe"]
        self.assertEqual(mix["model.layers.1.block_sparse_moe.experts.3.w1.weight"], (48, 32))
        self.assertEqual(mix["model.layers.1.block_sparse_moe.experts.3.w2.weight"], (32, 48))
        self.assertEqual(mix["model.layers.0.block_sparse_moe.gate.weight"], (4, 32))
        self.assertEqual(mix["model.layers.0.self_attn.k_proj.weight"], (16, 32))
        self.assertNotIn("model.layers.0.self_attn.q_norm.weight", mix)
        self.assertEqual(olm["model.layers.0.self_attn.q_norm.weight"], (32,))
        self.assertEqual(olm["model.layers.0.self_attn.k_norm.weight"], (16,))
        self.assertEqual(olm["model.layers.1.mlp.experts.2.down_proj.weight"], (32, 48))
        self.assertEqual(qwen["model.layers.0.self_attn.q_norm.weight"], (8,))
        self.assertEqual(qwen["model.layers.0.self_attn.k_norm.weight"], (8,))
        self.assertEqual(qwen["model.layers.1.mlp.experts.0.gate_proj.weight"], (48, 32))
        for s in shapes.values():
            self.assertEqual(s["lm_head.weight"], (97, 32))
            self.assertEqual(s["model.embed_tokens.weight"], (97, 32))
            self.assertEqual(s["model.norm.weight"], (32,))
        self.assertEqual((len(mix), len(olm), len(qwen)), (41, 45, 45))

    def test_bad_checkpoints_are_rejected(self):
        path = self.gen("qwen3_moe", "bad")
        inputs = os.path.join(path, "inputs.safetensors")
        weights = self.read(os.path.join(path, "model.safetensors"))
        del weights["model.layers.1.mlp.gate.weight"]
        ref.write_safetensors(os.path.join(path, "model.safetensors"), weights)
        rc, out = quiet_main(["run", "--model", path, "--inputs", inputs,
                              "--outputs", os.path.join(self.tmp, "x.safetensors")])
        self.assertEqual(rc, 2)
        self.assertIn("model.layers.1.mlp.gate.weight", out)

    def test_gen_extensions(self):
        for model_type, extra, loops in (
                ("mixtral", ["--share-block", "2", "--decision", "block"], 1),
                ("olmoe", ["--loops", "2", "--exit-criterion", "cosine"], 2),
                ("qwen3_moe", ["--loops", "3", "--exit-criterion", "relative_l2",
                               "--share-block", "2"], 3)):
            path = self.gen(model_type, f"{model_type}-ext", *extra)
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
            fields = {n: config[n] for n in ("router_share_block", "router_decision", "num_loops",
                                             "exit_criterion", "exit_threshold",
                                             "exit_min_loops")}
            self.assertEqual(fields["num_loops"], loops)
            m = dec.load_config(os.path.join(path, "config.json"))
            golden = self.read(os.path.join(path, "golden.safetensors"))
            if loops == 1:
                self.assertEqual(fields["router_decision"], "block")
                self.assertNotIn("exit_loop", golden)
                self.assertNotIn("model.layers.1.block_sparse_moe.gate.weight",
                                 self.read(os.path.join(path, "model.safetensors")))
            else:
                self.assertEqual(golden["exit_loop"].dtype, np.int32)
                self.assertEqual(golden["exit_loop"].shape, (2, 4))
                # some exit after pass 0, some run every pass
                self.assertIn(0, golden["exit_loop"])
                self.assertIn(loops - 1, golden["exit_loop"])
                self.assertNotEqual(fields["exit_threshold"], 0.0)
                self.assertEqual(m.exit_passes, list(range(loops - 1)))
            inputs = os.path.join(path, "inputs.safetensors")
            out = self.run_cli(path, inputs, f"{model_type}-ext.safetensors")
            rc, text = quiet_main(["compare", "--golden", os.path.join(path, "golden.safetensors"),
                                   "--actual", out])
            self.assertEqual(rc, 0, text)
            self.assertEqual("exit_loop:" in text, loops > 1)

    def test_gen_without_a_tested_pass_is_an_error(self):
        path = os.path.join(self.tmp, "none")
        rc, out = quiet_main(["gen", "--model-type", "olmoe", "--out", path, "--loops", "2",
                              "--exit-criterion", "cosine", "--exit-min-loops", "2"])
        self.assertEqual(rc, 2, out)
        self.assertIn("tests no pass", out)

    def test_gen_set_overrides_config_fields(self):
        path = os.path.join(self.tmp, "set")
        rc, out = quiet_main(["gen", "--model-type", "olmoe", "--out", path, "--generate", "0",
                              "--set", "vocab_size=128", "--set", "max_position_embeddings=96"])
        self.assertEqual(rc, 0, out)
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        self.assertEqual((config["vocab_size"], config["max_position_embeddings"]), (128, 96))
        for bad in ("vocab_size", "=128", "vocab_size=oops"):
            rc, out = quiet_main(["gen", "--model-type", "olmoe", "--out", path, "--set", bad])
            self.assertEqual(rc, 2, out)
            self.assertIn(f"gen: --set needs FIELD=JSON, got {bad!r}", out)

    def test_regenerating_replaces_stale_weight_files(self):
        path = self.gen("mixtral", "regen", "--shards", "2")
        self.gen("mixtral", "regen")
        self.assertNotIn("model.safetensors.index.json", os.listdir(path))
        self.gen("mixtral", "regen", "--shards", "2")
        self.assertNotIn("model.safetensors", os.listdir(path))


def extended_model(model_type, seed=0, output_scale=1.0, **overrides):
    """A tiny model with contract extension fields and its float64 weights."""
    m = dec.parse_config(dec.tiny_config(model_type, **overrides))
    weights = dec.random_weights(m, np.random.default_rng(seed), output_scale)
    return m, {n: w.astype(np.float64) for n, w in weights.items()}


def with_fields(m, **fields):
    """The same model with other extension values (same weights apply)."""
    import dataclasses
    return dataclasses.replace(m, **fields)


def hand_cosine(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


class ExtensionConfigTest(unittest.TestCase):
    def test_defaults_and_values(self):
        m = dec.parse_config(dec.tiny_config("olmoe"))
        self.assertEqual((m.router_share_block, m.router_decision, m.num_loops, m.exit_criterion,
                          m.exit_threshold, m.exit_min_loops), (1, "per_layer", 1, "none", 0.0, 1))
        m = dec.parse_config(dec.tiny_config("mixtral", router_share_block=2,
                                              router_decision="block", num_loops=3,
                                              exit_criterion="cosine", exit_threshold=0.9,
                                              exit_min_loops=2))
        self.assertEqual([m.router_head(l) for l in range(2)], [0, 0])
        self.assertEqual(m.exit_passes, [1])  # after pass 1 only: i+1 >= 2 and i < K-1

    def test_bad_fields_are_rejected(self):
        for overrides, needle in (({"exit_criterion": "l1"}, "exit_criterion"),
                                  ({"router_decision": "path"}, "router_decision"),
                                  ({"router_share_block": 0}, "router_share_block"),
                                  ({"num_loops": 0}, "num_loops"),
                                  ({"num_loops": 2.0}, "num_loops"),
                                  ({"exit_min_loops": -1}, "exit_min_loops")):
            with self.assertRaises(dec.ContractError, msg=str(overrides)) as cm:
                dec.parse_config(dec.tiny_config("qwen3_moe", **overrides))
            self.assertIn(needle, str(cm.exception))

    def test_lm_head_exit_values(self):
        """max_prob and entropy of softmax(lm_head(model.norm(h))), by hand."""
        import math
        rng = np.random.default_rng(3)
        for criterion in ("max_prob", "entropy"):
            m = dec.parse_config(dec.tiny_config("mixtral", num_loops=2,
                                                  exit_criterion=criterion,
                                                  exit_threshold=0.5))
            d, V = m.hidden_size, m.vocab_size
            W = {"model.norm.weight": 1 + 0.1 * rng.standard_normal(d),
                 "lm_head.weight": rng.standard_normal((V, d)),
                 "model.embed_tokens.weight": rng.standard_normal((V, d))}
            h = rng.standard_normal((1, 2, d))
            got = dec.exit_values(m, h, h * 0.5, W)
            for t in range(2):
                row = [float(v) for v in h[0, t]]
                rms = math.sqrt(sum(v * v for v in row) / d + m.rms_norm_eps)
                normed = [row[i] / rms * W["model.norm.weight"][i] for i in range(d)]
                logits = [sum(normed[i] * W["lm_head.weight"][v][i] for i in range(d))
                          for v in range(V)]
                top = max(logits)
                z = sum(math.exp(x - top) for x in logits)
                p = [math.exp(x - top) / z for x in logits]
                want = max(p) if criterion == "max_prob" else -sum(q * math.log(q) for q in p)
                self.assertAlmostEqual(float(got[0, t]), want, places=9)
            # max_prob exits at or above tau, entropy at or below.
            self.assertEqual(bool(dec.exit_satisfied(m, np.array([0.6]))[0]),
                             criterion == "max_prob")

    def test_a_dense_block_head_is_rejected(self):
        with self.assertRaises(dec.ContractError) as cm:
            dec.parse_config(dec.tiny_config("qwen3_moe", mlp_only_layers=[0],
                                              router_share_block=2))
        self.assertIn("layer 0, is a dense MLP layer", str(cm.exception))

    def test_only_block_heads_hold_a_router(self):
        for model_type, moe in (("mixtral", "block_sparse_moe"), ("olmoe", "mlp"),
                                ("qwen3_moe", "mlp")):
            m = dec.parse_config(dec.tiny_config(model_type, num_hidden_layers=5,
                                                  router_share_block=2))
            gates = sorted(n for n in dec.expected_weight_shapes(m) if n.endswith(".gate.weight"))
            self.assertEqual(gates, [f"model.layers.{l}.{moe}.gate.weight" for l in (0, 2, 4)])


class PathMoETest(unittest.TestCase):
    IDS = np.array([[5, 17, 42, 8, 60, 3], [1, 2, 30, 4, 50, 6]])

    def test_block_decision_reuses_the_head_ids(self):
        for model_type in MODEL_TYPES:
            block, W = extended_model(model_type, seed=6, router_share_block=2,
                                      router_decision="block", num_loops=2)
            per_layer = with_fields(block, router_decision="per_layer")
            tb, tp = dec.Trace(), dec.Trace()
            lb = dec.forward(block, W, self.IDS, trace=tb)
            lp = dec.forward(per_layer, W, self.IDS, trace=tp)  # W has no layer-1 router
            for i in range(2):  # within each pass, layer 1 takes layer 0's ids
                np.testing.assert_array_equal(tb.expert_ids[i][1], tb.expert_ids[i][0])
            # ... of that pass: the second pass routes again
            self.assertTrue(np.any(tb.expert_ids[1][0] != tb.expert_ids[0][0]), model_type)
            # per_layer: layer 1 routes its own input with layer 0's router
            np.testing.assert_array_equal(tp.expert_ids[0][0], tb.expert_ids[0][0])
            self.assertTrue(np.any(tp.expert_ids[0][1] != tp.expert_ids[0][0]), model_type)
            self.assertGreater(np.max(np.abs(lb - lp)), 1e-3, model_type)

    def test_per_layer_routes_with_the_head_router(self):
        # per_layer with B=2 equals B=1 whose layer-1 router is a copy of layer 0's
        for model_type in MODEL_TYPES:
            shared, W = extended_model(model_type, seed=7, router_share_block=2)
            plain = dec.parse_config(dec.tiny_config(model_type))
            moe = "block_sparse_moe" if model_type == "mixtral" else "mlp"
            W1 = dict(W)
            W1[f"model.layers.1.{moe}.gate.weight"] = W[f"model.layers.0.{moe}.gate.weight"]
            np.testing.assert_array_equal(dec.forward(shared, W, self.IDS),
                                          dec.forward(plain, W1, self.IDS))


class LoopTest(unittest.TestCase):
    IDS = np.array([[5, 17, 42, 8, 60, 3, 71], [1, 2, 30, 4, 50, 6, 88]])

    @staticmethod
    def unrolled(m, W):
        """The K-loop model written out as a K*L-layer model with num_loops 1:
        layer i*L + l is a copy of layer l (its own attention, so its own cache)."""
        L, K = m.num_layers, m.num_loops
        W2 = {}
        for name, w in W.items():
            parts = name.split(".")
            if parts[:2] == ["model", "layers"]:
                for i in range(K):
                    W2[".".join(parts[:2] + [str(i * L + int(parts[2]))] + parts[3:])] = w
            else:
                W2[name] = w
        return with_fields(m, num_layers=K * L, num_loops=1,
                           sparse_layers=m.sparse_layers * K), W2

    def test_two_loops_without_exits_equal_the_unrolled_model(self):
        for model_type, fields in (("mixtral", {}),
                                   ("olmoe", {"router_share_block": 2,
                                              "router_decision": "block"}),
                                   ("qwen3_moe", {"router_share_block": 2})):
            m, W = extended_model(model_type, seed=8, num_loops=2, **fields)
            m2, W2 = self.unrolled(m, W)
            self.assertEqual(len(W2) - len(W), len([n for n in W if ".layers." in n]))
            np.testing.assert_allclose(dec.forward(m, W, self.IDS), dec.forward(m2, W2, self.IDS),
                                       rtol=1e-12, atol=1e-12, err_msg=model_type)
            prefill, gen = dec.generate(m, W, self.IDS, 3)
            prefill2, gen2 = dec.generate(m2, W2, self.IDS, 3)
            np.testing.assert_array_equal(gen, gen2)
            # and they differ from one pass
            self.assertGreater(np.max(np.abs(prefill - dec.forward(
                with_fields(m, num_loops=1), W, self.IDS))), 1e-3)
            # an exit criterion that never fires changes nothing
            never = with_fields(m, exit_criterion="cosine", exit_threshold=2.0)
            t = dec.Trace()
            np.testing.assert_array_equal(dec.forward(never, W, self.IDS, trace=t), prefill)
            self.assertEqual(t.exit_loop.tolist(), [[1] * 7] * 2)


class FreezeRuleTest(unittest.TestCase):
    """K = 3 with cosine exits, checked against a hand-written loop."""
    IDS = np.array([[5, 17, 42, 8, 60, 3, 71, 23], [1, 2, 30, 4, 50, 6, 88, 9]])

    def setup_model(self, model_type):
        m, W = extended_model(model_type, seed=9, output_scale=0.25, num_loops=3,
                              exit_criterion="cosine")
        dry = dec.Trace()
        dec.forward(with_fields(m, exit_threshold=2.0), W, self.IDS, trace=dry)
        v0, v1 = dry.exit_values[0], dry.exit_values[1]
        # a tau under which a token exits after pass 0 and a later token of the same
        # sequence runs all three passes (the test needs both)
        for tau in sorted(np.concatenate([v0.ravel(), v1.ravel()]) - 1e-6):
            first = v0 >= tau
            full = (v0 < tau) & (v1 < tau)
            for b in range(self.IDS.shape[0]):
                exited = np.nonzero(first[b])[0]
                later = [t for t in np.nonzero(full[b])[0] if exited.size and t > exited[0]]
                if later:
                    return with_fields(m, exit_threshold=float(tau)), W, b, int(exited[0]), \
                        int(later[0])
        self.fail(f"{model_type}: no threshold gives an early and a late token")

    @staticmethod
    def layers(m, W, h):
        """One pass of the L layers over hidden states h [B,S,d], from the layer pieces."""
        cos, sin = dec.model_rope_tables(m, np.arange(h.shape[1]))
        eps, decisions = m.rms_norm_eps, {}
        for l in range(m.num_layers):
            p = f"model.layers.{l}"
            h = h + dec.attention(m, W, l, dec.rmsnorm(h, W[f"{p}.input_layernorm.weight"], eps),
                                  cos, sin)
            h = h + dec.feed_forward(m, W, l, dec.rmsnorm(
                h, W[f"{p}.post_attention_layernorm.weight"], eps), None, decisions)
        return h

    def hand_loop(self, m, W, frozen_input_for_pass2=True):
        """The freeze rule written out: returns (logits, exit_loop)."""
        B, S = self.IDS.shape
        h = W["model.embed_tokens.weight"][self.IDS]
        exit_loop = [[2] * S for _ in range(B)]
        for i in range(3):
            start = h.copy()
            if i == 2 and not frozen_input_for_pass2:  # the wrong rule, for contrast
                start = self.unfrozen
            out = self.layers(m, W, start)
            if i == 1:
                self.unfrozen = out
            for b in range(B):
                for t in range(S):
                    if exit_loop[b][t] < i:
                        continue  # exited earlier: the pass's result is discarded
                    h[b, t] = out[b, t]
                    if i < 2 and hand_cosine(out[b, t], start[b, t]) >= m.exit_threshold:
                        exit_loop[b][t] = i
        w = W["model.norm.weight"].tolist()
        logits = np.zeros(self.IDS.shape + (m.vocab_size,))
        for b in range(B):
            for t in range(S):
                n = [x * wi for x, wi in zip(hand_rms(h[b, t].tolist(), m.rms_norm_eps), w)]
                logits[b, t] = matvec(W["lm_head.weight"].tolist(), n)
        return logits, exit_loop

    def test_frozen_state_and_later_kv(self):
        for model_type in MODEL_TYPES:
            m, W, b, early, late = self.setup_model(model_type)
            trace = dec.Trace()
            logits = dec.forward(m, W, self.IDS, trace=trace)
            self.assertEqual(trace.exit_loop[b, early], 0, model_type)
            self.assertEqual(trace.exit_loop[b, late], 2, model_type)
            # the exited token's state stays what it was after pass 0 ...
            for i in (2, 3):
                np.testing.assert_array_equal(trace.states[i][b, early], trace.states[1][b, early])
            # ... although later passes computed something else for it
            self.assertGreater(np.max(np.abs(trace.outputs[2][b, early] -
                                             trace.states[1][b, early])), 1e-3)
            # the whole model agrees with the hand-written loop
            hand, hand_exit = self.hand_loop(m, W)
            self.assertEqual(trace.exit_loop.tolist(), hand_exit, model_type)
            np.testing.assert_allclose(logits, hand, rtol=1e-9, atol=1e-9, err_msg=model_type)
            # the exited token's logits are model.norm + lm_head of its state after pass 0
            n = [x * w for x, w in zip(hand_rms(trace.states[1][b, early].tolist(),
                                                m.rms_norm_eps), W["model.norm.weight"].tolist())]
            np.testing.assert_allclose(logits[b, early], matvec(W["lm_head.weight"].tolist(), n),
                                       rtol=1e-9, atol=1e-9)
            # the late token's logits depend on the K/V the exited token's pass 2 computed
            # from its frozen state: starting that pass from its unfrozen state differs
            wrong, _ = self.hand_loop(m, W, frozen_input_for_pass2=False)
            self.assertGreater(np.max(np.abs(wrong[b, late] - logits[b, late])), 1e-6,
                               model_type)
            np.testing.assert_allclose(wrong[b, :early + 1], logits[b, :early + 1],
                                       rtol=1e-9, atol=1e-9)

    def test_exit_min_loops(self):
        m, W, b, early, late = self.setup_model("olmoe")
        base = dec.Trace()
        dec.forward(m, W, self.IDS, trace=base)
        self.assertTrue(np.any(base.exit_loop == 0))
        later = dec.Trace()
        dec.forward(with_fields(m, exit_min_loops=2), W, self.IDS, trace=later)
        self.assertTrue(np.all(later.exit_loop >= 1))
        self.assertTrue(np.all(np.isnan(later.exit_values[0])))  # pass 0 not tested
        self.assertTrue(np.any(later.exit_loop == 1))
        for min_loops in (3, 7):  # no pass is tested: the plain three-pass model
            t = dec.Trace()
            logits = dec.forward(with_fields(m, exit_min_loops=min_loops), W, self.IDS, trace=t)
            self.assertTrue(np.all(t.exit_loop == 2))
            np.testing.assert_array_equal(
                logits, dec.forward(with_fields(m, exit_criterion="none"), W, self.IDS))

    def test_decisions_depend_only_on_earlier_tokens(self):
        # so the prefix's exits in a longer sequence (generation) are the prefill's
        m, W, b, early, late = self.setup_model("qwen3_moe")
        short, longer = dec.Trace(), dec.Trace()
        dec.forward(m, W, self.IDS[:, :5], trace=short)
        dec.forward(m, W, self.IDS, trace=longer)
        np.testing.assert_array_equal(longer.exit_loop[:, :5], short.exit_loop)


class CompareTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.golden = os.path.join(self.tmp, "golden.safetensors")
        logits = np.random.default_rng(5).standard_normal((2, 3, 11)).astype(np.float32)
        self.ref_logits = logits
        self.generated = np.array([[1, 2], [3, 4]], dtype=np.int32)
        ref.write_safetensors(self.golden, {"logits": logits, "generated": self.generated})

    def compare(self, logits, generated=None, *extra):
        actual = os.path.join(self.tmp, "actual.safetensors")
        tensors = {"logits": logits.astype(np.float32)}
        if generated is not None:
            tensors["generated"] = generated
        ref.write_safetensors(actual, tensors)
        return quiet_main(["compare", "--golden", self.golden, "--actual", actual, *extra])

    def tol(self):
        r = self.ref_logits.astype(np.float64)
        return 1e-3 + 1e-3 * np.abs(r)

    def test_within_tolerance_passes(self):
        rc, out = self.compare(self.ref_logits + 0.8 * self.tol(), self.generated)
        self.assertEqual(rc, 0, out)
        self.assertIn("logits:", out)
        self.assertIn("generated:", out)
        self.assertTrue(out.rstrip().endswith("PASS"), out)

    def test_beyond_tolerance_fails(self):
        bad = self.ref_logits.astype(np.float64)
        bad[1, 2, 5] += 1.5 * self.tol()[1, 2, 5]
        rc, out = self.compare(bad, self.generated)
        self.assertEqual(rc, 1, out)
        self.assertIn("FAIL: tensor 'logits' differs at index [1, 2, 5]", out)
        # a looser tolerance accepts it
        rc, out = self.compare(bad, self.generated, "--atol", "1e-2")
        self.assertEqual(rc, 0, out)

    def test_differing_or_missing_generated_token_fails(self):
        other = self.generated.copy()
        other[1, 0] = 7
        rc, out = self.compare(self.ref_logits, other)
        self.assertEqual(rc, 1, out)
        self.assertIn("FAIL: tensor 'generated' differs at index [1, 0]", out)
        rc, out = self.compare(self.ref_logits, None)
        self.assertEqual(rc, 1, out)
        self.assertIn("missing from the actual file", out)

    def test_exit_loop_is_compared_exactly_when_golden_has_it(self):
        exit_loop = np.array([[0, 1, 1], [1, 0, 1]], dtype=np.int32)
        ref.write_safetensors(self.golden, {"logits": self.ref_logits,
                                            "generated": self.generated, "exit_loop": exit_loop})
        actual = os.path.join(self.tmp, "actual.safetensors")

        def compare(tensors):
            ref.write_safetensors(actual, {"logits": self.ref_logits,
                                           "generated": self.generated, **tensors})
            return quiet_main(["compare", "--golden", self.golden, "--actual", actual])

        rc, out = compare({"exit_loop": exit_loop})
        self.assertEqual(rc, 0, out)
        self.assertIn("exit_loop: shape [2, 3] mismatches=0/6", out)
        other = exit_loop.copy()
        other[1, 1] = 1
        rc, out = compare({"exit_loop": other})
        self.assertEqual(rc, 1, out)
        self.assertIn("FAIL: tensor 'exit_loop' differs at index [1, 1]: actual 1, expected 0",
                      out)
        rc, out = compare({})
        self.assertEqual(rc, 1, out)
        self.assertIn("tensor 'exit_loop' is missing from the actual file", out)
        rc, out = compare({"exit_loop": exit_loop.astype(np.float32)})
        self.assertEqual(rc, 1, out)

    def test_nan_fails(self):
        bad = self.ref_logits.copy()
        bad[0, 0, 0] = np.nan
        rc, out = self.compare(bad, self.generated)
        self.assertEqual(rc, 1, out)


if __name__ == "__main__":
    unittest.main()
