//===- MoEOps.td - moe dialect operations ------------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEOPS_TD
#define MOE_DIALECT_MOE_IR_MOEOPS_TD

include "moe/Dialect/MoE/IR/MoEDialect.td"
include "moe/Dialect/MoE/IR/MoEAttrs.td"
include "moe/Dialect/MoE/IR/MoETypes.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/ControlFlowInterfaces.td"
include "mlir/Interfaces/LoopLikeInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

// Activations are [tokens, hidden]; the token count may be dynamic.
def MoE_Hidden : TensorRankOf<[F32, BF16, F16], [2]>;
def MoE_ExpertIds : TensorRankOf<[I32], [2]>;
def MoE_Gates : TensorRankOf<[F32, BF16, F16], [2]>;
def MoE_TokenIds : TensorRankOf<[I32], [1]>;
def MoE_TokenMask : TensorRankOf<[I1], [1]>;
def MoE_WeightTensor : StaticShapeTensorOf<[F32, BF16, F16]>;

class MoE_SymbolUserOp<string mnemonic, list<Trait> traits = []>
    : MoE_Op<mnemonic, !listconcat(traits,
          [DeclareOpInterfaceMethods<SymbolUserOpInterface>])>;

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

def MoE_WeightOp : MoE_Op<"weight", [Symbol]> {
  let summary = "a named model parameter, bound at run time";
  let description = [{
    Declares a parameter tensor. Ops name it by symbol, so two ops that use
    one symbol share the parameter (a PathMoE router shared by a block, or the
    weights of a looped block shared by every pass). `source` is the tensor's
    name in the safetensors file; a `{e}` in it stacks the tensors of experts
    `e = 0 .. N-1` along the first dimension. `transposed` says the file
    stores the tensor (each expert's, with `{e}`) with its last two dimensions
    swapped, as LoopLM's `in x out` expert weights are: the loader transposes
    it back to `type`.

    ```mlir
    moe.weight @router0 : tensor<8x64xf32> source "model.layers.0.mlp.gate.weight"
    moe.weight @gate0 : tensor<8x128x64xf32>
        source "model.layers.0.mlp.experts.{e}.gate_proj.weight"
    ```
  }];
  let arguments = (ins SymbolNameAttr:$sym_name,
                       TypeAttrOf<MoE_WeightTensor>:$type,
                       OptionalAttr<StrAttr>:$source,
                       UnitAttr:$transposed);
  let assemblyFormat = [{
    $sym_name `:` $type (`source` $source^)? (`transposed` $transposed^)?
    attr-dict
  }];
  let extraClassDeclaration = [{
    ::mlir::RankedTensorType getTensorType() {
      return ::llvm::cast<::mlir::RankedTensorType>(getType());
    }
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// MoE layer ops
//===----------------------------------------------------------------------===//

def MoE_RmsNormOp : MoE_SymbolUserOp<"rms_norm",
    [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "RMS normalisation, with a learned scale or without one";
  let description = [{
    `result = input / sqrt(mean(input^2) + eps) * weight` per token; the weight
    symbol has shape [hidden]. Without `weight` the scale is 1 (LoopLM's
    muP norms have no gain).
  }];
  let arguments = (ins MoE_Hidden:$input,
                       OptionalAttr<FlatSymbolRefAttr>:$weight,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input (`,` $weight^)? (`eps` `=` $eps^)? attr-dict `:` type($input)
  }];
  let hasVerifier = 1;
}

def MoE_RouteOp : MoE_SymbolUserOp<"route", [Pure]> {
  let summary = "router: score the experts and pick the top k per token";
  let description = [{
    `logits = input @ router^T`, scored by softmax or sigmoid; the `top_k`
    largest scores (ties: lower expert first) give `ids` in descending score
    order and `gates`, renormalised to sum 1 when `normalize` is set and then
    multiplied by `scaling`. The router symbol has shape [experts, hidden].

    Routes that name the same router symbol share its parameters (PathMoE).
    `decision = block` marks a block head whose ids and gates are reused by the
    other layers of its block instead of each layer routing on its own.
  }];
  let arguments = (ins MoE_Hidden:$input, FlatSymbolRefAttr:$router,
      I64Attr:$top_k,
      DefaultValuedAttr<MoE_ScoringFuncAttr, "ScoringFunc::softmax">:$scoring,
      UnitAttr:$normalize,
      DefaultValuedAttr<F32Attr, "1.0">:$scaling,
      DefaultValuedAttr<MoE_RouterDecisionAttr,
                        "RouterDecision::per_layer">:$decision);
  let results = (outs MoE_ExpertIds:$ids, MoE_Gates:$gates);
  let assemblyFormat = [{
    $input `,` $router `top_k` `=` $top_k (`scoring` `=` `` $scoring^)?
    (`normalize` $normalize^)? (`scaling` `=` $scaling^)?
    (`decision` `=` `` $decision^)? attr-dict
    `:` type($input) `->` type($ids) `,` type($gates)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertsOp : MoE_SymbolUserOp<"experts",
    [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "a group of gated-linear-unit experts, combined by gates";
  let description = [{
    `result[t] = sum_j gates[t, j] * expert_{ids[t, j]}(input[t])` with
    `expert_e(x) = down_e @ (act(gate_e @ x) * (up_e @ x))`. The weight symbols
    stack the experts: `gate_proj` and `up_proj` are [experts, ffn, hidden],
    `down_proj` is [experts, hidden, ffn]. The residual add is not part of the
    op.
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_ExpertIds:$ids, MoE_Gates:$gates,
      FlatSymbolRefAttr:$gate_proj, FlatSymbolRefAttr:$up_proj,
      FlatSymbolRefAttr:$down_proj,
      DefaultValuedAttr<MoE_ActivationAttr, "Activation::silu">:$activation);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $ids `,` $gates `gate` $gate_proj `up` $up_proj
    `down` $down_proj (`activation` `=` `` $activation^)? attr-dict
    `:` type($input) `,` type($ids) `,` type($gates)
  }];
  let hasVerifier = 1;
}

def MoE_MlpOp : MoE_SymbolUserOp<"mlp",
    [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "a dense gated-linear-unit MLP";
  let description = [{
    `result[t] = down @ (act(gate @ input[t]) * (up @ input[t]))`: the dense
    feed-forward of a decoder layer that has no experts (Qwen3-MoE's
    `mlp_only_layers` and layers off its `decoder_sparse_step`). `gate_proj`
    and `up_proj` are [ffn, hidden], `down_proj` is [hidden, ffn]. The
    residual add is not part of the op.
  }];
  let arguments = (ins MoE_Hidden:$input, FlatSymbolRefAttr:$gate_proj,
      FlatSymbolRefAttr:$up_proj, FlatSymbolRefAttr:$down_proj,
      DefaultValuedAttr<MoE_ActivationAttr, "Activation::silu">:$activation);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `gate` $gate_proj `up` $up_proj `down` $down_proj
    (`activation` `=` `` $activation^)? attr-dict `:` type($input)
  }];
}

//===----------------------------------------------------------------------===//
// Loops and early exits
//===----------------------------------------------------------------------===//

def MoE_LoopOp : MoE_Op<"loop", [
    AllTypesMatch<["init", "result"]>, RecursiveMemoryEffects,
    SingleBlock, DeclareOpInterfaceMethods<LoopLikeOpInterface>]> {
  let summary = "a block of layers applied `passes` times with shared weights";
  let description = [{
    Runs the body `passes` times; the body's argument is the hidden state at
    the start of a pass and `moe.yield` gives the state at its end. When the
    body yields an exit mask from `moe.exit`, tokens whose mask is set stop
    and keep their state. `exit_loop[t]` is the pass after which token `t`
    stopped (`passes - 1` if it ran every pass).

    `mode` tells the lowering to unroll the passes, keep one resident loop
    body, or (`auto`) decide by a cost model (`moe-loop-residency`).
    `compact_exits` (set by `moe-exit-compaction`) runs each pass on the
    still-active tokens only; without it every token is computed on every
    pass and exited tokens' results are discarded.
  }];
  let arguments = (ins MoE_Hidden:$init, I64Attr:$passes,
      DefaultValuedAttr<MoE_LoopModeAttr, "LoopMode::Auto">:$mode,
      UnitAttr:$compact_exits);
  let results = (outs MoE_Hidden:$result, MoE_TokenIds:$exit_loop);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $init `passes` `=` $passes (`mode` `=` `` $mode^)?
    (`compact_exits` $compact_exits^)? attr-dict
    `:` type($init) `->` type($exit_loop) $body
  }];
  let hasVerifier = 1;
  let hasRegionVerifier = 1;
  let extraClassDeclaration = [{
    ::mlir::BlockArgument getPassInput() { return getBody().getArgument(0); }
    YieldOp getYield();
    /// The exit test at the end of the body, if the loop has one.
    ExitOp getExit();
    /// The body's attention ops in cache-slot order; the verifier makes
    /// their slots 0, 1, ... (each pass then has its own set of caches).
    ::llvm::SmallVector<AttentionOp> getAttentionsBySlot();
  }];
}

def MoE_ExitOp : MoE_SymbolUserOp<"exit", [
    Pure, HasParent<"LoopOp">, AllTypesMatch<["hidden", "previous"]>]> {
  let summary = "early-exit test at a loop pass boundary";
  let description = [{
    Compares the state at the end of a pass (`hidden`) with the state at its
    start (`previous`, the loop body's argument) and sets `exits[t]` for the
    tokens that stop after this pass. The test runs only after at least
    `min_passes` completed passes and never after the last one.

    - `cosine`: cos(hidden, previous) >= threshold
    - `relative_l2`: |hidden - previous| / |hidden| <= threshold
    - `max_prob` / `entropy`: on the next-token distribution
      `softmax(rms_norm(hidden, lm_norm) @ lm_head^T)` (without `lm_norm`,
      of `hidden` itself; with `lm_norm_unit`, of the gain-less RMS norm of
      `hidden`): max >= threshold / entropy (nats) <= threshold; these need
      `lm_head`.

    The result may only be yielded, which is what keeps exits at loop
    boundaries.
  }];
  let arguments = (ins MoE_Hidden:$hidden, MoE_Hidden:$previous,
      MoE_ExitCriterionAttr:$criterion, F32Attr:$threshold,
      DefaultValuedAttr<I64Attr, "1">:$min_passes,
      OptionalAttr<FlatSymbolRefAttr>:$lm_head,
      OptionalAttr<FlatSymbolRefAttr>:$lm_norm,
      DefaultValuedAttr<F32Attr, "1.0e-6">:$lm_norm_eps,
      UnitAttr:$lm_norm_unit);
  let results = (outs MoE_TokenMask:$exits);
  let assemblyFormat = [{
    $hidden `,` $previous `criterion` `=` `` $criterion
    `threshold` `=` $threshold (`min_passes` `=` $min_passes^)?
    (`lm_head` $lm_head^)? (`lm_norm` $lm_norm^)?
    (`lm_norm_unit` $lm_norm_unit^)?
    (`lm_norm_eps` `=` $lm_norm_eps^)? attr-dict
    `:` type($hidden) `->` type($exits)
  }];
  let hasVerifier = 1;
}

def MoE_YieldOp : MoE_Op<"yield", [
    Pure, Terminator, ReturnLike, HasParent<"LoopOp">]> {
  let summary = "ends a loop pass: the new state and optionally the exit mask";
  let arguments = (ins Variadic<AnyRankedTensor>:$values);
  let assemblyFormat = "attr-dict ($values^ `:` type($values))?";
}

//===----------------------------------------------------------------------===//
// Dense decoder ops
//===----------------------------------------------------------------------===//

def MoE_EmbedOp : MoE_SymbolUserOp<"embed", [Pure]> {
  let summary = "token embedding lookup";
  let description = [{ `result[t] = table[tokens[t]]`; `table` is [vocab, hidden]. }];
  let arguments = (ins MoE_TokenIds:$tokens, FlatSymbolRefAttr:$table);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $tokens `,` $table attr-dict `:` type($tokens) `->` type($result)
  }];
  let hasVerifier = 1;
}

def MoE_UnembedOp : MoE_SymbolUserOp<"unembed", [Pure]> {
  let summary = "language-model head: hidden states to vocabulary logits";
  let description = [{ `logits = input @ lm_head^T`; `lm_head` is [vocab, hidden]. }];
  let arguments = (ins MoE_Hidden:$input, FlatSymbolRefAttr:$lm_head);
  let results = (outs TensorRankOf<[F32, BF16, F16], [2]>:$logits);
  let assemblyFormat = [{
    $input `,` $lm_head attr-dict `:` type($input) `->` type($logits)
  }];
  let hasVerifier = 1;
}

def MoE_AttentionOp : MoE_SymbolUserOp<"attention",
    [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "multi-head attention with GQA, RoPE and a KV cache";
  let description = [{
    Grouped-query attention over the tokens of one sequence at `positions`,
    with rotary embeddings (`rope_theta`, its frequencies scaled as
    `rope_scaling` says; Hugging Face rotate_half layout, or
    with `rope_interleaved` the pairs (2i, 2i+1) as LoopLM rotates them), an
    optional causal mask (with `sliding_window` W, a query at position p sees
    the keys at p - W + 1 .. p only, as Mistral's and Qwen's windowed layers
    do), optional RMS norms of queries and keys (`q_norm`,
    `k_norm` with `norm_eps`: per head over [head_dim] as in Qwen3, or over
    the full projection width as in OLMoE) and optional clipping of q, k, v
    to `clip_qkv` (after the q/k norms, as OLMoE does). `q_proj` is
    [heads * head_dim, hidden], `k_proj` and `v_proj` are
    [kv_heads * head_dim, hidden], `o_proj` is [hidden, heads * head_dim];
    the optional biases `q_bias`, `k_bias`, `v_bias` ([heads * head_dim],
    [kv_heads * head_dim] twice) and `o_bias` ([hidden]) are added to the
    projections (q, k and v before their norms).
    Scores are scaled by `scale` (default 1/sqrt(head_dim); LoopLM's muP
    attention uses 1/head_dim).
    Keys and values are appended to KV cache slot `cache_slot`: inside the
    decoder's moe.loop one slot per layer and pass (the body's slots are
    0..N-1); outside it (LoopLM's head and tail layers) the attentions of the
    function number their own slots 0..M-1, whose caches follow the loop's.
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_TokenIds:$positions,
      FlatSymbolRefAttr:$q_proj, FlatSymbolRefAttr:$k_proj,
      FlatSymbolRefAttr:$v_proj, FlatSymbolRefAttr:$o_proj,
      I64Attr:$num_heads, I64Attr:$num_kv_heads, I64Attr:$head_dim,
      DefaultValuedAttr<F32Attr, "10000.0">:$rope_theta,
      UnitAttr:$causal,
      OptionalAttr<FlatSymbolRefAttr>:$q_norm,
      OptionalAttr<FlatSymbolRefAttr>:$k_norm,
      OptionalAttr<F32Attr>:$clip_qkv,
      DefaultValuedAttr<I64Attr, "0">:$cache_slot,
      DefaultValuedAttr<F32Attr, "1.0e-6">:$norm_eps,
      OptionalAttr<F32Attr>:$scale,
      UnitAttr:$rope_interleaved,
      OptionalAttr<MoE_RopeScalingAttr>:$rope_scaling,
      OptionalAttr<I64Attr>:$sliding_window,
      OptionalAttr<FlatSymbolRefAttr>:$q_bias,
      OptionalAttr<FlatSymbolRefAttr>:$k_bias,
      OptionalAttr<FlatSymbolRefAttr>:$v_bias,
      OptionalAttr<FlatSymbolRefAttr>:$o_bias);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $positions `q` $q_proj `k` $k_proj `v` $v_proj `o` $o_proj
    `heads` `=` $num_heads `kv_heads` `=` $num_kv_heads
    `head_dim` `=` $head_dim (`rope_theta` `=` $rope_theta^)?
    (`rope_scaling` `` $rope_scaling^)?
    (`rope_interleaved` $rope_interleaved^)? (`scale` `=` $scale^)?
    (`causal` $causal^)? (`sliding_window` `=` $sliding_window^)?
    (`q_norm` $q_norm^)? (`k_norm` $k_norm^)?
    (`q_bias` $q_bias^)? (`k_bias` $k_bias^)? (`v_bias` $v_bias^)?
    (`o_bias` $o_bias^)?
    (`clip_qkv` `=` $clip_qkv^)? (`cache_slot` `=` $cache_slot^)?
    (`norm_eps` `=` $norm_eps^)? attr-dict
    `:` type($input) `,` type($positions)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Kernel level: routing plans, dispatch, grouped GEMMs, combine
//===----------------------------------------------------------------------===//

def MoE_PlanOp : MoE_Op<"plan", [Pure]> {
  let summary = "build the routing plan of expert ids";
  let description = [{
    Groups the `[tokens, top_k]` slots of `ids` by expert, as the result type
    describes (see `!moe.plan`). Slots whose id is outside `[0, experts)` are
    left out.
  }];
  let arguments = (ins MoE_ExpertIds:$ids);
  let results = (outs MoE_PlanType:$plan);
  let assemblyFormat = "$ids attr-dict `:` type($ids) `->` qualified(type($plan))";
  let hasVerifier = 1;
}

def MoE_DispatchOp : MoE_Op<"dispatch", [Pure]> {
  let summary = "gather token rows into plan order";
  let description = [{
    `result[r] = input[token of plan row r]`, zero for padding rows. This is
    the permuted copy that `moe-fuse-dispatch-gemm` removes.
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_PlanType:$plan);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $plan attr-dict `:` type($input) `,` qualified(type($plan))
    `->` type($result)
  }];
  let hasVerifier = 1;
}

def MoE_GroupedMatmulOp : MoE_SymbolUserOp<"grouped_matmul", [Pure]> {
  let summary = "one GEMM per expert over its plan segment";
  let description = [{
    For every expert `e`, the rows of its plan segment of `input` [rows, K]
    times `weight[e]^T`, with `weight` [experts, N, K] (nn.Linear layout).
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_PlanType:$plan,
                       FlatSymbolRefAttr:$weight);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $plan `,` $weight attr-dict `:` type($input) `,`
    qualified(type($plan)) `->` type($result)
  }];
  let hasVerifier = 1;
}

def MoE_GluOp : MoE_Op<"glu", [Pure, AllTypesMatch<["gate", "up", "result"]>]> {
  let summary = "gated linear unit: act(gate) * up";
  let arguments = (ins MoE_Hidden:$gate, MoE_Hidden:$up,
      DefaultValuedAttr<MoE_ActivationAttr, "Activation::silu">:$activation);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $gate `,` $up (`activation` `=` `` $activation^)? attr-dict `:` type($gate)
  }];
}

def MoE_CombineOp : MoE_Op<"combine", [Pure]> {
  let summary = "gate-weighted sum of each token's expert rows";
  let description = [{
    `result[t] = sum_j gates[t, j] * input[plan row of (t, j)]`, summing the
    slots in ascending `j` so the result does not depend on scheduling.
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_PlanType:$plan, MoE_Gates:$gates);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $plan `,` $gates attr-dict `:` type($input) `,`
    qualified(type($plan)) `,` type($gates) `->` type($result)
  }];
  let hasVerifier = 1;
}

def MoE_FusedExpertsOp : MoE_SymbolUserOp<"fused_experts",
    [Pure, AllTypesMatch<["input", "result"]>]> {
  let summary = "an expert group as one fused kernel over a plan";
  let description = [{
    The same result as `moe.experts`, computed through `plan`: token rows are
    gathered inside the first grouped GEMM (no permuted copy), the
    activation is its epilogue, and the gate-weighted combine is the second
    GEMM's epilogue, summing slots in a fixed order (deterministic).
  }];
  let arguments = (ins MoE_Hidden:$input, MoE_PlanType:$plan, MoE_Gates:$gates,
      FlatSymbolRefAttr:$gate_proj, FlatSymbolRefAttr:$up_proj,
      FlatSymbolRefAttr:$down_proj,
      DefaultValuedAttr<MoE_ActivationAttr, "Activation::silu">:$activation);
  let results = (outs MoE_Hidden:$result);
  let assemblyFormat = [{
    $input `,` $plan `,` $gates `gate` $gate_proj `up` $up_proj
    `down` $down_proj (`activation` `=` `` $activation^)? attr-dict
    `:` type($input) `,` qualified(type($plan)) `,` type($gates)
  }];
  let hasVerifier = 1;
}

#endif // MOE_DIALECT_MOE_IR_MOEOPS_TD
