//===- ExitCompaction.cpp - later passes run on active tokens only --------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEEXITCOMPACTION
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
struct ExitCompactionPass
    : public moe::impl::MoEExitCompactionBase<ExitCompactionPass> {
  void runOnOperation() override {
    getOperation().walk([&](LoopOp loop) {
      if (!loop.getExit() || loop.getCompactExits())
        return;
      // Compaction drops exited tokens from the batch; that is only exact
      // when no op lets one token's result depend on another token.
      WalkResult mixing = loop.getBody().walk(
          [](AttentionOp attention) { return WalkResult::interrupt(); });
      if (mixing.wasInterrupted()) {
        loop.emitRemark("moe-exit-compaction: not compacting: moe.attention "
                        "in the body mixes tokens");
        return;
      }
      loop.setCompactExits(true);
    });
  }
};
} // namespace
