//===- CudaBinary.h - PTX to the artifact's CUDA fatbinary ------*- C++ -*-===//
//
// moe-cuda-pipeline leaves a gpu.binary with one PTX object per chip. This
// assembles each with the CUDA toolkit's ptxas (which also reports every
// kernel's registers, spills and shared memory) and packs the cubins, plus
// the PTX of the oldest chip for GPUs newer than every cubin, into one
// fatbinary with the toolkit's fatbinary tool. The runtime loads it with
// cuModuleLoadData, which picks the image for the device.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TARGET_CUDABINARY_H
#define MOE_TARGET_CUDABINARY_H

#include "mlir/IR/BuiltinOps.h"

#include <string>

namespace mlir::moe {

/// What ptxas reports for one kernel on one chip.
struct KernelResources {
  std::string chip, kernel;
  int64_t registers = 0, barriers = 0, stackFrameBytes = 0, spillStoreBytes = 0,
          spillLoadBytes = 0, sharedBytes = 0, constantBytes = 0;
  /// The most dynamic shared memory a launch of the kernel asks for (not
  /// ptxas's: the host code's).
  int64_t dynamicSharedBytes = 0;
};

/// The CUDA toolkit root to use: `requested` (--cuda-toolkit) if given, else
/// $CUDA_HOME, else /usr/local/cuda. ptxas, fatbinary and libdevice come
/// from there.
std::string getCUDAToolkitPath(StringRef requested = "");

/// The toolkit programs that assembleCudaBinaries runs.
struct CudaTools {
  std::string ptxas, fatbinary;
  /// ptxas's -split-compile: threads for one binary's kernels (0: one per
  /// CPU).
  unsigned ptxasThreads = 0;
};

/// The tools of getCUDAToolkitPath(toolkit) (or on PATH when no toolkit is
/// requested); a missing one is an error on `op` naming it and the fix.
FailureOr<CudaTools> findCudaTools(Operation *op, StringRef toolkit = "");

/// Replaces the PTX objects of every gpu.binary in `module` by one fatbinary
/// object (cubins for each chip plus PTX), made with `tools`. A kernel ptxas
/// rejects is an error on the gpu.binary naming the chip and quoting ptxas.
/// Safe to run on several modules of one context at once.
FailureOr<SmallVector<KernelResources>>
assembleCudaBinaries(ModuleOp module, const CudaTools &tools);

/// A table of `resources`, one line per kernel and chip.
std::string formatKernelReport(ArrayRef<KernelResources> resources);

/// Parses `ptxas -v` output for `chip` (exposed for tests).
SmallVector<KernelResources> parsePtxasInfo(StringRef log, StringRef chip);

} // namespace mlir::moe

#endif // MOE_TARGET_CUDABINARY_H
