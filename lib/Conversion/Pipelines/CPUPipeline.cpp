//===- CPUPipeline.cpp - moe-cpu-pipeline
//----------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::moe::buildMoEOptimizePipeline(OpPassManager &pm, int64_t tile) {
  OpPassManager &fpm = pm.nest<func::FuncOp>();
  fpm.addPass(createMoEDecomposeExperts({tile}));
  fpm.addPass(createMoEHoistSharedRouters());
  fpm.addPass(createMoEFuseDispatchGemm());
  fpm.addPass(createMoELoopResidency());
  fpm.addPass(createMoEExitCompaction());
}

void mlir::moe::buildMoECPUPipeline(OpPassManager &pm,
                                    const MoECPUPipelineOptions &options) {
  if (options.optLevel > 0)
    buildMoEOptimizePipeline(pm, options.tile);
  pm.addPass(createConvertMoEToCPU({options.bf16Weights}));
  buildHostToLLVMPipeline(pm);
}

void mlir::moe::buildHostToLLVMPipeline(OpPassManager &pm) {
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  // The emulated GPU kernels load weights in vectors.
  pm.addPass(createConvertVectorToLLVMPass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}

void mlir::moe::registerMoECPUPipeline() {
  PassPipelineRegistration<>(
      "moe-optimize",
      "The moe optimising passes of moe-cpu-pipeline, without lowering",
      [](OpPassManager &pm) { buildMoEOptimizePipeline(pm); });
  PassPipelineRegistration<MoECPUPipelineOptions>(
      "moe-cpu-pipeline",
      "Lower a moe model for the CPU: kernel calls, then the LLVM dialect",
      buildMoECPUPipeline);
}
