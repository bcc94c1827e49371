//===- MoEStackImport.h - moe_stack config.json to moe IR -------*- C++ -*-===//
//
// Imports a `"model_type": "moe_stack"` config.json (MODEL_CONTRACT.md,
// section 1) as a module of moe.weight declarations and a `@forward`
// function whose layers run inside one moe.loop.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_IMPORT_MOESTACKIMPORT_H
#define MOE_IMPORT_MOESTACKIMPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Support/LLVM.h"

namespace mlir {
class MLIRContext;

namespace moe {

/// Validates `jsonText` against the moe_stack contract and builds the model
/// module in `ctx`, loading the dialects it needs. Problems are reported
/// through the context's diagnostic engine at FileLineColLocs in
/// `sourceName` (pointing at the offending field where it can be found):
/// errors make the import fail, warnings (unknown fields, an exit that can
/// never fire) do not. The returned module has been verified.
FailureOr<OwningOpRef<ModuleOp>> importMoEStackConfig(StringRef jsonText,
                                                      StringRef sourceName,
                                                      MLIRContext *ctx);

} // namespace moe
} // namespace mlir

#endif // MOE_IMPORT_MOESTACKIMPORT_H
