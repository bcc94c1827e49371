//===- GPUPipeline.cpp - moe-cuda-pipeline and its CPU emulation ----------===//
#include "moe/Conversion/GPUCostModel.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"
#include "moe/Target/CudaBinary.h"

#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVM.h"
#include "mlir/Conversion/GPUToNVVM/GPUToNVVM.h"
#include "mlir/Conversion/IndexToLLVM/IndexToLLVM.h"
#include "mlir/Conversion/MathToLLVM/MathToLLVM.h"
#include "mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h"
#include "mlir/Conversion/NVVMToLLVM/NVVMToLLVM.h"
#include "mlir/Conversion/Passes.h"
#include "mlir/Conversion/VectorToLLVM/ConvertVectorToLLVM.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVM/NVVM/Target.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/GPU/GPUToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/NVVM/NVVMToLLVMIRTranslation.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

// The GPU kernels exist for fused expert groups only, so even opt-level 0
// decomposes and fuses them.
void mlir::moe::buildMoEGPUExpertFormPipeline(
    OpPassManager &pm, const MoECUDAPipelineOptions &options) {
  if (options.optLevel > 0)
    return moe::buildMoEOptimizePipeline(pm, options.tile);
  OpPassManager &fpm = pm.nest<func::FuncOp>();
  fpm.addPass(moe::createMoEDecomposeExperts({options.tile}));
  fpm.addPass(moe::createMoEFuseDispatchGemm());
}

void mlir::moe::buildMoECUDAPipeline(OpPassManager &pm,
                                     const MoECUDAPipelineOptions &options) {
  buildMoEGPUExpertFormPipeline(pm, options);
  buildMoECUDAKernelPipeline(pm, options);
}

void mlir::moe::buildMoECUDAKernelPipeline(
    OpPassManager &pm, const MoECUDAPipelineOptions &options) {
  // The cost model assumes the first chip (the one tuned for). All chips
  // share the kernels: bf16 mma.sync only if every chip has it.
  ConvertMoEToGPUOptions kernels;
  kernels.tensorCores = options.tensorCores;
  kernels.bf16Activations = options.bf16Activations;
  kernels.residentLoops = options.residentLoops;
  kernels.wgmma = options.wgmma;
  kernels.reportForms = options.reportForms;
  kernels.splitChunkRows = options.splitChunkRows;
  kernels.chip = options.getChips().front();
  for (const std::string &chip : options.getChips()) {
    std::optional<gpu_lowering::ChipLimits> limits =
        gpu_lowering::lookupChipLimits(chip);
    if (limits && limits->tensorFlops == 0)
      kernels.tensorCores = false;
  }
  pm.addPass(createConvertMoEToGPU(kernels));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  // One NVVM target per chip; gpu-module-to-binary makes one PTX object for
  // each. PTX ISA 8.1 (CUDA 12.1) covers sm_80 and sm_90a, and lets kernels
  // (resident loops) take more than 4352 bytes of parameters. The warpgroup
  // kernels acquire their tensor maps with fence.proxy.tensormap, which
  // needs PTX ISA 8.3 (CUDA 12.3).
  for (const std::string &chip : options.getChips()) {
    GpuNVVMAttachTargetOptions target;
    target.chip = chip;
    target.features = options.wgmma && chip == "sm_90a" ? "+ptx83" : "+ptx81";
    target.optLevel = 3;
    pm.addPass(createGpuNVVMAttachTarget(target));
  }
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  pm.addNestedPass<gpu::GPUModuleOp>(createConvertGpuOpsToNVVMOps());
  // NVVM operations that exist only as PTX (wgmma.mma_async) become inline
  // assembly.
  pm.addNestedPass<gpu::GPUModuleOp>(createConvertNVVMToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createGpuToLLVMConversionPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  GpuModuleToBinaryPassOptions binary;
  binary.compilationTarget = "isa";
  // libdevice (expf, sqrtf, ...) is linked from the toolkit; MLIR finds it
  // only through this path, not through PATH.
  binary.toolkitPath = getCUDAToolkitPath(options.toolkit);
  pm.addPass(createGpuModuleToBinaryPass(binary));
}

void mlir::moe::buildMoEGPUEmulationPipeline(
    OpPassManager &pm, const MoECUDAPipelineOptions &options) {
  buildMoEGPUExpertFormPipeline(pm, options);
  // The same kernels, with warp-collective operations as the arithmetic
  // they do per lane.
  ConvertMoEToGPUOptions kernels;
  kernels.tensorCores = options.tensorCores;
  kernels.bf16Activations = options.bf16Activations;
  kernels.residentLoops = options.residentLoops;
  kernels.wgmma = options.wgmma;
  kernels.reportForms = options.reportForms;
  kernels.splitChunkRows = options.splitChunkRows;
  kernels.emulateWarpOps = true;
  kernels.chip = options.getChips().front();
  pm.addPass(createConvertMoEToGPU(kernels));
  pm.addPass(createMoEEmulateGPU());
  // The emulated tensor-core steps round to bf16 (arith.truncf) as the GPU
  // does; on the CPU that becomes integer arithmetic, with no bf16
  // conversion routine needed from the C runtime.
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  pm.addPass(arith::createArithExpandOpsPass(expand));
  buildHostToLLVMPipeline(pm);
}

void mlir::moe::registerMoEGPUPipelines() {
  PassPipelineRegistration<MoECUDAPipelineOptions>(
      "moe-cuda-pipeline",
      "Lower a moe model for NVIDIA GPUs: specialised kernels as PTX for "
      "each chip, host code in the LLVM dialect",
      buildMoECUDAPipeline);
  PassPipelineRegistration<MoECUDAPipelineOptions>(
      "moe-gpu-emulation-pipeline",
      "Lower a moe model through the GPU kernels, then run them on the CPU "
      "one thread at a time (testing without a GPU)",
      buildMoEGPUEmulationPipeline);
}

void mlir::moe::registerGPUPipelineDependencies(DialectRegistry &registry) {
  registry.insert<gpu::GPUDialect, NVVM::NVVMDialect, math::MathDialect,
                  LLVM::LLVMDialect>();
  NVVM::registerNVVMTargetInterfaceExternalModels(registry);
  arith::registerConvertArithToLLVMInterface(registry);
  cf::registerConvertControlFlowToLLVMInterface(registry);
  registerConvertFuncToLLVMInterface(registry);
  index::registerConvertIndexToLLVMInterface(registry);
  registerConvertMathToLLVMInterface(registry);
  registerConvertMemRefToLLVMInterface(registry);
  vector::registerConvertVectorToLLVMInterface(registry);
  registerConvertNVVMToLLVMInterface(registry);
  NVVM::registerConvertGpuToNVVMInterface(registry);
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  registerGPUDialectTranslation(registry);
  gpu::registerOffloadingLLVMTranslationInterfaceExternalModels(registry);
  registerNVVMDialectTranslation(registry);
}
