//===- HoistSharedRouters.cpp - do a shared router's work once ------------===//
//
// Legality: every moe op is pure and weights are immutable symbols, so two
// routes (or plans) with equal operands and attributes compute the same value
// wherever they are; the only constraint is dominance, which moving the kept
// op to just after its operand's definition establishes.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Transforms/LoopInvariantCodeMotionUtils.h"
#include "llvm/ADT/MapVector.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEHOISTSHAREDROUTERS
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
/// Places `op` right after the definition of its first operand.
void moveToOperand(Operation *op) {
  Value v = op->getOperand(0);
  if (Operation *def = v.getDefiningOp())
    op->moveAfter(def);
  else
    op->moveBefore(&cast<BlockArgument>(v).getOwner()->front());
}

/// Replaces the ops of `func` that `key` maps to one value by the first of
/// them, moved to just after its operand; calls `remark` for each merge.
template <typename OpT, typename KeyFn, typename RemarkFn>
void mergeEqual(func::FuncOp func, KeyFn key, RemarkFn remark) {
  llvm::MapVector<std::pair<Value, Attribute>, SmallVector<OpT>> groups;
  func.walk([&](OpT op) { groups[key(op)].push_back(op); });
  for (auto &[unused, group] : groups) {
    if (group.size() < 2)
      continue;
    OpT kept = group.front();
    moveToOperand(kept);
    for (OpT dup : ArrayRef(group).drop_front()) {
      dup->replaceAllUsesWith(kept->getResults());
      dup->erase();
    }
    remark(kept, group.size());
  }
}

struct HoistSharedRoutersPass
    : public moe::impl::MoEHoistSharedRoutersBase<HoistSharedRoutersPass> {
  void runOnOperation() override {
    func::FuncOp func = getOperation();
    // Routes and plans whose operands come from outside a moe.loop are the
    // same every pass: MLIR's loop-invariant code motion, limited to them.
    func.walk([&](LoopOp loop) {
      moveLoopInvariantCode(
          loop.getLoopRegions(),
          [&](Value v, Region *) { return loop.isDefinedOutsideOfLoop(v); },
          [](Operation *op, Region *) { return isa<RouteOp, PlanOp>(op); },
          [&](Operation *op, Region *) {
            if (auto route = dyn_cast<RouteOp>(op))
              route.emitRemark()
                  << "route of router " << route.getRouterAttr()
                  << " is loop-invariant: hoisted out of the moe.loop";
            loop.moveOutOfLoop(op);
          });
    });

    mergeEqual<RouteOp>(
        func,
        [](RouteOp r) {
          return std::make_pair(r.getInput(), r->getPropertiesAsAttribute());
        },
        [](RouteOp kept, size_t count) {
          kept.emitRemark() << "router " << kept.getRouterAttr() << ": "
                            << count << " identical routes merged into one";
        });
    // Layers that reuse one routing decision (ids) share one plan.
    mergeEqual<PlanOp>(
        func,
        [](PlanOp p) {
          return std::make_pair(p.getIds(),
                                Attribute(TypeAttr::get(p.getType())));
        },
        [](PlanOp kept, size_t count) {
          InFlightDiagnostic remark = kept.emitRemark()
                                      << "one routing plan serves " << count
                                      << " layers";
          if (auto route = kept.getIds().getDefiningOp<RouteOp>())
            remark << " of router " << route.getRouterAttr();
        });
  }
};
} // namespace
