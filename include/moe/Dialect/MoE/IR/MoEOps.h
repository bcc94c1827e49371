//===- MoEOps.h - moe dialect operations ------------------------*- C++ -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEOPS_H
#define MOE_DIALECT_MOE_IR_MOEOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/ControlFlowInterfaces.h"
#include "mlir/Interfaces/LoopLikeInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "moe/Dialect/MoE/IR/MoEDialect.h"
#include "moe/Dialect/MoE/IR/MoEEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoEAttrs.h.inc"
#define GET_TYPEDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoEOpsTypes.h.inc"

namespace mlir::moe {
class AttentionOp;
class ExitOp;
class YieldOp;
} // namespace mlir::moe

#define GET_OP_CLASSES
#include "moe/Dialect/MoE/IR/MoEOps.h.inc"

namespace mlir::moe {
/// An expert group (a layer): a moe.experts, or what stands for one after
/// moe-decompose-experts, its moe.combine or moe.fused_experts.
bool isExpertLayer(Operation *op);
/// The [tokens, top_k] expert ids routing an expert layer, through its plan
/// when decomposed; null when that plan does not come from a moe.plan.
Value getExpertLayerIds(Operation *layer);
/// The number of experts of an expert layer.
int64_t getExpertLayerExperts(Operation *layer);
} // namespace mlir::moe

#endif // MOE_DIALECT_MOE_IR_MOEOPS_H
