//===- ModelArtifact.h - a compiled model's manifest and entry --*- C++ -*-===//
//
// What turns a lowered model into something the runtime can load: a JSON
// manifest (shapes, weights and their safetensors names), a uniform entry
// point `void <symbol>_run(void **descriptors)` (for cuda, one per chip's
// build, with its kernels), and the `moert_compiled_model <symbol>` that
// ties them together. moe-compile writes them into an object file; moe-run
// JIT-compiles the same module.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TARGET_MODELARTIFACT_H
#define MOE_TARGET_MODELARTIFACT_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/Error.h"

#include <memory>
#include <string>

namespace mlir::moe {

/// Model facts the runtime needs, read from the model before lowering
/// (lowering erases the weight symbols).
struct ModelManifest {
  std::string entry;          ///< the model function
  std::string target = "cpu"; ///< "cpu" or "cuda" (device pointers, kernels
                              ///< in the record's gpu_builds)
  int64_t hiddenSize = 0, passes = 0, layers = 0, topK = 0, experts = 0;
  /// Decoders (tokens -> logits): vocabulary, KV cache length, and the width
  /// (kv_heads * head_dim) of each cache slot's K and V buffers.
  bool decoder = false;
  int64_t vocabSize = 0, maxPositions = 0;
  SmallVector<int64_t> cacheWidths;
  struct Weight {
    std::string source, dtype;
    SmallVector<int64_t> shape;
    /// The file stores it with the last two dimensions swapped.
    bool transpose = false;
    /// The element type the compiled code reads: F32, or BF16 for bf16
    /// weights of GPU code (convert-moe-to-gpu's bf16-weights).
    std::string deviceDtype = "F32";
  };
  SmallVector<Weight> weights;

  /// Marks the bf16 weights to be bound as bf16, as GPU code reads them.
  void keepBF16Weights() {
    for (Weight &w : weights)
      if (w.dtype == "BF16")
        w.deviceDtype = "BF16";
  }

  std::string toJSON() const;
};

/// Describes the model function of `module` (the one with a moe.loop).
FailureOr<ModelManifest> describeModel(ModuleOp module);

/// One chip's lowering of a model for CUDA: host code and the kernels
/// tuned for that chip (moe-cuda-pipeline for it alone, the PTX assembled by
/// assembleCudaBinaries).
struct CUDABuild {
  std::string chip;
  OwningOpRef<ModuleOp> module;
};

/// Translates a module lowered by moe-cpu-pipeline (or through the emulated
/// GPU kernels) to LLVM IR and adds the manifest, `<symbol>_run` and the
/// `<symbol>` compiled-model record. Null if it is not such a module.
std::unique_ptr<llvm::Module> translateModel(Operation *lowered,
                                             llvm::LLVMContext &context,
                                             const ModelManifest &manifest,
                                             StringRef symbol);

/// Translates each chip's build of a cuda model and links them into one
/// module: the record's gpu_builds list them in `builds`' order, each with
/// its own run function and embedded kernels. Null on failure.
std::unique_ptr<llvm::Module> translateCUDAModel(ArrayRef<CUDABuild> builds,
                                                 llvm::LLVMContext &context,
                                                 const ModelManifest &manifest,
                                                 StringRef symbol);

/// Writes `module` as a host object file.
llvm::Error emitObjectFile(llvm::Module &module, StringRef path);

/// The C header that declares `<symbol>` for an application.
std::string emitHeader(const ModelManifest &manifest, StringRef symbol);

} // namespace mlir::moe

#endif // MOE_TARGET_MODELARTIFACT_H
