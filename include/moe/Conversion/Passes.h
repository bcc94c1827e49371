//===- Passes.h - moe conversion passes -------------------------*- C++ -*-===//
#ifndef MOE_CONVERSION_PASSES_H
#define MOE_CONVERSION_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
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
  Option<bool> bf16Weights{
      *this, "bf16-weights",
      llvm::cl::desc("convert-moe-to-cpu's bf16-weights: keep bf16 the bf16 "
                     "weights that only kernels with a bf16 form read"),
      llvm::cl::init(true)};
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
struct MoECUDAPipelineOptions
    : public PassPipelineOptions<MoECUDAPipelineOptions> {
  ListOption<std::string> chips{
      *this, "chip",
      llvm::cl::desc("GPU architectures to compile the kernels for, each to "
                     "PTX (default sm_90a,sm_80)")};
  Option<unsigned> optLevel{
      *this, "opt-level",
      llvm::cl::desc("0: only decompose and fuse the expert groups (the GPU "
                     "kernels need fused experts); 1: all moe optimising "
                     "passes"),
      llvm::cl::init(1)};
  // The SIMT expert kernels compute a row at a time: padding a plan's
  // segments to a tile would only add idle threads.
  Option<int64_t> tile{*this, "tile",
                       llvm::cl::desc("GEMM row tile of routing plans (default "
                                      "1: the GPU kernels need no padding)"),
                       llvm::cl::init(1)};
  Option<bool> tensorCores{
      *this, "tensor-cores",
      llvm::cl::desc("Run the expert GEMMs on tensor cores (mma.sync) where "
                     "the cost model picks them (default true)"),
      llvm::cl::init(true)};
  Option<bool> bf16Activations{
      *this, "bf16-activations",
      llvm::cl::desc("Round activations to bf16 for the tensor cores (one "
                     "mma.sync per step) and store the experts' intermediates "
                     "in bf16, instead of splitting them into two bf16 parts "
                     "(two per step, close to f32 accuracy)"),
      llvm::cl::init(false)};
  Option<bool> wgmma{
      *this, "wgmma",
      llvm::cl::desc("Give the weight GEMMs a Hopper warpgroup form (wgmma + "
                     "TMA) for the rows past a hand-over the cost model "
                     "picks; needs chip=sm_90a alone (default false: not yet "
                     "validated on a GPU)"),
      llvm::cl::init(false)};
  Option<bool> residentLoops{
      *this, "resident-loops",
      llvm::cl::desc("Run each pass loop that is not unrolled as one "
                     "resident kernel (default true); false: a host loop of "
                     "launches that reads the active-token count back after "
                     "each pass"),
      llvm::cl::init(true)};
  Option<int64_t> splitChunkRows{
      *this, "split-chunk-rows",
      llvm::cl::desc("Rows of one expert (1 to 8) a warp of the decode form "
                     "takes at once, reading each weight chunk once for them "
                     "(default 4)"),
      llvm::cl::init(4)};
  Option<bool> reportForms{
      *this, "report-forms",
      llvm::cl::desc("Say in a remark which forms each GEMM got from the cost "
                     "model"),
      llvm::cl::init(false)};
  Option<std::string> toolkit{
      *this, "toolkit",
      llvm::cl::desc("CUDA toolkit root, for libdevice (default $CUDA_HOME, "
                     "else /usr/local/cuda)")};
  /// The chips to compile for, defaults applied.
  SmallVector<std::string> getChips() const {
    if (chips.empty())
      return {"sm_90a", "sm_80"};
    return SmallVector<std::string>(chips.begin(), chips.end());
  }
};

/// Registers `moe-cuda-pipeline`: the optimising passes, convert-moe-to-gpu,
/// NVVM targets for every chip, the lowering of kernels to NVVM and of the
/// host to LLVM, and gpu-module-to-binary to PTX (format isa: moe-compile
/// assembles it with ptxas into the artifact's fatbinary). Also registers
/// `moe-gpu-emulation-pipeline`, which runs the same kernels on the CPU
/// (moe-emulate-gpu) for tests on machines without a GPU.
void registerMoEGPUPipelines();
/// Adds what moe-cuda-pipeline needs to a context's registry: the gpu, nvvm
/// and math dialects, the NVVM target (PTX through LLVM's NVPTX backend),
/// the to-LLVM conversion interfaces convert-gpu-to-nvvm uses, and the LLVM
/// IR translations.
void registerGPUPipelineDependencies(DialectRegistry &registry);
void buildMoECUDAPipeline(OpPassManager &pm,
                          const MoECUDAPipelineOptions &options = {});
/// moe-cuda-pipeline in its two halves, for compiling one model for several
/// chips with kernels of each chip's own: the chip-independent half (the
/// optimising passes, the fused expert form) runs once, the kernel half
/// (convert-moe-to-gpu down to PTX for `options`' chips) on a copy per chip.
void buildMoEGPUExpertFormPipeline(OpPassManager &pm,
                                   const MoECUDAPipelineOptions &options);
void buildMoECUDAKernelPipeline(OpPassManager &pm,
                                const MoECUDAPipelineOptions &options);
/// The emulation takes moe-cuda-pipeline's options (chip and toolkit are
/// unused: no PTX is made), so that it runs the kernels the GPU would.
void buildMoEGPUEmulationPipeline(OpPassManager &pm,
                                  const MoECUDAPipelineOptions &options = {});
/// The upstream passes that take a module of host code (func, memref, scf,
/// arith, math) to the LLVM dialect: the end of moe-cpu-pipeline.
void buildHostToLLVMPipeline(OpPassManager &pm);
} // namespace mlir::moe

#endif // MOE_CONVERSION_PASSES_H
