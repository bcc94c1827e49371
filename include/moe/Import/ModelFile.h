//===- ModelFile.h - read a model from .mlir or config.json -----*- C++ -*-===//
#ifndef MOE_IMPORT_MODELFILE_H
#define MOE_IMPORT_MODELFILE_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace llvm {
class SourceMgr;
} // namespace llvm

namespace mlir::moe {
/// Reads a model the way every tool accepts one: a `.json` file is a
/// Hugging Face style config imported with moe-import's rules, anything else
/// is parsed as moe IR. The module is verified; errors go to the context's
/// diagnostic handler.
FailureOr<OwningOpRef<ModuleOp>> readModelFile(StringRef path,
                                               MLIRContext *context,
                                               llvm::SourceMgr &sourceMgr);
} // namespace mlir::moe

#endif // MOE_IMPORT_MODELFILE_H
