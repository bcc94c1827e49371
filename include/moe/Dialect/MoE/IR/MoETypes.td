//===- MoETypes.td - moe dialect types ---------------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOETYPES_TD
#define MOE_DIALECT_MOE_IR_MOETYPES_TD

include "moe/Dialect/MoE/IR/MoEDialect.td"
include "mlir/IR/AttrTypeBase.td"

def MoE_PlanType : TypeDef<MoE_Dialect, "Plan"> {
  let mnemonic = "plan";
  let summary = "a routing plan: token slots grouped by expert";
  let description = [{
    The (token, slot) pairs of `[tokens, top_k]` expert ids sorted by expert
    (ascending token within an expert, so the plan is deterministic), each
    expert's segment padded to a multiple of `tile` rows so that grouped GEMM
    tiles never straddle two experts. Plan-ordered tensors have
    `tokens * top_k + experts * (tile - 1)` rows; padding rows are zero.
    A plan is an explicit value so that layers sharing one routing decision
    share one plan, and so that an expert-parallel plan (which rank owns which
    expert) can later take its place.
  }];
  let parameters = (ins "int64_t":$experts, "int64_t":$topK, "int64_t":$tile);
  let assemblyFormat = "`<` `experts` `=` $experts `,` `top_k` `=` $topK `,` `tile` `=` $tile `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Rows of a plan-ordered tensor for `tokens` tokens.
    int64_t planRows(int64_t tokens) const {
      return tokens * getTopK() + getExperts() * (getTile() - 1);
    }
  }];
}

#endif // MOE_DIALECT_MOE_IR_MOETYPES_TD
