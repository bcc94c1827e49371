//===- DecomposeExperts.cpp - expert groups to the kernel level -----------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEDECOMPOSEEXPERTS
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
struct DecomposeExpertsPass
    : public moe::impl::MoEDecomposeExpertsBase<DecomposeExpertsPass> {
  using Base::Base;

  void runOnOperation() override {
    if (tile < 1) {
      getOperation().emitError("moe-decompose-experts: tile must be >= 1");
      return signalPassFailure();
    }
    SmallVector<ExpertsOp> groups;
    getOperation().walk([&](ExpertsOp op) { groups.push_back(op); });
    for (ExpertsOp op : groups)
      decompose(op);
  }

  void decompose(ExpertsOp op) {
    auto gate = SymbolTable::lookupNearestSymbolFrom<WeightOp>(
        op, op.getGateProjAttr().getAttr());
    RankedTensorType gateType = gate.getTensorType();
    auto inputType = cast<RankedTensorType>(op.getInput().getType());
    int64_t topK = cast<RankedTensorType>(op.getIds().getType()).getDimSize(1);
    Type element = inputType.getElementType();
    int64_t dyn = ShapedType::kDynamic;
    auto rows = [&](int64_t cols) {
      return RankedTensorType::get({dyn, cols}, element);
    };

    OpBuilder b(op);
    Location loc = op.getLoc();
    auto planType =
        PlanType::get(op.getContext(), gateType.getDimSize(0), topK, tile);
    Value plan = PlanOp::create(b, loc, planType, op.getIds());
    Value x = DispatchOp::create(b, loc, rows(inputType.getDimSize(1)),
                                 op.getInput(), plan);
    RankedTensorType ffnRows = rows(gateType.getDimSize(1));
    Value g =
        GroupedMatmulOp::create(b, loc, ffnRows, x, plan, op.getGateProjAttr());
    Value u =
        GroupedMatmulOp::create(b, loc, ffnRows, x, plan, op.getUpProjAttr());
    Value a = GluOp::create(b, loc, g.getType(), g, u, op.getActivationAttr());
    Value y = GroupedMatmulOp::create(b, loc, rows(inputType.getDimSize(1)), a,
                                      plan, op.getDownProjAttr());
    Value combined =
        CombineOp::create(b, loc, inputType, y, plan, op.getGates());
    op.replaceAllUsesWith(combined);
    op.erase();
  }
};
} // namespace
