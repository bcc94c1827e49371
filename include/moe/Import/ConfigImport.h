//===- ConfigImport.h - import a config.json by its model_type --*- C++ -*-===//
//
// The entry point for Hugging Face style configs: `moe_stack` (the MoE stack
// of MODEL_CONTRACT.md section 1) and the decoder model types of section 2.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_IMPORT_CONFIGIMPORT_H
#define MOE_IMPORT_CONFIGIMPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Support/LLVM.h"

namespace mlir::moe {

/// "moe_stack, mixtral, olmoe, qwen3_moe, loop-lm (or loop-moe)", for messages.
StringRef supportedModelTypes();

/// Imports a config of any supported model_type; errors (at the offending
/// key) go to the context's diagnostic handler.
FailureOr<OwningOpRef<ModuleOp>> importModelConfig(StringRef jsonText,
                                                   StringRef sourceName,
                                                   MLIRContext *ctx);

/// Imports a `mixtral`, `olmoe` or `qwen3_moe` config: embedding, attention
/// and MoE layers, final norm and LM head, as `@forward(tokens, positions)
/// -> logits` with one KV cache slot per layer.
FailureOr<OwningOpRef<ModuleOp>> importDecoderConfig(StringRef jsonText,
                                                     StringRef sourceName,
                                                     MLIRContext *ctx);

/// Imports a LoopLM (`loop-lm`, or `loop-moe`) config: head layers, a stack
/// of layers looped num_stacks times, tail layers, with the checkpoints'
/// state-dict names (see LoopLMImport.cpp).
FailureOr<OwningOpRef<ModuleOp>> importLoopLMConfig(StringRef jsonText,
                                                    StringRef sourceName,
                                                    MLIRContext *ctx);

} // namespace mlir::moe

#endif // MOE_IMPORT_CONFIGIMPORT_H
