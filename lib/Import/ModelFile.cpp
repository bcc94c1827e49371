//===- ModelFile.cpp - read a model from .mlir or config.json -------------===//
#include "moe/Import/ModelFile.h"
#include "moe/Import/ConfigImport.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"

using namespace mlir;

FailureOr<OwningOpRef<ModuleOp>>
moe::readModelFile(StringRef path, MLIRContext *context,
                   llvm::SourceMgr &sourceMgr) {
  auto file = llvm::MemoryBuffer::getFile(path, /*IsText=*/true);
  if (!file)
    return emitError(UnknownLoc::get(context))
           << "cannot read model '" << path
           << "': " << file.getError().message();
  if (path.ends_with(".json"))
    return importModelConfig((*file)->getBuffer(), path, context);
  sourceMgr.AddNewSourceBuffer(std::move(*file), llvm::SMLoc());
  OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(sourceMgr, context);
  if (!module || failed(verify(*module)))
    return failure();
  return module;
}
