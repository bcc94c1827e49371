//===- CompilerSession.cpp - what moe-run and moe-compile share -----------===//
#include "moe/Tools/CompilerSession.h"
#include "moe/Conversion/KernelProgram.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEDialect.h"
#include "moe/Import/ModelFile.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/Threading.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/TargetSelect.h"

using namespace mlir;

llvm::cl::OptionCategory &moe::getCompilerOptionsCategory() {
  static llvm::cl::OptionCategory category("compiler options");
  return category;
}

namespace {
llvm::cl::opt<unsigned>
    optLevel("opt-level", llvm::cl::init(1), llvm::cl::value_desc("0|1"),
             llvm::cl::cat(moe::getCompilerOptionsCategory()),
             llvm::cl::desc("0: lower the model as written; 1 (default): run "
                            "the moe optimising passes first"));
llvm::cl::opt<bool>
    showRemarks("remarks", llvm::cl::cat(moe::getCompilerOptionsCategory()),
                llvm::cl::desc("Print the optimising passes' remarks (what "
                               "they did and why)"));

llvm::cl::opt<bool> cpuBF16Weights(
    "cpu-bf16-weights", llvm::cl::init(true),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc(
        "CPU code: keep bf16 expert, attention, embedding and "
        "LM-head weights bf16 in memory, widened as their kernels read "
        "them: the same results from half the bytes (default "
        "true; false: widen every weight to f32 at load)"));

llvm::cl::opt<std::string> cudaToolkit(
    "cuda-toolkit", llvm::cl::value_desc("dir"),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("CUDA code generation: the toolkit whose ptxas and "
                   "fatbinary to use (default: $CUDA_HOME, /usr/local/cuda, "
                   "PATH)"));

llvm::cl::opt<bool> tensorCores(
    "tensor-cores", llvm::cl::init(true),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("GPU kernels: run the GEMMs of bf16 weights on tensor "
                   "cores (mma.sync) where the cost model picks them "
                   "(default true)"));
llvm::cl::opt<bool> bf16Activations(
    "bf16-activations", llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("GPU kernels: round activations to bf16 for the tensor "
                   "cores (bf16 accuracy, half the tensor work) and keep the "
                   "experts' intermediates in bf16 (half their memory), "
                   "instead of splitting each into two bf16 parts (close to "
                   "f32)"));

llvm::cl::opt<bool> residentLoops(
    "resident-loops", llvm::cl::init(true),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("GPU kernels: run each resident moe.loop as one kernel "
                   "that stays on the GPU for every pass (default true); "
                   "false: a host loop of launches that reads the active "
                   "token count back after each pass"));

llvm::cl::opt<bool> wgmma(
    "wgmma", llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("GPU kernels: on sm_90a (H100, H200), run the weight "
                   "GEMMs' larger row counts (past a hand-over the cost model "
                   "picks) as warpgroup tiles (wgmma from shared memory, "
                   "weight tiles by TMA) instead of mma.sync, in the sm_90a "
                   "build (other chips' builds keep mma.sync). Not yet "
                   "validated on a GPU (default false)"));

llvm::cl::opt<int64_t> splitChunkRows(
    "split-chunk-rows", llvm::cl::init(4), llvm::cl::value_desc("1-8"),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("GPU kernels: rows of one expert that a warp of the "
                   "decode form takes at once, reading each weight chunk "
                   "once for them (default 4; 1 reads an expert's weights "
                   "once per row)"));

llvm::cl::opt<unsigned> compileThreads(
    "compile-threads", llvm::cl::init(0), llvm::cl::value_desc("n"),
    llvm::cl::cat(moe::getCompilerOptionsCategory()),
    llvm::cl::desc("Threads to compile with (default 0: one per CPU; 1: a "
                   "single thread): the passes, the chips' CUDA builds, "
                   "which compile in parallel, and ptxas, which spreads a "
                   "build's kernels over them"));

/// What the command line sets of the GPU kernels, for the CUDA pipeline and
/// its emulation alike (chips, toolkit and wgmma are each one's own).
void setGPUKernelOptions(moe::MoECUDAPipelineOptions &options) {
  options.optLevel = optLevel;
  options.tensorCores = tensorCores;
  options.bf16Activations = bf16Activations;
  options.residentLoops = residentLoops;
  options.reportForms = showRemarks;
  options.splitChunkRows = splitChunkRows;
}

DialectRegistry compilerDialects() {
  DialectRegistry registry;
  registry.insert<moe::MoEDialect, func::FuncDialect, arith::ArithDialect,
                  memref::MemRefDialect, scf::SCFDialect,
                  cf::ControlFlowDialect, LLVM::LLVMDialect>();
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  moe::registerGPUPipelineDependencies(registry);
  return registry;
}
} // namespace

moe::CompilerSession::CompilerSession()
    : context(compilerDialects()), diagnostics(sourceMgr, &context) {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  context.printOpOnDiagnostic(false);
  if (compileThreads == 1) {
    context.disableMultithreading();
  } else if (compileThreads > 1) {
    threadPool = std::make_unique<llvm::DefaultThreadPool>(
        llvm::hardware_concurrency(compileThreads));
    context.disableMultithreading();
    context.setThreadPool(*threadPool);
  }
  // Handlers run newest first: this one swallows remarks unless asked.
  context.getDiagEngine().registerHandler([](Diagnostic &diag) {
    return success(diag.getSeverity() == DiagnosticSeverity::Remark &&
                   !showRemarks);
  });
}

FailureOr<OwningOpRef<ModuleOp>>
moe::CompilerSession::readModel(StringRef path) {
  return readModelFile(path, &context, sourceMgr);
}

LogicalResult moe::CompilerSession::lowerForCPU(ModuleOp module,
                                                ModelManifest &manifest) {
  PassManager pm(&context);
  MoECPUPipelineOptions options;
  options.optLevel = optLevel;
  options.bf16Weights = cpuBF16Weights;
  buildMoECPUPipeline(pm, options);
  if (failed(pm.run(module)))
    return failure();
  // The runtime binds the weights the lowering kept bf16 as bf16.
  auto kept = module->getAttrOfType<DenseI64ArrayAttr>(kHostBF16WeightsAttr);
  if (!kept)
    return success();
  for (int64_t i : kept.asArrayRef()) {
    if (i < 0 || i >= int64_t(manifest.weights.size()))
      return module.emitError("internal error: ")
             << kHostBF16WeightsAttr << " names weight " << i << " of "
             << manifest.weights.size();
    manifest.weights[i].deviceDtype = "BF16";
  }
  module->removeAttr(kHostBF16WeightsAttr);
  return success();
}

FailureOr<SmallVector<moe::CUDABuild>>
moe::CompilerSession::lowerForCUDA(ModuleOp module, ArrayRef<std::string> chips,
                                   ModelManifest &manifest,
                                   SmallVectorImpl<KernelResources> *report) {
  // The kernels link the toolkit's libdevice (expf, sqrtf, ...): check for
  // it up front, with a message that says which option to fix.
  std::string toolkit = getCUDAToolkitPath(cudaToolkit);
  std::string libdevice = toolkit + "/nvvm/libdevice/libdevice.10.bc";
  if (!llvm::sys::fs::is_regular_file(libdevice))
    return module.emitError("no CUDA toolkit at '")
           << toolkit << "' (" << libdevice
           << " is missing): install the toolkit, or point --cuda-toolkit or "
              "CUDA_HOME at it";
  MoECUDAPipelineOptions options;
  setGPUKernelOptions(options);
  options.chips = SmallVector<std::string>(chips);
  options.toolkit = toolkit;
  SmallVector<std::string> targets = options.getChips();
  for (auto [i, chip] : llvm::enumerate(targets))
    if (llvm::is_contained(ArrayRef(targets).take_front(i), chip))
      return module.emitError("--chip lists ") << chip << " twice";
  // wgmma and TMA exist on sm_90a alone: the other chips' builds keep
  // mma.sync.
  if (wgmma && !llvm::is_contained(targets, "sm_90a"))
    return module.emitError("--wgmma builds warpgroup kernels for sm_90a, "
                            "which --chip leaves out: add sm_90a, or drop "
                            "--wgmma");
  // The optimising passes and the expert form do not depend on the chip:
  // they run once. Then each chip gets kernels of its own, tuned by its cost
  // model, and the runtime loads the build that fits the GPU.
  FailureOr<CudaTools> tools = findCudaTools(module, cudaToolkit);
  if (failed(tools))
    return failure();
  tools->ptxasThreads = compileThreads;
  PassManager prepare(&context);
  buildMoEGPUExpertFormPipeline(prepare, options);
  if (failed(prepare.run(module)))
    return failure();
  // The chips' builds are independent: they compile in parallel (most of
  // their time is the NVPTX back end and ptxas). Their pass managers are
  // made here, and the dialects they load are loaded here, because a
  // context must not load dialects while passes run on other threads.
  struct ChipBuild {
    CUDABuild build;
    std::unique_ptr<PassManager> pm;
    SmallVector<KernelResources> kernels;
    bool built = false;
  };
  SmallVector<ChipBuild> chipBuilds;
  DialectRegistry kernelDialects;
  for (const std::string &chip : targets) {
    MoECUDAPipelineOptions one;
    one.copyOptionValuesFrom(options);
    one.chips = SmallVector<std::string>{chip};
    one.wgmma = wgmma && chip == "sm_90a";
    auto pm = std::make_unique<PassManager>(&context);
    buildMoECUDAKernelPipeline(*pm, one);
    pm->getDependentDialects(kernelDialects);
    chipBuilds.push_back({{chip, module.clone()}, std::move(pm), {}, false});
  }
  context.appendDialectRegistry(kernelDialects);
  for (StringRef name : kernelDialects.getDialectNames())
    context.getOrLoadDialect(name);
  // Every chip runs to its end, so that what fails is reported for each
  // chip it fails on, in the chips' order, however the threads interleave.
  parallelForEach(&context, chipBuilds, [&](ChipBuild &chip) {
    if (failed(chip.pm->run(*chip.build.module)))
      return;
    FailureOr<SmallVector<KernelResources>> kernels =
        assembleCudaBinaries(*chip.build.module, *tools);
    if (failed(kernels))
      return;
    chip.kernels = std::move(*kernels);
    chip.built = true;
  });
  if (!llvm::all_of(chipBuilds, [](ChipBuild &chip) { return chip.built; }))
    return failure();
  SmallVector<CUDABuild> builds;
  for (ChipBuild &chip : chipBuilds) {
    if (report)
      report->append(chip.kernels.begin(), chip.kernels.end());
    builds.push_back(std::move(chip.build));
  }
  // What the runtime needs to know of code convert-moe-to-gpu made.
  manifest.target = "cuda";
  manifest.keepBF16Weights();
  return builds;
}

LogicalResult moe::CompilerSession::lowerForGPUEmulation(
    ModuleOp module, ModelManifest &manifest, StringRef chip) {
  PassManager pm(&context);
  MoECUDAPipelineOptions options;
  setGPUKernelOptions(options);
  if (!chip.empty())
    options.chips = SmallVector<std::string>{chip.str()};
  options.wgmma = wgmma;
  buildMoEGPUEmulationPipeline(pm, options);
  // The emulated kernels read bf16 weights as the GPU's do.
  manifest.keepBF16Weights();
  return pm.run(module);
}

bool moe::CompilerSession::wgmmaRequested() { return wgmma; }

bool moe::CompilerSession::gpuKernelOptionsGiven() {
  return tensorCores.getNumOccurrences() ||
         bf16Activations.getNumOccurrences() ||
         residentLoops.getNumOccurrences() || wgmma.getNumOccurrences() ||
         splitChunkRows.getNumOccurrences();
}
