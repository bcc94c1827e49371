//===- RopeConfig.h - the RoPE fields of a Hugging Face config --*- C++ -*-===//
//
// transformers 4 writes scaled rotary embeddings as `rope_scaling`, and
// transformers 5 writes all of RoPE as `rope_parameters`; both become
// rope_theta and a #moe.rope_scaling here.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_IMPORT_ROPECONFIG_H
#define MOE_IMPORT_ROPECONFIG_H

#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "moe/Import/JsonConfig.h"

namespace mlir::moe {

/// Reads `rope_parameters` or `rope_scaling` (at most one may be set):
/// rope_type "default", "linear" or "yarn" (the YaRN ramp and attention
/// factor computed as transformers 5 computes them for `headDim` and
/// `maxPositions`); any other type or parameter is an error, never a model
/// with other positions. `theta` holds the top-level rope_theta on entry
/// and the one the parameters give on return; `scaling` stays null without
/// scaling.
LogicalResult readRope(JsonConfig &config, int64_t headDim,
                       int64_t maxPositions, float &theta,
                       RopeScalingAttr &scaling);

} // namespace mlir::moe

#endif // MOE_IMPORT_ROPECONFIG_H
