//===- Passes.td - moe dialect passes ----------------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
#define MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MoEPathStats : Pass<"moe-path-stats", "::mlir::func::FuncOp"> {
  let summary = "Report router groups and the size of the expert path space";
  let description = [{
    Analysis only; the IR is unchanged. For every function with MoE layers it
    emits remarks:

    - one per router group (routes that share one router symbol): how many
      layer applications the router serves (loop passes counted) and how many
      routing decisions it makes;
    - one summary: layers, passes, experts, top_k, and the number of expert
      paths a token can take, as log10, with independent routing (every layer
      decides) and with the model's sharing (layers of a block-decision group
      reuse one decision).

    A layer is an expert group (`moe.experts`, or after decomposition its
    `moe.combine` or `moe.fused_experts`); its router is the `moe.route`
    that produces its ids.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEDecomposeExperts : Pass<"moe-decompose-experts", "::mlir::func::FuncOp"> {
  let summary = "Split expert groups into plan, dispatch, grouped GEMMs and combine";
  let description = [{
    Rewrites every `moe.experts` into the kernel level:

    ```
    %plan = moe.plan %ids            // tokens sorted by expert, padded to `tile`
    %x    = moe.dispatch %n, %plan   // permuted copy of the token rows
    %g    = moe.grouped_matmul %x, %plan, @gate
    %u    = moe.grouped_matmul %x, %plan, @up
    %a    = moe.glu %g, %u
    %y    = moe.grouped_matmul %a, %plan, @down
    %out  = moe.combine %y, %plan, %gates
    ```
    Each layer gets its own plan; `moe-hoist-shared-routers` shares the plans
    of layers that reuse one routing decision.
  }];
  let options = [
    Option<"tile", "tile", "int64_t", /*default=*/"16",
           "GEMM row tile each expert's segment is padded to">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEHoistSharedRouters : Pass<"moe-hoist-shared-routers", "::mlir::func::FuncOp"> {
  let summary = "Compute a shared router's invariant work once and reuse it";
  let description = [{
    Routes that name one router symbol share its parameters. This pass
    finds the work that is then the same for several layers and does it once,
    at the earliest point where its inputs exist (the block head):

    - a routing plan built from ids that several layers reuse (PathMoE with
      `decision = block`) is built once and shared;
    - two routes with the same router, input and attributes are one route;
    - a route or plan inside a `moe.loop` whose operands come from outside
      the loop is hoisted out of it.

    Weights are immutable symbols (no moe op writes one), so equal operands
    and attributes prove two routes equal. Routes over different router
    symbols, or over different inputs, are left alone. Emits a remark for
    every sharing it establishes.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEFuseDispatchGemm : Pass<"moe-fuse-dispatch-gemm", "::mlir::func::FuncOp"> {
  let summary = "Fuse dispatch, grouped GEMMs, activation and combine";
  let description = [{
    Matches `dispatch -> grouped_matmul (gate, up) -> glu -> grouped_matmul
    (down) -> combine` over one plan and replaces it with
    `moe.fused_experts`: rows are gathered inside the first GEMM (no permuted
    copy), the activation is its epilogue, and the gate-weighted combine is
    the second GEMM's epilogue, in a fixed summation order (deterministic).
    Chains whose intermediate values have other users are left unfused.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoELoopResidency : Pass<"moe-loop-residency", "::mlir::func::FuncOp"> {
  let summary = "Choose how each moe.loop runs: unrolled or resident";
  let description = [{
    `mode = resident` keeps one loop body whose shared weights stay in cache
    across passes (on the GPU, one kernel runs every pass: convert-moe-to-gpu); `mode = unroll` emits every pass as its own specialised
    copy (exit tests only after the passes where an exit can fire, constant
    trace steps, no loop bookkeeping). For `mode = auto` a cost model decides
    and a remark says which and why:

    - unroll when the body has attention (each pass has its own KV caches);
    - unroll a single pass (nothing is shared between passes);
    - resident when the weights the body touches fit `cache-bytes` (passes
      after the first find them cached, and code stays small);
    - otherwise unroll, when passes x body ops stay within `max-unrolled-ops`;
    - otherwise resident.
  }];
  let options = [
    Option<"cacheBytes", "cache-bytes", "int64_t", /*default=*/"33554432",
           "Cache capacity the weights of a resident loop should fit (bytes)">,
    Option<"maxUnrolledOps", "max-unrolled-ops", "int64_t", /*default=*/"256",
           "Largest passes x body-ops product to unroll">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEExitCompaction : Pass<"moe-exit-compaction", "::mlir::func::FuncOp"> {
  let summary = "Run later loop passes on the still-active tokens only";
  let description = [{
    Marks every `moe.loop` with an exit `compact_exits`: after each pass the
    tokens that have not exited are compacted into a dense prefix and the
    next pass runs on them only, so exited tokens cost nothing. Without it a
    loop computes every token on every pass and discards the results of
    exited ones. Legal only when tokens are independent within the body (no
    `moe.attention`, which mixes tokens); other loops are left unchanged with
    a remark.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

#endif // MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
