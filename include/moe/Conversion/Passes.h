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

struct MoECPUPipelineOptions
    : public PassPipelineOptions<MoECPUPipelineOptions> {
  Option<unsigned> optLevel{
      *this, "opt-level",
      llvm::cl::desc("0: lower the model as written; 1: first run the moe "
                     "optimising passes (decompose, hoist shared routers, "
                     "fuse, loop residency, exit compaction)"),
      llvm::cl::init(1)};
  Option<int64_t> tile{*this, "tile",
                       llvm::cl::desc("GEMM row tile of routing plans"),
                       llvm::cl::init(16)};
};

/// Adds the moe optimising passes, in order, on every function: decompose
/// experts, hoist shared routers, fuse dispatch/GEMM, loop residency, exit
/// compaction (registered as `moe-optimize`).
void buildMoEOptimizePipeline(OpPassManager &pm, int64_t tile = 16);

/// Registers `moe-cpu-pipeline`: the optimising passes (at opt-level >= 1),
/// convert-moe-to-cpu, and the upstream passes that take the result to the
/// LLVM dialect.
void registerMoECPUPipeline();
/// Adds that pipeline to `pm`.
void buildMoECPUPipeline(OpPassManager &pm,
                         const MoECPUPipelineOptions &options = {});
} // namespace mlir::moe

#endif // MOE_CONVERSION_PASSES_H
