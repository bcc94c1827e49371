//===- HoistSharedRouters.cpp - do a shared router's work once ------------===//
//
// Legality: every moe op is pure and weights are immutable symbols, so two
// routes (or plans) with equal operands and attributes compute the same value
// wherever they are; the only constraint is dominance, which moving the kept
// op to just after its operands' definitions establishes.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/IR/Dominance.h"
#include "llvm/ADT/MapVector.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEHOISTSHAREDROUTERS
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
/// Moves `op` out of the moe.loops around it whose bodies do not define its
/// operands.
bool hoistOutOfLoops(Operation *op) {
  bool moved = false;
  while (auto loop = dyn_cast<LoopOp>(op->getParentOp())) {
    if (llvm::any_of(op->getOperands(), [&](Value v) {
          return loop.getBody().isAncestor(v.getParentRegion());
        }))
      break;
    op->moveBefore(loop);
    moved = true;
  }
  return moved;
}

/// Places `op` right after the definition of its only operand.
void moveToOperand(Operation *op) {
  Value v = op->getOperand(0);
  if (Operation *def = v.getDefiningOp())
    op->moveAfter(def);
  else
    op->moveBefore(&cast<BlockArgument>(v).getOwner()->front());
}

struct HoistSharedRoutersPass
    : public moe::impl::MoEHoistSharedRoutersBase<HoistSharedRoutersPass> {
  void runOnOperation() override {
    mergeRoutes();
    sharePlans();
  }

  /// Routes with the same router, input and attributes are one route.
  void mergeRoutes() {
    SmallVector<RouteOp> routes;
    getOperation().walk([&](RouteOp r) { routes.push_back(r); });
    for (RouteOp r : routes)
      if (hoistOutOfLoops(r))
        r.emitRemark() << "route of router " << r.getRouterAttr()
                       << " is loop-invariant: hoisted out of the moe.loop";

    llvm::MapVector<std::pair<Value, Attribute>, SmallVector<RouteOp>> groups;
    for (RouteOp r : routes)
      groups[{r.getInput(), r->getPropertiesAsAttribute()}].push_back(r);
    for (auto &[key, group] : groups) {
      if (group.size() < 2)
        continue;
      RouteOp kept = group.front();
      moveToOperand(kept);
      for (RouteOp dup : ArrayRef(group).drop_front()) {
        dup.replaceAllUsesWith(kept.getResults());
        dup.erase();
      }
      kept.emitRemark() << "router " << kept.getRouterAttr() << ": "
                        << group.size() << " identical routes merged into one";
    }
  }

  /// Layers that reuse one routing decision (ids) share one plan, built
  /// right where the ids are.
  void sharePlans() {
    llvm::MapVector<std::pair<Value, Type>, SmallVector<PlanOp>> groups;
    getOperation().walk([&](PlanOp p) {
      groups[{p.getIds(), p.getType()}].push_back(p);
    });
    for (auto &[key, group] : groups) {
      PlanOp kept = group.front();
      moveToOperand(kept);
      hoistOutOfLoops(kept);
      for (PlanOp dup : ArrayRef(group).drop_front()) {
        dup.replaceAllUsesWith(kept.getPlan());
        dup.erase();
      }
      if (group.size() < 2)
        continue;
      InFlightDiagnostic remark = kept.emitRemark()
                                  << "one routing plan serves " << group.size()
                                  << " layers";
      if (auto route = kept.getIds().getDefiningOp<RouteOp>())
        remark << " of router " << route.getRouterAttr();
    }
  }
};
} // namespace
