//===- KernelProgram.h - a model as a host program of kernel calls -*- C++
//-*-===//
//
// Both backends run the same host program: buffers, the pass loop, token
// compaction and the routing trace, around calls of `moert_*` kernels
// (see moert/CpuKernels.h for what each computes). convert-moe-to-cpu links
// the calls to the CPU kernel library; convert-moe-to-gpu replaces each call
// with launches of GPU kernels specialised for its operands.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_CONVERSION_KERNELPROGRAM_H
#define MOE_CONVERSION_KERNELPROGRAM_H

#include "mlir/IR/BuiltinOps.h"

namespace mlir::moe {
struct KernelProgramOptions {
  /// GPU: bind every bf16 weight as a bf16 buffer (the GPU kernels widen
  /// each element as they load it) instead of an f32 one (the runtime widens
  /// at load). The manifest's device_dtype must agree.
  bool bf16Weights = false;
  /// CPU: bind as bf16 buffers the bf16 weights that only CPU kernels with a
  /// bf16 form read (fused expert groups, attention projections, embeddings,
  /// LM heads: the `moert_*_bf16` kernels); their positions among the
  /// weights go to the module's kHostBF16WeightsAttr.
  bool bf16CpuWeights = false;
  /// The pass that lowers, as errors name it.
  llvm::StringRef passName = "convert-moe-to-cpu";
};

/// The positions (in moe.weight order) of the weights that the CPU lowering
/// kept bf16: a DenseI64ArrayAttr on the module, for the manifest.
inline constexpr llvm::StringLiteral kHostBF16WeightsAttr =
    "moe.host_bf16_weights";

/// Marks the scf.for of a pass loop that is not unrolled (moe.loop mode
/// resident or auto): convert-moe-to-gpu can make it one resident kernel.
inline constexpr llvm::StringLiteral kPassLoopAttr = "moe.pass_loop";

/// Rewrites every model and decoder function of `module` into its host
/// program: memref buffers (memref.alloc / copy / dealloc), scf loops, and
/// `func.call @moert_*` of private kernel declarations whose memref operands
/// are cast to fully dynamic strided views. Removes the weight symbols.
LogicalResult
lowerModelsToKernelCalls(ModuleOp module,
                         const KernelProgramOptions &options = {});
} // namespace mlir::moe

#endif // MOE_CONVERSION_KERNELPROGRAM_H
