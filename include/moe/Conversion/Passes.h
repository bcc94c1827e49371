//===- Passes.h - moe conversion passes -------------------------*- C++ -*-===//
#ifndef MOE_CONVERSION_PASSES_H
#define MOE_CONVERSION_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Pass/Pass.h"

namespace mlir::moe {
#define GEN_PASS_DECL
#include "moe/Conversion/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moe/Conversion/Passes.h.inc"

/// Registers `moe-cpu-pipeline`: convert-moe-to-cpu and the upstream passes
/// that take the result to the LLVM dialect.
void registerMoECPUPipeline();
/// Adds that pipeline to `pm`.
void buildMoECPUPipeline(OpPassManager &pm);
} // namespace mlir::moe

#endif // MOE_CONVERSION_PASSES_H
