//===- moe-compile.cpp - compile a moe model to an object and a header ----===//
//
// moe-compile MODEL [--target cpu|cuda] -o model.o --header model.h
//             [--name SYM] [--chip sm_90a,sm_80] [--kernel-report]
//
// The object defines `const moert_compiled_model SYM` (default moe_model);
// an application includes the header, links the object with the runtime
// (libMoERuntime, libMoECpuKernels) and loads it with moert_model_load. For
// --target cuda the object holds a build per chip: host code and kernels
// tuned for that chip, as a CUDA fatbinary (cubin and PTX) assembled with
// the CUDA toolkit's ptxas.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "moe/Target/ModelArtifact.h"
#include "moe/Tools/CompilerSession.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace mlir;
namespace cl = llvm::cl;

static cl::OptionCategory compileCategory("moe-compile options");

static cl::opt<std::string> modelPath(cl::Positional, cl::Required,
                                      cl::cat(compileCategory),
                                      cl::desc("<model.mlir | config.json>"));
static cl::opt<std::string> target("target", cl::init("cpu"),
                                   cl::value_desc("cpu|cuda"),
                                   cl::cat(compileCategory),
                                   cl::desc("Code generation target: cpu "
                                            "(default) or cuda (NVIDIA GPUs; "
                                            "needs the CUDA toolkit)"));
static cl::list<std::string>
    chips("chip", cl::CommaSeparated, cl::value_desc("sm_XY,..."),
          cl::cat(compileCategory),
          cl::desc("--target cuda: GPU architectures to build for "
                   "(default sm_90a,sm_80): each gets kernels tuned for it, "
                   "as a cubin and PTX (which the driver compiles for newer "
                   "GPUs); the runtime loads the build that fits the GPU"));
static cl::opt<bool> kernelReport(
    "kernel-report", cl::cat(compileCategory),
    cl::desc("--target cuda: print every kernel's registers, spills, stack "
             "and static shared memory per chip, as ptxas reports them, and "
             "the dynamic shared memory its launches ask for"));
static cl::opt<std::string> outputPath("o", cl::Required,
                                       cl::value_desc("file.o"),
                                       cl::cat(compileCategory),
                                       cl::desc("Object file to write"));
static cl::opt<std::string>
    headerPath("header", cl::value_desc("file.h"), cl::cat(compileCategory),
               cl::desc("C header declaring the compiled model"));
static cl::opt<std::string>
    symbolName("name", cl::init("moe_model"), cl::value_desc("symbol"),
               cl::cat(compileCategory),
               cl::desc("C symbol of the compiled model (default moe_model)"));

static int fail(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "moe-compile") << message << "\n";
  return 1;
}

static bool isCIdentifier(StringRef name) {
  return !name.empty() && !llvm::isDigit(name.front()) &&
         llvm::all_of(name,
                      [](char c) { return llvm::isAlnum(c) || c == '_'; });
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(
      {&compileCategory, &moe::getCompilerOptionsCategory()});
  cl::ParseCommandLineOptions(
      argc, argv,
      "moe-compile: compile a moe model to an object file and a C header\n\n"
      "MODEL is a .mlir file in the moe dialect or a config.json (moe_stack, "
      "mixtral,\nolmoe, qwen3_moe, loop-lm).\n"
      "Link the object with the moe runtime; see runtime/include/moert/"
      "moert.h.\n"
      "--target cuda builds the model for each --chip: kernels tuned for it, "
      "as a CUDA\nfatbinary (cubin and PTX) assembled with the CUDA "
      "toolkit's ptxas; load it on a\n'cuda' runtime context, which picks "
      "the build that fits the GPU.\n");
  if (target != "cpu" && target != "cuda")
    return fail("unknown --target '" + target + "' (expected cpu or cuda)");
  bool cuda = target == "cuda";
  if (!cuda && (kernelReport || !chips.empty()))
    return fail("--kernel-report and --chip need --target cuda");
  if (!cuda && moe::CompilerSession::gpuKernelOptionsGiven())
    return fail(
        "--tensor-cores, --bf16-activations, --resident-loops, --wgmma and "
        "--split-chunk-rows need --target cuda");
  if (!isCIdentifier(symbolName))
    return fail("--name '" + symbolName + "' is not a C identifier");

  moe::CompilerSession session;
  FailureOr<OwningOpRef<ModuleOp>> module = session.readModel(modelPath);
  if (failed(module))
    return 1;
  FailureOr<moe::ModelManifest> manifest = moe::describeModel(**module);
  if (failed(manifest))
    return 1;
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule;
  if (cuda) {
    SmallVector<moe::KernelResources> kernels;
    SmallVector<std::string> chipList(chips.begin(), chips.end());
    FailureOr<SmallVector<moe::CUDABuild>> builds =
        session.lowerForCUDA(**module, chipList, *manifest, &kernels);
    if (failed(builds))
      return 1;
    if (kernelReport)
      llvm::outs() << moe::formatKernelReport(kernels);
    for (const moe::KernelResources &k : kernels)
      if (k.spillStoreBytes || k.spillLoadBytes)
        llvm::WithColor::warning(llvm::errs(), "moe-compile")
            << "kernel " << k.kernel << " spills registers on " << k.chip
            << " (" << k.spillStoreBytes << " bytes stored, "
            << k.spillLoadBytes << " loaded)\n";
    llvmModule =
        moe::translateCUDAModel(*builds, llvmContext, *manifest, symbolName);
  } else {
    if (failed(session.lowerForCPU(**module, *manifest)))
      return 1;
    llvmModule =
        moe::translateModel(**module, llvmContext, *manifest, symbolName);
  }
  if (!llvmModule)
    return fail("translating the lowered model to LLVM IR failed");

  // Write the header first into a temporary that is kept only if the
  // object is written too: never leave half an artifact behind.
  std::unique_ptr<llvm::ToolOutputFile> header;
  if (!headerPath.empty()) {
    std::error_code ec;
    header = std::make_unique<llvm::ToolOutputFile>(headerPath, ec,
                                                    llvm::sys::fs::OF_Text);
    if (ec)
      return fail("cannot write '" + headerPath + "': " + ec.message());
    header->os() << moe::emitHeader(*manifest, symbolName);
  }
  if (llvm::Error err = moe::emitObjectFile(*llvmModule, outputPath))
    return fail(llvm::toString(std::move(err)));
  if (header)
    header->keep();
  return 0;
}
