"""Tests of scripts/moe_reference.py, the reference of the moe_stack contract.

Run with: python3 -m unittest discover -s test/reference

Expected values are computed here by hand with plain python floats, never with
the reference's own model functions; the reference's safetensors writer is
only used to build inputs.
"""

import contextlib
import importlib.util
import io
import json
import math
import os
import struct
import tempfile
import unittest

import numpy as np

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                       "moe_reference.py")
_spec = importlib.util.spec_from_file_location("moe_reference", _SCRIPT)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

EPS = 1e-6


# ---------------------------------------------------------------------------
# a d=2, f=1, E=2, L=1 model small enough to evaluate by hand
# ---------------------------------------------------------------------------

def tiny_config(**overrides):
    return {"model_type": "moe_stack", "hidden_size": 2, "moe_intermediate_size": 1,
            "num_experts": 2, "num_experts_per_tok": 1, "num_hidden_layers": 1, **overrides}


def tiny_weights(down0=(1.0, 2.0), down1=(-1.0, 0.5), layers=1, norm=(1.0, 1.0)):
    """Router = identity, so expert e wins when normed coordinate e is larger.

    expert 0: down0 * (act(n0) * n1); expert 1: down1 * (act(n1) * (n0 + n1))."""
    w = {"model.norm.weight": [1.0, 0.5]}
    for l in range(layers):
        p = f"model.layers.{l}"
        w[f"{p}.post_attention_layernorm.weight"] = list(norm)
        w[f"{p}.mlp.experts.0.gate_proj.weight"] = [[1.0, 0.0]]
        w[f"{p}.mlp.experts.0.up_proj.weight"] = [[0.0, 1.0]]
        w[f"{p}.mlp.experts.0.down_proj.weight"] = [[down0[0]], [down0[1]]]
        w[f"{p}.mlp.experts.1.gate_proj.weight"] = [[0.0, 1.0]]
        w[f"{p}.mlp.experts.1.up_proj.weight"] = [[1.0, 1.0]]
        w[f"{p}.mlp.experts.1.down_proj.weight"] = [[down1[0]], [down1[1]]]
    w["model.layers.0.mlp.gate.weight"] = [[1.0, 0.0], [0.0, 1.0]]
    return {name: np.array(v, dtype=np.float32) for name, v in w.items()}


def hand_rmsnorm(h, w, eps=EPS):
    r = math.sqrt((h[0] ** 2 + h[1] ** 2) / 2 + eps)
    return [h[0] / r * w[0], h[1] / r * w[1]]


def hand_silu(x):
    return x / (1.0 + math.exp(-x))


def hand_gelu(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def hand_experts(n, act):
    s0 = act(n[0]) * n[1]
    s1 = act(n[1]) * (n[0] + n[1])
    return [[1.0 * s0, 2.0 * s0], [-1.0 * s1, 0.5 * s1]]


class TinyModel:
    """Writes config, weights and inputs to a temp dir and runs the CLI."""

    def __init__(self, test, config, weights, inputs):
        self.dir = tempfile.TemporaryDirectory()
        test.addCleanup(self.dir.cleanup)
        self.paths = {n: os.path.join(self.dir.name, n) for n in
                      ("config.json", "weights.safetensors", "inputs.safetensors",
                       "outputs.safetensors")}
        with open(self.paths["config.json"], "w") as f:
            json.dump(config, f)
        ref.write_safetensors(self.paths["weights.safetensors"], weights)
        ref.write_safetensors(self.paths["inputs.safetensors"],
                              {"hidden_states": np.array(inputs, dtype=np.float32)})

    def run(self):
        """Exit status and stderr of the `run` subcommand."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = ref.main(["run", "--config", self.paths["config.json"],
                           "--weights", self.paths["weights.safetensors"],
                           "--inputs", self.paths["inputs.safetensors"],
                           "--outputs", self.paths["outputs.safetensors"]])
        return rc, err.getvalue()

    def outputs(self):
        return {n: t.array for n, t in
                ref.read_safetensors(self.paths["outputs.safetensors"]).items()}


def run_model(test, config, weights, inputs):
    model = TinyModel(test, config, weights, inputs)
    rc, err = model.run()
    test.assertEqual(rc, 0, err)
    return model.outputs()


def run_error(test, config, weights, inputs):
    """Run a model that must be rejected; return the error text."""
    rc, err = TinyModel(test, config, weights, inputs).run()
    test.assertEqual(rc, 2)
    return err


class HandComputedTest(unittest.TestCase):
    TOKENS = [[3.0, 1.0], [-1.0, 2.0]]

    def test_softmax_k1_silu(self):
        out = run_model(self, tiny_config(), tiny_weights(), self.TOKENS)
        for t, h in enumerate(self.TOKENS):
            n = hand_rmsnorm(h, [1.0, 1.0])
            p1 = 1.0 / (1.0 + math.exp(n[0] - n[1]))  # softmax of two logits
            e, g = (0, 1.0 - p1) if n[0] >= n[1] else (1, p1)
            y = hand_experts(n, hand_silu)[e]
            final = hand_rmsnorm([h[0] + g * y[0], h[1] + g * y[1]], [1.0, 0.5])
            self.assertEqual(out["expert_ids"][0, t, 0], e)
            self.assertAlmostEqual(float(out["expert_gates"][0, t, 0]), g, places=6)
            np.testing.assert_allclose(out["hidden_states"][t], final, rtol=1e-6, atol=1e-6)
        self.assertEqual(out["expert_ids"][0, :, 0].tolist(), [0, 1])
        self.assertEqual(out["exit_loop"].tolist(), [0, 0])
        self.assertEqual(out["near_tie"].tolist(), [0, 0])

    def test_sigmoid_normalized_scaled_gelu_k2(self):
        config = tiny_config(num_experts_per_tok=2, scoring_func="sigmoid", hidden_act="gelu",
                             norm_topk_prob=True, routed_scaling_factor=2.5, rms_norm_eps=0.25)
        out = run_model(self, config, tiny_weights(), self.TOKENS)
        for t, h in enumerate(self.TOKENS):
            n = hand_rmsnorm(h, [1.0, 1.0], eps=0.25)
            p = [1.0 / (1.0 + math.exp(-n[0])), 1.0 / (1.0 + math.exp(-n[1]))]
            order = [0, 1] if p[0] >= p[1] else [1, 0]
            gates = [p[e] / (p[0] + p[1]) * 2.5 for e in order]
            ys = hand_experts(n, hand_gelu)
            new = [h[i] + sum(g * ys[e][i] for g, e in zip(gates, order)) for i in range(2)]
            self.assertEqual(out["expert_ids"][0, t].tolist(), order)
            np.testing.assert_allclose(out["expert_gates"][0, t], gates, rtol=1e-6)
            np.testing.assert_allclose(out["hidden_states"][t],
                                       hand_rmsnorm(new, [1.0, 0.5], eps=0.25),
                                       rtol=1e-6, atol=1e-6)


class TopKTieTest(unittest.TestCase):
    def test_equal_scores_pick_lower_index_first(self):
        for scoring in ("softmax", "sigmoid"):
            config = tiny_config(num_experts=4, num_experts_per_tok=2, scoring_func=scoring)
            weights = tiny_weights()
            for e in (2, 3):  # the tiny model has two experts; add two copies
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    weights[f"model.layers.0.mlp.experts.{e}.{proj}.weight"] = \
                        weights[f"model.layers.0.mlp.experts.{e - 2}.{proj}.weight"]
            weights["model.layers.0.mlp.gate.weight"] = np.zeros((4, 2), dtype=np.float32)
            out = run_model(self, config, weights, [[3.0, 1.0]])
            self.assertEqual(out["expert_ids"][0, 0].tolist(), [0, 1], scoring)
            self.assertEqual(out["near_tie"].tolist(), [1], scoring)

    def test_tied_pair_inside_top_k_keeps_index_order(self):
        config = tiny_config(num_experts=4, num_experts_per_tok=2)
        weights = tiny_weights()
        for e in (2, 3):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                weights[f"model.layers.0.mlp.experts.{e}.{proj}.weight"] = \
                    weights[f"model.layers.0.mlp.experts.{e - 2}.{proj}.weight"]
        # experts 1 and 3 share the largest logit n0 > 0, experts 0 and 2 get 0
        weights["model.layers.0.mlp.gate.weight"] = np.array(
            [[0, 0], [1, 0], [0, 0], [1, 0]], dtype=np.float32)
        out = run_model(self, config, weights, [[3.0, 1.0]])
        self.assertEqual(out["expert_ids"][0, 0].tolist(), [1, 3])
        # the order inside the top k is compared exactly, so this is a near-tie too
        self.assertEqual(out["near_tie"].tolist(), [1])


class BlockDecisionTest(unittest.TestCase):
    # Layer 1 has norm weights -1, so routing its own normed state would pick the
    # other expert; with zero down_proj the hidden state never changes.
    def weights(self):
        w = tiny_weights(down0=(0.0, 0.0), down1=(0.0, 0.0), layers=2)
        w["model.layers.1.post_attention_layernorm.weight"] = np.array([-1.0, -1.0], np.float32)
        return w

    def test_block_reuses_head_decision(self):
        config = tiny_config(num_hidden_layers=2, router_share_block=2, router_decision="block")
        out = run_model(self, config, self.weights(), [[3.0, 1.0], [-1.0, 2.0]])
        self.assertEqual(out["expert_ids"][:, :, 0].tolist(), [[0, 1], [0, 1]])
        np.testing.assert_array_equal(out["expert_gates"][1], out["expert_gates"][0])

    def test_per_layer_routes_with_shared_router(self):
        config = tiny_config(num_hidden_layers=2, router_share_block=2,
                             router_decision="per_layer")
        out = run_model(self, config, self.weights(), [[3.0, 1.0], [-1.0, 2.0]])
        self.assertEqual(out["expert_ids"][:, :, 0].tolist(), [[0, 1], [1, 0]])

    def test_router_of_non_head_layer_is_rejected(self):
        config = tiny_config(num_hidden_layers=2, router_share_block=2)
        weights = self.weights()
        weights["model.layers.1.mlp.gate.weight"] = np.eye(2, dtype=np.float32)
        self.assertIn("model.layers.1.mlp.gate.weight",
                      run_error(self, config, weights, [[3.0, 1.0]]))


class ExitTest(unittest.TestCase):
    # Expert 0 does nothing, so token 0 (routed to it) never changes and token 1
    # (routed to expert 1) changes by a lot every pass.
    TOKENS = [[3.0, 1.0], [-1.0, 2.0]]

    def run_exit(self, **fields):
        config = tiny_config(num_loops=3, **fields)
        return run_model(self, config, tiny_weights(down0=(0.0, 0.0)), self.TOKENS)

    def assert_stopped(self, out, exit_loop):
        self.assertEqual(out["exit_loop"].tolist(), exit_loop)
        for t, last in enumerate(exit_loop):
            ran = out["expert_ids"][:last + 1, t, 0]
            self.assertTrue((ran >= 0).all())
            self.assertTrue((out["expert_ids"][last + 1:, t] == -1).all())
            self.assertTrue((out["expert_gates"][last + 1:, t] == 0).all())

    def test_relative_l2(self):
        self.assert_stopped(self.run_exit(exit_criterion="relative_l2", exit_threshold=1e-3),
                            [0, 2])

    def test_cosine(self):
        self.assert_stopped(self.run_exit(exit_criterion="cosine", exit_threshold=0.9999),
                            [0, 2])

    def test_threshold_itself_exits(self):
        out = self.run_exit(exit_criterion="relative_l2", exit_threshold=0.0)
        self.assert_stopped(out, [0, 2])
        self.assertEqual(out["near_tie"].tolist(), [1, 0])

    def test_min_loops_delays_the_test(self):
        out = self.run_exit(exit_criterion="relative_l2", exit_threshold=1e-3, exit_min_loops=2)
        self.assert_stopped(out, [1, 2])

    def test_no_criterion_runs_every_pass(self):
        self.assert_stopped(self.run_exit(exit_threshold=1e9), [2, 2])

    def test_exited_token_keeps_its_state(self):
        """In a generated case every token's output equals a run without exits
        of exit_loop+1 passes, and its decisions match that run's."""
        case = ref.CASES["looped_exit_l2"]
        config, stored, x = ref.try_case(case, np.random.default_rng([0, 1]))
        cfg, weights = ref.parse_config(config), ref.file_values(stored)
        out = ref.forward(cfg, weights, x.astype(np.float64))
        L = cfg["num_hidden_layers"]
        for passes in range(1, cfg["num_loops"] + 1):
            plain = ref.forward(dict(cfg, exit_criterion="none", num_loops=passes), weights,
                                x.astype(np.float64))
            for t in np.nonzero(out.exit_loop == passes - 1)[0]:
                np.testing.assert_allclose(out.hidden_states[t], plain.hidden_states[t],
                                           rtol=1e-12)
                np.testing.assert_array_equal(out.expert_ids[:passes * L, t],
                                              plain.expert_ids[:, t])
        self.assertEqual(sorted(set(out.exit_loop.tolist())), [0, 1, 2])


class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.path = os.path.join(self.dir.name, "t.safetensors")

    def test_bf16_rounding_is_nearest_even(self):
        one = 1.0
        values = np.array([one, one + 2 ** -8, one + 3 * 2 ** -8, one + 2 ** -8 + 2 ** -20,
                           -2.5, 3.0e38], dtype=np.float32)
        bits = ref.f32_to_bf16_bits(values)
        # 1+2^-8 is halfway between 0x3F80 (even) and 0x3F81; 1+3*2^-8 between
        # 0x3F81 and 0x3F82 (even); just above halfway rounds up.
        self.assertEqual(bits.tolist()[:4], [0x3F80, 0x3F80, 0x3F82, 0x3F81])
        self.assertEqual(int(bits[4]), 0xC020)

    def test_round_trip_and_layout(self):
        f32 = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)
        i32 = np.array([7, -1], dtype=np.int32)
        bf16 = ref.f32_to_bf16_bits(np.array([0.1, -3.0], dtype=np.float32))
        ref.write_safetensors(self.path, {"a": f32, "b": i32, "c": bf16}, {"format": "pt"})
        with open(self.path, "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        self.assertEqual(n % 8, 0)
        header = json.loads(blob[8:8 + n])
        self.assertEqual(header["__metadata__"], {"format": "pt"})
        self.assertEqual(header["c"]["dtype"], "BF16")
        begin, end = header["c"]["data_offsets"]
        self.assertEqual(struct.unpack("<2H", blob[8 + n + begin:8 + n + end]),
                         tuple(bf16.tolist()))
        got = ref.read_safetensors(self.path)
        self.assertEqual({k: v.dtype for k, v in got.items()}, {"a": "F32", "b": "I32", "c": "BF16"})
        np.testing.assert_array_equal(got["a"].array, f32)
        np.testing.assert_array_equal(got["b"].array, i32)
        # 0.1 in bf16 is 0x3DCD = 0.10009765625; -3.0 is exact
        self.assertEqual(got["c"].array.tolist(), [0.10009765625, -3.0])


class CompareTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        with contextlib.redirect_stdout(io.StringIO()):
            ref.generate_case("independent", cls.dir.name, 0)
        cls.golden_path = os.path.join(cls.dir.name, "golden.safetensors")
        cls.golden = {n: t.array for n, t in ref.read_safetensors(cls.golden_path).items()}

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def compare(self, actual, golden=None, bf16=False):
        """Status and printed report of compare on `actual` (name -> array)."""
        actual_path = os.path.join(self.dir.name, "actual.safetensors")
        ref.write_safetensors(actual_path, actual)
        golden_path = self.golden_path
        if golden is not None:
            golden_path = os.path.join(self.dir.name, "golden2.safetensors")
            ref.write_safetensors(golden_path, golden)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = ref.main(["compare", "--golden", golden_path, "--actual", actual_path]
                          + (["--bf16"] if bf16 else []))
        return rc, out.getvalue()

    def perturbed(self, name, index, delta):
        actual = {n: a.copy() for n, a in self.golden.items() if n != "near_tie"}
        actual[name][index] += delta
        return actual

    def test_identical_passes(self):
        rc, report = self.compare(self.perturbed("hidden_states", (0, 0), 0.0))
        self.assertEqual(rc, 0, report)

    def test_within_tolerance_passes(self):
        r = abs(float(self.golden["hidden_states"][2, 3]))
        rc, report = self.compare(self.perturbed("hidden_states", (2, 3), 0.5 * (1e-4 + 1e-4 * r)))
        self.assertEqual(rc, 0, report)

    def test_beyond_tolerance_fails_naming_index(self):
        r = abs(float(self.golden["expert_gates"][1, 2, 0]))
        rc, report = self.compare(self.perturbed("expert_gates", (1, 2, 0), 2 * (1e-4 + 1e-4 * r)))
        self.assertEqual(rc, 1)
        self.assertIn("'expert_gates' differs at index [1, 2, 0]", report)

    def test_ids_and_exit_loop_are_exact(self):
        for name, index in (("expert_ids", (0, 1, 1)), ("exit_loop", (3,))):
            rc, report = self.compare(self.perturbed(name, index, 1))
            self.assertEqual(rc, 1)
            self.assertIn(f"'{name}' differs at index {list(index)}", report)

    def test_missing_and_misshapen_tensors_fail(self):
        actual = self.perturbed("hidden_states", (0, 0), 0.0)
        del actual["exit_loop"]
        rc, report = self.compare(actual)
        self.assertEqual(rc, 1)
        self.assertIn("tensor 'exit_loop' is missing from the actual file", report)
        actual = self.perturbed("hidden_states", (0, 0), 0.0)
        actual["hidden_states"] = actual["hidden_states"][:-1]
        rc, report = self.compare(actual)
        self.assertEqual(rc, 1)
        self.assertIn("tensor 'hidden_states' has shape", report)

    def test_near_tie_tokens_are_exempt(self):
        golden = dict(self.golden)
        golden["near_tie"] = np.zeros_like(golden["near_tie"])
        golden["near_tie"][4] = 1
        actual = self.perturbed("hidden_states", (4, 0), 1.0)
        actual["expert_ids"][0, 4, 0] += 1
        rc, report = self.compare(actual, golden=golden)
        self.assertEqual(rc, 0, report)

    def test_bf16_tolerance(self):
        r = abs(float(self.golden["hidden_states"][1, 1]))
        actual = self.perturbed("hidden_states", (1, 1), 0.5 * (2e-2 + 2e-2 * r))
        self.assertEqual(self.compare(actual)[0], 1)
        self.assertEqual(self.compare(actual, bf16=True)[0], 0)


class ValidationTest(unittest.TestCase):
    def test_config_errors_name_the_field(self):
        cases = [({k: v for k, v in tiny_config().items() if k != "num_experts"}, "num_experts"),
                 (tiny_config(num_experts_per_tok=3), "num_experts_per_tok"),
                 (tiny_config(router_share_block=0), "router_share_block"),
                 (tiny_config(num_loops=0), "num_loops"),
                 (tiny_config(scoring_func="relu"), "scoring_func"),
                 (tiny_config(norm_topk_prob=1), "norm_topk_prob"),
                 (tiny_config(hidden_size=2.0), "hidden_size")]
        for config, field in cases:
            with self.assertRaisesRegex(ref.ContractError, f"'{field}'"):
                ref.parse_config(config)

    def test_unknown_field_is_ignored_with_a_note(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cfg = ref.parse_config(tiny_config(vocab_size=5))
        self.assertIn("vocab_size", err.getvalue())
        self.assertEqual(cfg["num_loops"], 1)

    def test_weight_errors_name_the_tensor(self):
        weights = tiny_weights()
        del weights["model.norm.weight"]
        self.assertIn("missing tensor 'model.norm.weight'",
                      run_error(self, tiny_config(), weights, [[1.0, 2.0]]))
        weights = tiny_weights()
        weights["model.norm.weight"] = np.ones(3, dtype=np.float32)
        self.assertIn("'model.norm.weight' has shape",
                      run_error(self, tiny_config(), weights, [[1.0, 2.0]]))
        bf16 = {n: ref.f32_to_bf16_bits(w) for n, w in tiny_weights().items()}
        self.assertIn("has dtype BF16",
                      run_error(self, tiny_config(), bf16, [[1.0, 2.0]]))

    def test_bf16_weights_compute_with_rounded_values(self):
        weights = tiny_weights()
        weights["model.layers.0.mlp.experts.0.down_proj.weight"] = np.array(
            [[0.1], [0.2]], dtype=np.float32)
        bf16 = {n: ref.f32_to_bf16_bits(w) for n, w in weights.items()}
        rounded = {n: ref.bf16_bits_to_f32(b) for n, b in bf16.items()}
        out_bf16 = run_model(self, tiny_config(torch_dtype="bfloat16"), bf16, [[3.0, 1.0]])
        out_f32 = run_model(self, tiny_config(), rounded, [[3.0, 1.0]])
        np.testing.assert_array_equal(out_bf16["hidden_states"], out_f32["hidden_states"])

    def test_non_finite_input_does_not_crash(self):
        out = run_model(self, tiny_config(), tiny_weights(), [[float("nan"), 1.0], [3.0, 1.0]])
        self.assertTrue(np.isnan(out["hidden_states"][0]).all())
        self.assertTrue(np.isfinite(out["hidden_states"][1]).all())
        self.assertEqual(out["near_tie"].tolist(), [1, 0])


class GenerateTest(unittest.TestCase):
    def test_every_case_generates(self):
        for name, case in ref.CASES.items():
            with self.subTest(case=name):
                self.assertIsNotNone(self._first_draw(case))

    @staticmethod
    def _first_draw(case):
        for attempt in range(ref.MAX_ATTEMPTS):
            drawn = ref.try_case(case, np.random.default_rng([0, attempt]))
            if drawn is not None:
                return drawn
        return None


if __name__ == "__main__":
    unittest.main()
