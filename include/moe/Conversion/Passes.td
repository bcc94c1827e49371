//===- Passes.td - moe conversion passes -------------------*- tablegen -*-===//
#ifndef MOE_CONVERSION_PASSES_TD
#define MOE_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertMoEToCPU : Pass<"convert-moe-to-cpu", "::mlir::ModuleOp"> {
  let summary = "Lower a moe model to buffers and calls of the CPU kernel library";
  let description = [{
    Rewrites every model function `@f(hidden) -> (hidden, exit_loop)` (the
    form moe-import emits: optional ops, one `moe.loop`, optional ops) into
    a buffer-level function with MLIR's C interface:

    ```
    @f(%hidden_in: memref<?xDxf32>, %hidden_out: memref<?xDxf32>,
       %exit_loop: memref<?xi32>, %expert_ids: memref<?x?xKxi32>,
       %expert_gates: memref<?x?xKxf32>, %w0: memref<...xf32>, ...)
    ```

    The weights follow in the order of the module's `moe.weight` ops (their
    symbols are removed) as f32 buffers; the runtime converts bf16 files at
    bind time. `expert_ids` / `expert_gates` are the routing trace
    [passes * layers, tokens, top_k] (-1 / 0 where a token did not run).

    Each MoE op becomes a call into the runtime's CPU kernels
    (`moert_rms_norm`, `moert_route`, `moert_experts`, `moert_exit_test`), whose
    grouped expert GEMMs run only on the tokens routed to each expert.
    `moe.loop` becomes an `scf.for` over passes that gathers the still-active
    tokens into a compact buffer, runs the body on them only, scatters the
    result back, and drops exited tokens (`moert_exit_update`), so exited
    tokens cost no further work.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::func::FuncDialect",
    "::mlir::memref::MemRefDialect", "::mlir::scf::SCFDialect"
  ];
}

#endif // MOE_CONVERSION_PASSES_TD
