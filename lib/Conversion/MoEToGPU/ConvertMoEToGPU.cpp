//===- ConvertMoEToGPU.cpp - moe model to GPU kernels and launches --------===//
//
// The GPU backend runs the host program that convert-moe-to-cpu builds
// (KernelProgram.h): the same buffers, pass loop, token compaction and
// routing trace. Each `moert_*` kernel call becomes one or more launches of
// kernels generated for that call (GPUProgram.h; the kernels are in
// MoEKernels.cpp and DecoderKernels.cpp): static shapes (d, f, E, k),
// activation, scoring, tiles and thresholds are constants of the kernel.
// Buffers become device allocations and all work is queued on one stream.
// A pass loop that is not unrolled then becomes one resident kernel for all
// its passes (ResidentLoop.cpp; with resident-loops=false the host waits
// once per pass to read how many tokens are still active).
//
// The kernels are one-dimensional grids of independent threads: a thread per
// output element or per token, with serial loops over the reduction. They use
// no shared memory or warp shuffles, which keeps them checkable on the CPU
// (moe-emulate-gpu runs every thread in turn). The exceptions are
// warp-collective: mma.sync in the tensor-core forms of the expert GEMMs
// (WarpMma.h; with wgmma, warpgroups on shared memory: WarpgroupMma.h) and
// the shuffles that add the lane partials of the decode
// forms; emulate-warp-ops replaces them with the arithmetic each lane gets
// from them. A resident loop kernel's grid barriers are emulated as a grid
// of one thread. Atomics order plan
// rows within an expert segment arbitrarily; every row is computed by the
// same code from the same inputs, so results do not depend on that order.
//
//===----------------------------------------------------------------------===//
#include "GPUProgram.h"

#include "moe/Conversion/KernelProgram.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETOGPU
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;
using namespace mlir::moe::gpu_lowering;

namespace {
constexpr StringLiteral kKernelModule = "moe_kernels";

struct ConvertMoEToGPUPass
    : public moe::impl::ConvertMoEToGPUBase<ConvertMoEToGPUPass> {
  using ConvertMoEToGPUBase::ConvertMoEToGPUBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    // The GPU kernels implement expert groups in fused form only.
    WalkResult unfused = module.walk([](Operation *op) {
      if (!isa<ExpertsOp, DispatchOp, GroupedMatmulOp, GluOp, CombineOp>(op))
        return WalkResult::advance();
      op->emitError("convert-moe-to-gpu needs fused expert groups "
                    "(moe.fused_experts): run moe-decompose-experts and "
                    "moe-fuse-dispatch-gemm first, as moe-cuda-pipeline does");
      return WalkResult::interrupt();
    });
    if (unfused.wasInterrupted())
      return signalPassFailure();
    GPUKernelOptions kernelOptions;
    std::optional<ChipLimits> limits = lookupChipLimits(chip);
    if (!limits) {
      emitError(module.getLoc(), "convert-moe-to-gpu: chip '")
          << chip
          << "' is not an NVIDIA architecture (sm_<number>, e.g. "
             "sm_90a)";
      return signalPassFailure();
    }
    kernelOptions.tensorCores = tensorCores;
    kernelOptions.bf16Activations = bf16Activations;
    kernelOptions.emulateWarpOps = emulateWarpOps;
    kernelOptions.residentLoops = residentLoops;
    // wgmma and TMA exist on sm_90a alone (not sm_90, nor later chips);
    // emulated kernels stand for that chip's too.
    if (wgmma && chip != "sm_90a") {
      emitError(module.getLoc(), "convert-moe-to-gpu: wgmma kernels need "
                                 "chip sm_90a, not '")
          << chip << "'";
      return signalPassFailure();
    }
    kernelOptions.wgmma = wgmma;
    if (splitChunkRows < 1 || splitChunkRows > 8) {
      emitError(module.getLoc(),
                "convert-moe-to-gpu: split-chunk-rows must be 1 to 8, not ")
          << static_cast<int64_t>(splitChunkRows);
      return signalPassFailure();
    }
    kernelOptions.splitChunkRows = splitChunkRows;
    kernelOptions.reportForms = reportForms;
    kernelOptions.chip = *limits;

    KernelProgramOptions options;
    options.bf16Weights = bf16Weights;
    options.passName = "convert-moe-to-gpu";
    if (failed(lowerModelsToKernelCalls(module, options)))
      return signalPassFailure();

    OpBuilder b(module.getContext());
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    b.getUnitAttr());
    b.setInsertionPointToEnd(module.getBody());
    auto kernelModule =
        gpu::GPUModuleOp::create(b, module.getLoc(), kKernelModule);
    GPUProgram program(module, kernelModule, kernelOptions);
    for (func::FuncOp func : llvm::to_vector(module.getOps<func::FuncOp>())) {
      if (func.isExternal())
        continue;
      if (failed(program.rewrite(func)))
        return signalPassFailure();
      if (!residentLoops)
        continue;
      SmallVector<scf::ForOp> passLoops;
      func.walk([&](scf::ForOp loop) {
        if (loop->hasAttr(kPassLoopAttr))
          passLoops.push_back(loop);
      });
      for (scf::ForOp loop : passLoops)
        if (failed(makeLoopResident(program, loop)))
          return signalPassFailure();
    }
    // Kernels only a resident loop used are now inlined into its kernel.
    for (auto fn : llvm::to_vector(kernelModule.getOps<gpu::GPUFuncOp>()))
      if (fn.symbolKnownUseEmpty(module))
        fn.erase();
    // The CPU kernel declarations and the views cast for them are unused.
    for (func::FuncOp func : llvm::to_vector(module.getOps<func::FuncOp>()))
      if (func.isExternal() && func.symbolKnownUseEmpty(module))
        func.erase();
    module.walk([](memref::CastOp cast) {
      if (cast.use_empty())
        cast.erase();
    });
  }
};
} // namespace
