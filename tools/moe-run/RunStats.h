//===- RunStats.h - path statistics of one run -----------------*- C++ -*-===//
#ifndef MOE_TOOLS_MOE_RUN_RUNSTATS_H
#define MOE_TOOLS_MOE_RUN_RUNSTATS_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/Support/raw_ostream.h"
#include <cstdint>

namespace mlir::moe {
/// The routing trace of a run, as the model contract's outputs lay it out.
struct RoutingTrace {
  int64_t passes, layers, tokens, topK, experts;
  llvm::ArrayRef<int32_t> expertIds; ///< [passes * layers, tokens, topK]
  llvm::ArrayRef<int32_t> exitLoop;  ///< [tokens]
};

/// Prints expert load per layer, distinct expert paths, path entropy,
/// cross-layer consistency of the top-1 expert, and exits per pass.
void printRunStats(const RoutingTrace &trace, double seconds,
                   llvm::raw_ostream &os);
} // namespace mlir::moe

#endif // MOE_TOOLS_MOE_RUN_RUNSTATS_H
