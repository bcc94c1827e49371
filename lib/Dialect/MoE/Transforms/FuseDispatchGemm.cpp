//===- FuseDispatchGemm.cpp - one fused kernel per expert group -----------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEFUSEDISPATCHGEMM
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
/// combine(grouped_matmul(glu(grouped_matmul(dispatch(x)), grouped_matmul(
/// dispatch(x))), down)) over one plan -> fused_experts(x).
struct FuseExpertChain : public OpRewritePattern<CombineOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(CombineOp combine,
                                PatternRewriter &rewriter) const override {
    Value plan = combine.getPlan();
    auto down = combine.getInput().getDefiningOp<GroupedMatmulOp>();
    if (!down || down.getPlan() != plan || !down->hasOneUse())
      return rewriter.notifyMatchFailure(combine, "input is not a down GEMM");
    auto glu = down.getInput().getDefiningOp<GluOp>();
    if (!glu || !glu->hasOneUse())
      return rewriter.notifyMatchFailure(combine, "no single-use glu");
    auto gate = glu.getGate().getDefiningOp<GroupedMatmulOp>();
    auto up = glu.getUp().getDefiningOp<GroupedMatmulOp>();
    if (!gate || !up || gate == up || gate.getPlan() != plan ||
        up.getPlan() != plan || !gate->hasOneUse() || !up->hasOneUse() ||
        gate.getInput() != up.getInput())
      return rewriter.notifyMatchFailure(combine, "no gate/up GEMM pair");
    auto dispatch = gate.getInput().getDefiningOp<DispatchOp>();
    // The permuted copy may only feed this pair; another user still needs it.
    if (!dispatch || dispatch.getPlan() != plan ||
        !llvm::all_of(dispatch->getUsers(), [&](Operation *user) {
          return user == gate || user == up;
        }))
      return rewriter.notifyMatchFailure(combine, "no private dispatch");

    rewriter.replaceOpWithNewOp<FusedExpertsOp>(
        combine, combine.getType(), dispatch.getInput(), plan,
        combine.getGates(), gate.getWeightAttr(), up.getWeightAttr(),
        down.getWeightAttr(), glu.getActivationAttr());
    return success();
  }
};

struct FuseDispatchGemmPass
    : public moe::impl::MoEFuseDispatchGemmBase<FuseDispatchGemmPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseDispatchGemmPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};
} // namespace

void mlir::moe::populateFuseDispatchGemmPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseExpertChain>(patterns.getContext());
}
