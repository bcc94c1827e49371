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

    A layer is a `moe.experts` op; its router is the `moe.route` that
    produces its ids.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

#endif // MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
