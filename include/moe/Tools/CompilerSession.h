//===- CompilerSession.h - what moe-run and moe-compile share ---*- C++ -*-===//
#ifndef MOE_TOOLS_COMPILERSESSION_H
#define MOE_TOOLS_COMPILERSESSION_H

#include "moe/Target/CudaBinary.h"
#include "moe/Target/ModelArtifact.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ThreadPool.h"

namespace mlir::moe {

/// The command-line options every compiling tool shares (--opt-level,
/// --remarks), in this category.
llvm::cl::OptionCategory &getCompilerOptionsCategory();

/// A context with the dialects and LLVM IR translations that compiling a
/// model needs, the native target initialised, and diagnostics printed
/// against the model's source. The optimising passes explain their decisions
/// as remarks; they are shown only with --remarks.
class CompilerSession {
public:
  CompilerSession();

  MLIRContext &getContext() { return context; }
  /// Reads a .mlir model or imports a config.json (readModelFile).
  FailureOr<OwningOpRef<ModuleOp>> readModel(StringRef path);
  /// Runs moe-cpu-pipeline (its optimising passes unless --opt-level=0) on
  /// `module`, leaving it in the LLVM dialect, and marks in `manifest` (from
  /// describeModel) the weights it keeps bf16 (--cpu-bf16-weights).
  LogicalResult lowerForCPU(ModuleOp module, ModelManifest &manifest);
  /// Runs moe-cuda-pipeline for each of `chips` (empty: sm_90a and sm_80):
  /// its chip-independent half once on `module`, its kernel half on a copy
  /// per chip, and assembles each copy's kernels into the fatbinary its
  /// build embeds; `report` receives ptxas's resources of every kernel, chip
  /// by chip. With --wgmma the sm_90a build gets the warpgroup forms. Marks
  /// `manifest` (from describeModel) as the runtime must see the result:
  /// target cuda, the chips, bf16 weights bound as bf16.
  FailureOr<SmallVector<CUDABuild>>
  lowerForCUDA(ModuleOp module, ArrayRef<std::string> chips,
               ModelManifest &manifest,
               SmallVectorImpl<KernelResources> *report = {});
  /// Runs moe-gpu-emulation-pipeline: the GPU kernels of `chip`'s build
  /// (empty: sm_90a), run on the CPU one thread at a time (for testing the
  /// GPU code generation without a GPU); marks `manifest`'s bf16 weights as
  /// bound as bf16.
  LogicalResult lowerForGPUEmulation(ModuleOp module, ModelManifest &manifest,
                                     StringRef chip = {});

  /// Whether the command line set an option of the GPU kernels
  /// (--tensor-cores, --bf16-activations, --resident-loops, --wgmma,
  /// --split-chunk-rows), which only the two lowerings above use.
  static bool gpuKernelOptionsGiven();
  /// Whether the command line asked for --wgmma (sm_90a's warpgroup tiles).
  static bool wgmmaRequested();

private:
  /// The context's threads when --compile-threads asks for a number (declared
  /// first: it must outlive the context).
  std::unique_ptr<llvm::ThreadPoolInterface> threadPool;
  MLIRContext context;
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diagnostics;
};

} // namespace mlir::moe

#endif // MOE_TOOLS_COMPILERSESSION_H
