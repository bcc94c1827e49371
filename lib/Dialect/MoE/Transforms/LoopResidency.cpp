//===- LoopResidency.cpp - unroll or keep a moe.loop resident -------------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "llvm/ADT/SetVector.h"
#include "llvm/Support/Format.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOELOOPRESIDENCY
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
/// Bytes of the distinct weights the loop body names. The CPU runtime holds
/// weights as f32 whatever the file's dtype, so that is what caches see.
int64_t bodyWeightBytes(LoopOp loop) {
  llvm::SetVector<WeightOp> weights;
  loop.getBody().walk([&](Operation *op) {
    for (NamedAttribute attr : op->getAttrs())
      if (auto ref = dyn_cast<FlatSymbolRefAttr>(attr.getValue()))
        if (auto w = SymbolTable::lookupNearestSymbolFrom<WeightOp>(
                loop, ref.getAttr()))
          weights.insert(w);
  });
  int64_t bytes = 0;
  for (WeightOp w : weights)
    bytes += w.getTensorType().getNumElements() * 4;
  return bytes;
}

std::string mib(int64_t bytes) {
  std::string s;
  llvm::raw_string_ostream(s) << llvm::format("%.2f MiB", bytes / 1048576.0);
  return s;
}

struct LoopResidencyPass
    : public moe::impl::MoELoopResidencyBase<LoopResidencyPass> {
  using Base::Base;

  void runOnOperation() override {
    getOperation().walk([&](LoopOp loop) {
      if (loop.getMode() == LoopMode::Auto)
        decide(loop);
    });
  }

  void decide(LoopOp loop) {
    // Attention appends to a KV cache per layer and pass: the passes differ
    // in which caches they use, so each must be its own copy.
    if (!loop.getBody().getOps<AttentionOp>().empty()) {
      loop.setMode(LoopMode::unroll);
      loop.emitRemark("moe-loop-residency: unroll: each pass has its own KV "
                      "caches");
      return;
    }
    // One pass has nothing to share between passes.
    if (loop.getPasses() == 1) {
      loop.setMode(LoopMode::unroll);
      loop.emitRemark("moe-loop-residency: unroll: a single pass");
      return;
    }
    int64_t bytes = bodyWeightBytes(loop);
    int64_t ops = llvm::range_size(loop.getBody().front().without_terminator());
    int64_t passes = loop.getPasses();
    int64_t unrolled = passes * ops;
    LoopMode mode;
    std::string why;
    llvm::raw_string_ostream os(why);
    if (bytes <= cacheBytes) {
      mode = LoopMode::resident;
      os << "the body's weights (" << mib(bytes) << ") fit the cache budget ("
         << mib(cacheBytes) << "), so passes after the first find them cached";
    } else if (unrolled <= maxUnrolledOps) {
      mode = LoopMode::unroll;
      os << "the body's weights (" << mib(bytes)
         << ") exceed the cache budget (" << mib(cacheBytes)
         << ") so residency gains nothing, and " << passes << " passes x "
         << ops << " ops = " << unrolled << " <= max-unrolled-ops ("
         << maxUnrolledOps << ")";
    } else {
      mode = LoopMode::resident;
      os << "unrolling " << passes << " passes x " << ops
         << " ops = " << unrolled << " exceeds max-unrolled-ops ("
         << maxUnrolledOps << ")";
    }
    loop.setMode(mode);
    loop.emitRemark() << "moe-loop-residency: " << stringifyLoopMode(mode)
                      << ": " << why;
  }
};
} // namespace
