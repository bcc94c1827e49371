//===- CudaBinary.cpp - PTX to the artifact's CUDA fatbinary --------------===//
#include "moe/Target/CudaBinary.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>

using namespace mlir;
using namespace mlir::moe;

namespace {
/// A temporary file that is removed when it goes out of scope.
struct TempFile {
  SmallString<128> path;
  ~TempFile() {
    if (!path.empty())
      llvm::sys::fs::remove(path);
  }
};

LogicalResult makeTemp(Operation *op, StringRef suffix, TempFile &file) {
  if (std::error_code ec =
          llvm::sys::fs::createTemporaryFile("moe-kernels", suffix, file.path))
    return op->emitError("cannot create a temporary file: ") << ec.message();
  return success();
}

/// The toolkit program `name`: in the toolkit's bin, or on PATH when no
/// toolkit was requested.
FailureOr<std::string> findTool(Operation *op, StringRef name,
                                StringRef toolkit) {
  std::string dir = getCUDAToolkitPath(toolkit) + "/bin";
  if (auto found = llvm::sys::findProgramByName(name, {dir}))
    return *found;
  if (toolkit.empty())
    if (auto found = llvm::sys::findProgramByName(name))
      return *found;
  return op->emitError("CUDA code generation needs the CUDA toolkit's '")
         << name << "', which is not in " << dir
         << (toolkit.empty() ? " or on PATH" : "")
         << "; install the toolkit, or point --cuda-toolkit or CUDA_HOME at "
            "it";
}

/// Runs `program` with `args`; its stderr goes to `log`. On failure the
/// error names the program, then `what` (for which chip), and quotes what it
/// printed.
LogicalResult runTool(Operation *op, StringRef program, StringRef what,
                      ArrayRef<std::string> args, std::string &log) {
  TempFile errors;
  if (failed(makeTemp(op, "log", errors)))
    return failure();
  SmallVector<StringRef> argv = {program};
  for (const std::string &a : args)
    argv.push_back(a);
  std::optional<StringRef> redirects[] = {std::nullopt, StringRef(errors.path),
                                          StringRef(errors.path)};
  std::string why;
  int rc =
      llvm::sys::ExecuteAndWait(program, argv, std::nullopt, redirects,
                                /*SecondsToWait=*/0, /*MemoryLimit=*/0, &why);
  if (auto text = llvm::MemoryBuffer::getFile(errors.path))
    log = (*text)->getBuffer().str();
  if (rc == 0)
    return success();
  return op->emitError() << llvm::sys::path::filename(program)
                         << (what.empty() ? "" : " ") << what << " failed ("
                         << (why.empty() ? "exit code " + std::to_string(rc)
                                         : why)
                         << "):\n"
                         << StringRef(log).rtrim();
}

int64_t numberBefore(StringRef line, StringRef unit) {
  size_t at = line.find(unit);
  if (at == StringRef::npos)
    return 0;
  StringRef head = line.take_front(at).rtrim();
  StringRef digits = head.substr(head.find_last_not_of("0123456789") + 1);
  int64_t value = 0;
  digits.getAsInteger(10, value);
  return value;
}

/// The chip's architecture as fatbinary spells it: sm_90a -> 90a.
StringRef archOf(StringRef chip) {
  chip.consume_front("sm_");
  return chip;
}
} // namespace

std::string mlir::moe::getCUDAToolkitPath(StringRef requested) {
  if (!requested.empty())
    return requested.str();
  const char *home = std::getenv("CUDA_HOME");
  return home && *home ? home : "/usr/local/cuda";
}

SmallVector<KernelResources> mlir::moe::parsePtxasInfo(StringRef log,
                                                       StringRef chip) {
  SmallVector<KernelResources> kernels;
  SmallVector<StringRef> lines;
  log.split(lines, '\n');
  for (StringRef line : lines) {
    line = line.trim();
    if (line.contains("Compiling entry function '")) {
      StringRef name = line.split("function '").second.split('\'').first;
      kernels.push_back({chip.str(), name.str()});
      continue;
    }
    if (kernels.empty())
      continue;
    KernelResources &k = kernels.back();
    if (line.contains("bytes stack frame")) {
      k.stackFrameBytes = numberBefore(line, "bytes stack frame");
      k.spillStoreBytes = numberBefore(line, "bytes spill stores");
      k.spillLoadBytes = numberBefore(line, "bytes spill loads");
    } else if (line.contains("Used ") && line.contains(" registers")) {
      k.registers = numberBefore(line, "registers");
      k.barriers = numberBefore(line, "barriers");
      k.sharedBytes = numberBefore(line, "bytes smem");
      k.constantBytes = numberBefore(line, "bytes cmem[0]");
    }
  }
  return kernels;
}

std::string mlir::moe::formatKernelReport(ArrayRef<KernelResources> resources) {
  std::string text;
  llvm::raw_string_ostream os(text);
  os << llvm::formatv(
      "{0,-8} {1,-28} {2,9} {3,12} {4,11} {5,11} {6,9} {7,10}\n", "chip",
      "kernel", "registers", "spill-stores", "spill-loads", "stack", "shared",
      "dyn-shared");
  for (const KernelResources &k : resources)
    os << llvm::formatv("{0,-8} {1,-28} {2,9} {3,10} B {4,9} B {5,9} B "
                        "{6,7} B {7,8} B\n",
                        k.chip, k.kernel, k.registers, k.spillStoreBytes,
                        k.spillLoadBytes, k.stackFrameBytes, k.sharedBytes,
                        k.dynamicSharedBytes);
  return text;
}

FailureOr<CudaTools> mlir::moe::findCudaTools(Operation *op,
                                              StringRef toolkit) {
  FailureOr<std::string> ptxas = findTool(op, "ptxas", toolkit);
  if (failed(ptxas))
    return failure();
  FailureOr<std::string> fatbinary = findTool(op, "fatbinary", toolkit);
  if (failed(fatbinary))
    return failure();
  return CudaTools{*ptxas, *fatbinary};
}

FailureOr<SmallVector<KernelResources>>
mlir::moe::assembleCudaBinaries(ModuleOp module, const CudaTools &tools) {
  SmallVector<KernelResources> report;
  auto binaries = llvm::to_vector(module.getOps<gpu::BinaryOp>());
  if (binaries.empty())
    return module.emitError("no gpu.binary to assemble: lower the model with "
                            "moe-cuda-pipeline first");

  for (gpu::BinaryOp binary : binaries) {
    // Temporaries live until the fatbinary is read.
    SmallVector<std::unique_ptr<TempFile>> files;
    SmallVector<std::string> images;
    Attribute oldestTarget;
    std::string oldestPtx, oldestChip;
    int oldestArch = INT_MAX;
    for (Attribute attr : binary.getObjectsAttr()) {
      auto object = cast<gpu::ObjectAttr>(attr);
      auto target = dyn_cast<NVVM::NVVMTargetAttr>(object.getTarget());
      if (!target || object.getFormat() != gpu::CompilationTarget::Assembly)
        return binary.emitError("expected PTX objects for NVVM targets "
                                "(gpu-module-to-binary format=isa)");
      StringRef chip = target.getChip();
      auto ptx = std::make_unique<TempFile>();
      auto cubin = std::make_unique<TempFile>();
      if (failed(makeTemp(binary, "ptx", *ptx)) ||
          failed(makeTemp(binary, "cubin", *cubin)))
        return failure();
      {
        std::error_code ec;
        llvm::raw_fd_ostream os(ptx->path, ec);
        if (ec)
          return binary.emitError("cannot write PTX: ") << ec.message();
        os << object.getObject().getValue();
      }
      std::string log;
      // -split-compile: the kernels on several threads (the same code as one
      // thread makes: only the command line recorded in the cubin differs).
      if (failed(
              runTool(binary, tools.ptxas, "for " + chip.str(),
                      {"-arch=" + chip.str(), "-O3", "-v",
                       "-split-compile=" + std::to_string(tools.ptxasThreads),
                       ptx->path.str().str(), "-o", cubin->path.str().str()},
                      log)))
        return failure();
      llvm::append_range(report, parsePtxasInfo(log, chip));
      images.push_back("--image3=kind=elf,sm=" + archOf(chip).str() +
                       ",file=" + cubin->path.str().str());
      int arch = 0;
      archOf(chip).take_while(llvm::isDigit).getAsInteger(10, arch);
      if (arch < oldestArch) {
        oldestArch = arch;
        oldestTarget = target;
        oldestChip = archOf(chip).str();
        oldestPtx = ptx->path.str().str();
      }
      files.push_back(std::move(ptx));
      files.push_back(std::move(cubin));
    }
    if (!oldestTarget)
      return binary.emitError("the gpu.binary has no objects");
    // PTX for the oldest chip lets the driver compile for GPUs newer than
    // every cubin (labelled as nvcc does: arch-specific PTX, sm_90a's, only
    // for its own chip).
    images.push_back("--image3=kind=ptx,sm=" + oldestChip +
                     ",file=" + oldestPtx);
    TempFile fatbin;
    if (failed(makeTemp(binary, "fatbin", fatbin)))
      return failure();
    SmallVector<std::string> args = {"-64",
                                     "--create=" + fatbin.path.str().str()};
    llvm::append_range(args, images);
    std::string log;
    if (failed(runTool(binary, tools.fatbinary, "", args, log)))
      return failure();
    auto bytes = llvm::MemoryBuffer::getFile(fatbin.path, /*IsText=*/false,
                                             /*RequiresNullTerminator=*/false);
    if (!bytes)
      return binary.emitError("cannot read the fatbinary: ")
             << bytes.getError().message();
    MLIRContext *ctx = module.getContext();
    auto object =
        gpu::ObjectAttr::get(ctx, oldestTarget, gpu::CompilationTarget::Fatbin,
                             StringAttr::get(ctx, (*bytes)->getBuffer()),
                             DictionaryAttr(), gpu::KernelTableAttr());
    binary.setObjectsAttr(ArrayAttr::get(ctx, {object}));
  }
  // ptxas knows only the static shared memory; the launches say how much
  // dynamic shared memory each kernel asks for.
  llvm::StringMap<int64_t> dynamicShared;
  module.walk([&](gpu::LaunchFuncOp launch) {
    APInt bytes;
    if (Value size = launch.getDynamicSharedMemorySize();
        size && matchPattern(size, m_ConstantInt(&bytes))) {
      int64_t &most = dynamicShared[launch.getKernelName().getValue()];
      most = std::max(most, bytes.getSExtValue());
    }
  });
  for (KernelResources &k : report)
    k.dynamicSharedBytes = dynamicShared.lookup(k.kernel);
  return report;
}
