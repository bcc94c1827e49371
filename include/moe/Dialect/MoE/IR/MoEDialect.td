//===- MoEDialect.td - the moe dialect ---------------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEDIALECT_TD
#define MOE_DIALECT_MOE_IR_MOEDIALECT_TD

include "mlir/IR/OpBase.td"

def MoE_Dialect : Dialect {
  let name = "moe";
  let summary = "Mixture-of-Experts models with shared routers and loops";
  let description = [{
    The `moe` dialect describes Mixture-of-Experts decoder stacks at the model
    level, with tensor semantics. Weights are module-level symbols
    (`moe.weight`) bound by name at run time, so sharing is explicit: two
    `moe.route` ops that name the same router symbol share its parameters
    (PathMoE). `moe.loop` repeats a block of layers with shared weights
    (Looped-MoE) and `moe.exit` marks early exits at its pass boundaries.
  }];
  let cppNamespace = "::mlir::moe";
  let useDefaultAttributePrinterParser = 1;
  let useDefaultTypePrinterParser = 1;
}

class MoE_Op<string mnemonic, list<Trait> traits = []>
    : Op<MoE_Dialect, mnemonic, traits>;

#endif // MOE_DIALECT_MOE_IR_MOEDIALECT_TD
