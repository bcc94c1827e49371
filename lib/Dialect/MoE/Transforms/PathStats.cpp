//===- PathStats.cpp - report router groups and expert path space ---------===//
//
// A token's expert path is the sequence of expert sets it visits. With L
// independent routing decisions over E experts choosing k, there are
// C(E, k)^L paths; a block-decision router group (PathMoE) makes one decision
// for the whole block, which is what shrinks the space.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "llvm/ADT/MapVector.h"
#include "llvm/Support/Format.h"
#include <cmath>

namespace mlir::moe {
#define GEN_PASS_DEF_MOEPATHSTATS
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
/// How often an op runs per model invocation: the product of the pass
/// counts of the loops around it.
int64_t executionCount(Operation *op) {
  int64_t count = 1;
  for (auto loop = op->getParentOfType<LoopOp>(); loop;
       loop = loop->getParentOfType<LoopOp>())
    count *= loop.getPasses();
  return count;
}

double log10Binomial(int64_t n, int64_t k) {
  return (std::lgamma(n + 1.0) - std::lgamma(k + 1.0) -
          std::lgamma(n - k + 1.0)) /
         std::log(10.0);
}

struct RouterGroup {
  RouteOp firstRoute;
  int64_t layerRuns = 0;
  int64_t decisions = 0;
  llvm::SmallPtrSet<Operation *, 4> routes;
};

struct MoEPathStatsPass : public moe::impl::MoEPathStatsBase<MoEPathStatsPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    llvm::MapVector<StringAttr, RouterGroup> groups;
    int64_t uniqueLayers = 0, layerRuns = 0;
    double independentLog10 = 0.0, sharedLog10 = 0.0;
    std::optional<int64_t> experts, topK;
    bool uniformShape = true;

    func.walk([&](Operation *layer) {
      if (!isExpertLayer(layer))
        return;
      Value ids = getExpertLayerIds(layer);
      auto route = ids ? ids.getDefiningOp<RouteOp>() : RouteOp();
      if (!route)
        return;
      auto router = SymbolTable::lookupNearestSymbolFrom<WeightOp>(
          route, route.getRouterAttr().getAttr());
      if (!router)
        return;
      int64_t e = router.getTensorType().getDimSize(0);
      int64_t k = route.getTopK();
      uniformShape &= (!experts || *experts == e) && (!topK || *topK == k);
      experts = e;
      topK = k;

      int64_t runs = executionCount(layer);
      ++uniqueLayers;
      layerRuns += runs;
      double choices = log10Binomial(e, k);
      independentLog10 += runs * choices;

      RouterGroup &group = groups[route.getRouterAttr().getAttr()];
      if (!group.firstRoute)
        group.firstRoute = route;
      group.layerRuns += runs;
      if (group.routes.insert(route).second) {
        int64_t decisions = executionCount(route);
        group.decisions += decisions;
        sharedLog10 += decisions * choices;
      }
    });
    if (uniqueLayers == 0)
      return;

    for (auto &[name, group] : groups)
      group.firstRoute.emitRemark()
          << "router group @" << name.getValue() << ": layer runs "
          << group.layerRuns << ", routing decisions " << group.decisions;

    std::string summary;
    llvm::raw_string_ostream os(summary);
    os << "path stats: layers " << uniqueLayers << ", layer runs " << layerRuns
       << ", router groups " << groups.size() << ", ";
    if (uniformShape)
      os << "experts " << *experts << ", top_k " << *topK;
    else
      os << "experts and top_k mixed";
    os << ", log10 expert paths " << llvm::format("%.2f", independentLog10)
       << " independent / " << llvm::format("%.2f", sharedLog10)
       << " with sharing";
    func.emitRemark(summary);
    markAllAnalysesPreserved();
  }
};
} // namespace
