//===- ConfigImport.cpp - import a config.json by its model_type ----------===//
#include "moe/Import/ConfigImport.h"
#include "moe/Import/JsonConfig.h"
#include "moe/Import/MoEStackImport.h"

using namespace mlir;

StringRef moe::supportedModelTypes() {
  return "moe_stack, mixtral, olmoe, qwen3_moe, loop-lm (or loop-moe)";
}

FailureOr<OwningOpRef<ModuleOp>>
moe::importModelConfig(StringRef jsonText, StringRef sourceName,
                       MLIRContext *ctx) {
  JsonConfig config(jsonText, sourceName, ctx);
  if (failed(config.parse()))
    return failure();
  FailureOr<std::optional<StringRef>> type =
      config.readString("model_type", /*required=*/true);
  if (failed(type))
    return failure();
  if (**type == "moe_stack")
    return importMoEStackConfig(jsonText, sourceName, ctx);
  if (**type == "mixtral" || **type == "olmoe" || **type == "qwen3_moe")
    return importDecoderConfig(jsonText, sourceName, ctx);
  if (**type == "loop-lm" || **type == "loop-moe")
    return importLoopLMConfig(jsonText, sourceName, ctx);
  return emitError(config.fieldLoc("model_type"))
         << "unsupported model_type '" << **type
         << "' (supported: " << supportedModelTypes() << ")";
}
