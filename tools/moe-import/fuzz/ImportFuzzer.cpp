//===- ImportFuzzer.cpp - libFuzzer target for the moe_stack importer -----===//
//
// Feeds arbitrary bytes to importModelConfig. Besides crashes and memory
// errors it checks the importer's contract: a config is either rejected with
// a diagnostic about the config (at a FileLineColLoc in it), or imported as a
// module that verifies. A verifier error, which the importer reports at the
// NameLoc of the op it built, means it accepted a config it cannot import.
//
//===----------------------------------------------------------------------===//
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/raw_ostream.h"

#include "moe/Import/ConfigImport.h"

#include <cstdlib>

/// Import time and memory grow with the layer count; a big valid model costs
/// the fuzzer much and reaches no code that a small one does not.
static bool hasManyLayers(llvm::StringRef text) {
  llvm::Expected<llvm::json::Value> value = llvm::json::parse(text);
  if (!value) {
    llvm::consumeError(value.takeError());
    return false;
  }
  const llvm::json::Object *object = value->getAsObject();
  std::optional<int64_t> layers =
      object ? object->getInteger("num_hidden_layers") : std::nullopt;
  return layers && *layers > 64;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llvm::StringRef text(reinterpret_cast<const char *>(data), size);
  if (hasManyLayers(text))
    return 0;

  // A fresh context per input, so that nothing uniqued by one input (names,
  // attributes) accumulates across millions of runs.
  mlir::MLIRContext context(mlir::MLIRContext::Threading::DISABLED);
  context.getDiagEngine().registerHandler([](mlir::Diagnostic &diag) {
    if (diag.getSeverity() == mlir::DiagnosticSeverity::Error &&
        !llvm::isa<mlir::FileLineColLoc>(diag.getLocation())) {
      llvm::errs() << "importer built IR that does not verify: "
                   << diag.getLocation() << ": " << diag << "\n";
      std::abort();
    }
  });
  (void)mlir::moe::importModelConfig(text, "fuzz.json", &context);
  return 0;
}
