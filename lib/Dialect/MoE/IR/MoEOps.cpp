//===- MoEOps.cpp - moe dialect operations ----------------------*- C++ -*-===//
//
// Verifiers. Every message names the offending operand, attribute or symbol
// and the expected value, so a user can fix the model without reading code.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/Format.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moe;

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

namespace {
/// Renders a shape as "[8, ?, 16]".
std::string formatShape(ArrayRef<int64_t> shape) {
  std::string s = "[";
  llvm::raw_string_ostream os(s);
  llvm::interleaveComma(shape, os, [&](int64_t d) {
    if (ShapedType::isDynamic(d))
      os << "?";
    else
      os << d;
  });
  os << "]";
  return s;
}

/// Two dimensions agree unless both are static and differ.
bool dimsAgree(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

bool shapesAgree(ArrayRef<int64_t> actual, ArrayRef<int64_t> expected) {
  return actual.size() == expected.size() &&
         llvm::all_of(llvm::zip(actual, expected), [](auto pair) {
           return dimsAgree(std::get<0>(pair), std::get<1>(pair));
         });
}

/// Resolves `symbol` to a moe.weight, or reports that it is not one.
/// `role` says what the op uses the weight for, e.g. "router".
FailureOr<RankedTensorType> lookupWeight(Operation *op,
                                         SymbolTableCollection &symbolTable,
                                         FlatSymbolRefAttr symbol,
                                         StringRef role) {
  auto weight =
      symbolTable.lookupNearestSymbolFrom<WeightOp>(op, symbol.getAttr());
  if (!weight)
    return op->emitOpError()
           << role << " " << symbol << " does not name a moe.weight";
  return weight.getTensorType();
}

/// Checks that a weight has the expected shape ('?' accepts any size);
/// `meaning` spells out the dimensions, e.g. "[experts, hidden]".
LogicalResult checkWeightShape(Operation *op, FlatSymbolRefAttr symbol,
                               StringRef role, RankedTensorType type,
                               ArrayRef<int64_t> expected, StringRef meaning) {
  if (shapesAgree(type.getShape(), expected))
    return success();
  return op->emitOpError() << role << " " << symbol << " must have shape "
                           << meaning << " = " << formatShape(expected)
                           << ", but it has " << formatShape(type.getShape());
}

LogicalResult verifyWeightUse(Operation *op, SymbolTableCollection &tables,
                              FlatSymbolRefAttr symbol, StringRef role,
                              ArrayRef<int64_t> expected, StringRef meaning,
                              RankedTensorType *resolved = nullptr) {
  FailureOr<RankedTensorType> type = lookupWeight(op, tables, symbol, role);
  if (failed(type))
    return failure();
  if (resolved)
    *resolved = *type;
  return checkWeightShape(op, symbol, role, *type, expected, meaning);
}

int64_t tokens(Value v) {
  return cast<RankedTensorType>(v.getType()).getDimSize(0);
}
int64_t hiddenSize(Value v) {
  return cast<RankedTensorType>(v.getType()).getDimSize(1);
}
} // namespace

//===----------------------------------------------------------------------===//
// WeightOp
//===----------------------------------------------------------------------===//

LogicalResult WeightOp::verify() {
  std::optional<StringRef> source = getSource();
  if (source && source->empty())
    return emitOpError("source must not be empty; omit it to bind the "
                       "weight by its symbol name");
  if (source && source->contains("{e}") && getTensorType().getRank() < 2)
    return emitOpError("source with '{e}' stacks experts along the first "
                       "dimension, so the weight needs rank >= 2");
  int64_t matrixRank =
      getTensorType().getRank() - (source && source->contains("{e}") ? 1 : 0);
  if (getTransposed() && matrixRank < 2)
    return emitOpError("transposed swaps the last two dimensions of the "
                       "stored tensor, so it needs a matrix (rank >= 2, "
                       "after the '{e}' dimension)");
  return success();
}

//===----------------------------------------------------------------------===//
// RmsNormOp
//===----------------------------------------------------------------------===//

LogicalResult RmsNormOp::verify() {
  if (!(getEps().convertToDouble() > 0.0))
    return emitOpError("eps must be positive");
  return success();
}

LogicalResult RmsNormOp::verifySymbolUses(SymbolTableCollection &tables) {
  if (!getWeightAttr())
    return success();
  return verifyWeightUse(*this, tables, getWeightAttr(), "norm weight",
                         {hiddenSize(getInput())}, "[hidden]");
}

//===----------------------------------------------------------------------===//
// RouteOp
//===----------------------------------------------------------------------===//

LogicalResult RouteOp::verify() {
  int64_t k = getTopK();
  if (k < 1)
    return emitOpError() << "top_k must be at least 1, got " << k;
  int64_t t = tokens(getInput());
  for (auto [name, value] :
       {std::pair<StringRef, Value>{"ids", getIds()}, {"gates", getGates()}}) {
    auto type = cast<RankedTensorType>(value.getType());
    if (!shapesAgree(type.getShape(), {t, k}))
      return emitOpError() << name << " must have shape [tokens, top_k] = "
                           << formatShape({t, k}) << ", but it has "
                           << formatShape(type.getShape());
  }
  if (!(getScaling().convertToDouble() > 0.0))
    return emitOpError("scaling must be positive");
  return success();
}

LogicalResult RouteOp::verifySymbolUses(SymbolTableCollection &tables) {
  RankedTensorType router;
  if (failed(verifyWeightUse(*this, tables, getRouterAttr(), "router",
                             {ShapedType::kDynamic, hiddenSize(getInput())},
                             "[experts, hidden]", &router)))
    return failure();
  int64_t experts = router.getDimSize(0);
  if (static_cast<int64_t>(getTopK()) > experts)
    return emitOpError() << "top_k = " << getTopK() << " exceeds the "
                         << experts << " experts of router " << getRouterAttr();

  // Routes that share a router share its parameters; they must also agree on
  // how the scores are read, or the sharing would not mean one router.
  Operation *symbolTableOp = SymbolTable::getNearestSymbolTable(*this);
  Operation *weight = tables.lookupSymbolIn(symbolTableOp, getRouterAttr());
  std::optional<SymbolTable::UseRange> uses =
      SymbolTable::getSymbolUses(weight, symbolTableOp);
  if (!uses)
    return success();
  for (const SymbolTable::SymbolUse &use : *uses) {
    auto other = dyn_cast<RouteOp>(use.getUser());
    if (!other || other == *this)
      continue;
    if (other.getTopK() != getTopK() || other.getScoring() != getScoring()) {
      InFlightDiagnostic diag = emitOpError()
                                << "routes sharing router " << getRouterAttr()
                                << " must agree on top_k and scoring";
      diag.attachNote(other.getLoc()) << "other route of the router is here";
      return diag;
    }
  }
  return success();
}

//===----------------------------------------------------------------------===//
// ExpertsOp
//===----------------------------------------------------------------------===//

LogicalResult ExpertsOp::verify() {
  auto ids = cast<RankedTensorType>(getIds().getType());
  auto gates = cast<RankedTensorType>(getGates().getType());
  if (!shapesAgree(ids.getShape(), gates.getShape()))
    return emitOpError() << "ids " << formatShape(ids.getShape())
                         << " and gates " << formatShape(gates.getShape())
                         << " must have the same shape [tokens, top_k]";
  if (!dimsAgree(ids.getDimSize(0), tokens(getInput())))
    return emitOpError() << "ids route " << ids.getDimSize(0)
                         << " tokens, but the input has " << tokens(getInput());
  return success();
}

LogicalResult MlpOp::verifySymbolUses(SymbolTableCollection &tables) {
  int64_t d = hiddenSize(getInput());
  FailureOr<RankedTensorType> gate =
      lookupWeight(*this, tables, getGateProjAttr(), "gate_proj");
  if (failed(gate))
    return failure();
  if (gate->getRank() != 2)
    return checkWeightShape(*this, getGateProjAttr(), "gate_proj", *gate,
                            {ShapedType::kDynamic, d}, "[ffn, hidden]");
  int64_t ffn = gate->getDimSize(0);
  if (failed(checkWeightShape(*this, getGateProjAttr(), "gate_proj", *gate,
                              {ffn, d}, "[ffn, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getUpProjAttr(), "up_proj",
                             {ffn, d}, "[ffn, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getDownProjAttr(), "down_proj",
                             {d, ffn}, "[hidden, ffn]")))
    return failure();
  return success();
}

LogicalResult ExpertsOp::verifySymbolUses(SymbolTableCollection &tables) {
  int64_t d = hiddenSize(getInput());
  FailureOr<RankedTensorType> gateOr =
      lookupWeight(*this, tables, getGateProjAttr(), "gate_proj");
  if (failed(gateOr))
    return failure();
  RankedTensorType gate = *gateOr;
  if (gate.getRank() != 3)
    return checkWeightShape(*this, getGateProjAttr(), "gate_proj", gate,
                            {ShapedType::kDynamic, ShapedType::kDynamic, d},
                            "[experts, ffn, hidden]");
  int64_t experts = gate.getDimSize(0), ffn = gate.getDimSize(1);
  if (failed(checkWeightShape(*this, getGateProjAttr(), "gate_proj", gate,
                              {experts, ffn, d}, "[experts, ffn, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getUpProjAttr(), "up_proj",
                             {experts, ffn, d}, "[experts, ffn, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getDownProjAttr(), "down_proj",
                             {experts, d, ffn}, "[experts, hidden, ffn]")))
    return failure();

  int64_t k = cast<RankedTensorType>(getIds().getType()).getDimSize(1);
  if (!ShapedType::isDynamic(k) && k > experts)
    return emitOpError() << "routes top_k = " << k << " experts per token, "
                         << "but the group has only " << experts;
  // Ids index this group's experts, so they must come from a router over
  // the same number of experts.
  if (auto route = getIds().getDefiningOp<RouteOp>()) {
    auto router = tables.lookupNearestSymbolFrom<WeightOp>(
        route, route.getRouterAttr().getAttr());
    if (router && router.getTensorType().getDimSize(0) != experts)
      return emitOpError() << "has " << experts
                           << " experts, but its ids come from router "
                           << route.getRouterAttr() << " over "
                           << router.getTensorType().getDimSize(0);
  }
  return success();
}

//===----------------------------------------------------------------------===//
// LoopOp, ExitOp, YieldOp
//===----------------------------------------------------------------------===//

YieldOp LoopOp::getYield() {
  return cast<YieldOp>(getBody().front().getTerminator());
}

ExitOp LoopOp::getExit() {
  YieldOp yield = getYield();
  if (yield.getValues().size() < 2)
    return {};
  return yield.getValues()[1].getDefiningOp<ExitOp>();
}

SmallVector<Region *> LoopOp::getLoopRegions() { return {&getBody()}; }

SmallVector<AttentionOp> LoopOp::getAttentionsBySlot() {
  SmallVector<AttentionOp> attentions(getBody().getOps<AttentionOp>());
  llvm::sort(attentions, [](AttentionOp a, AttentionOp b) {
    return a.getCacheSlot() < b.getCacheSlot();
  });
  return attentions;
}

LogicalResult LoopOp::verify() {
  if (static_cast<int64_t>(getPasses()) < 1)
    return emitOpError() << "passes must be at least 1, got "
                         << static_cast<int64_t>(getPasses());
  if (getCompactExits() && !getExit())
    return emitOpError("compact_exits needs an exit in the loop body");
  auto exitLoop = cast<RankedTensorType>(getExitLoop().getType());
  if (!dimsAgree(exitLoop.getDimSize(0), tokens(getInit())))
    return emitOpError() << "exit_loop must have one entry per token ("
                         << tokens(getInit()) << "), but it has "
                         << exitLoop.getDimSize(0);
  return success();
}

LogicalResult LoopOp::verifyRegions() {
  Block &body = getBody().front();
  if (body.getNumArguments() != 1 ||
      body.getArgument(0).getType() != getInit().getType())
    return emitOpError() << "body must take one argument, the hidden state "
                         << getInit().getType();
  YieldOp yield = getYield();
  ValueRange values = yield.getValues();
  if (values.empty() || values.size() > 2)
    return yield.emitOpError(
        "must yield the hidden state and, optionally, an exit mask");
  if (values[0].getType() != getInit().getType())
    return yield.emitOpError()
           << "yields hidden state " << values[0].getType()
           << ", but the loop carries " << getInit().getType();
  if (values.size() == 2 && !values[1].getDefiningOp<ExitOp>())
    return yield.emitOpError(
        "second operand must be the exit mask of a moe.exit in this body");
  // Every pass appends to its own KV caches, numbered from the body's slots.
  for (auto [index, attention] : llvm::enumerate(getAttentionsBySlot()))
    if (attention.getCacheSlot() != index)
      return attention.emitOpError()
             << "cache_slot = " << attention.getCacheSlot()
             << ": the attention ops of a loop body must use cache slots 0, "
                "1, ... once each";
  return success();
}

LogicalResult ExitOp::verify() {
  auto loop = (*this)->getParentOfType<LoopOp>();
  if (getPrevious() != loop.getPassInput())
    return emitOpError("previous must be the loop body's argument (the "
                       "hidden state at the start of the pass)");
  // An exit is a pass boundary: it tests what the pass yields and only the
  // yield may consume its mask.
  YieldOp yield = loop.getYield();
  if (yield.getValues().empty() || yield.getValues()[0] != getHidden())
    return emitOpError("hidden must be the state the loop body yields: exits "
                       "are only allowed at loop pass boundaries");
  for (Operation *user : getExits().getUsers())
    if (user != yield.getOperation())
      return emitOpError("exit mask may only be yielded by the loop body: "
                         "exits are only allowed at loop pass boundaries");
  if (!dimsAgree(cast<RankedTensorType>(getExits().getType()).getDimSize(0),
                 tokens(getHidden())))
    return emitOpError("exits must have one entry per token");
  int64_t minPasses = getMinPasses();
  if (minPasses < 1)
    return emitOpError() << "min_passes must be at least 1, got " << minPasses;
  if (minPasses >= static_cast<int64_t>(loop.getPasses()))
    return emitOpError() << "min_passes = " << getMinPasses()
                         << " leaves no pass boundary to exit at in a loop of "
                         << loop.getPasses() << " passes";

  double tauValue = getThreshold().convertToDouble();
  std::string tau;
  llvm::raw_string_ostream(tau) << llvm::format("%g", tauValue);
  switch (getCriterion()) {
  case ExitCriterion::cosine:
    if (tauValue < -1.0 || tauValue > 1.0)
      return emitOpError() << "cosine threshold must be in [-1, 1], got "
                           << tau;
    break;
  case ExitCriterion::max_prob:
    if (tauValue < 0.0 || tauValue > 1.0)
      return emitOpError() << "max_prob threshold must be in [0, 1], got "
                           << tau;
    break;
  case ExitCriterion::relative_l2:
  case ExitCriterion::entropy:
    if (!(tauValue >= 0.0))
      return emitOpError() << stringifyExitCriterion(getCriterion())
                           << " threshold must be non-negative, got " << tau;
    break;
  }
  bool needsHead = getCriterion() == ExitCriterion::max_prob ||
                   getCriterion() == ExitCriterion::entropy;
  if ((getLmNormAttr() || getLmNormUnit()) && !needsHead)
    return emitOpError("lm_norm belongs to the LM-head criteria (max_prob, "
                       "entropy)");
  if (getLmNormAttr() && getLmNormUnit())
    return emitOpError("lm_norm_unit (a norm without gain) and an lm_norm "
                       "weight exclude each other");
  if (needsHead != bool(getLmHeadAttr()))
    return emitOpError() << "criterion "
                         << stringifyExitCriterion(getCriterion())
                         << (needsHead ? " tests the LM head's distribution "
                                         "and needs lm_head"
                                       : " tests hidden states and takes no "
                                         "lm_head");
  return success();
}

LogicalResult ExitOp::verifySymbolUses(SymbolTableCollection &tables) {
  if (getLmNormAttr() &&
      failed(verifyWeightUse(*this, tables, getLmNormAttr(), "lm_norm",
                             {hiddenSize(getHidden())}, "[hidden]")))
    return failure();
  if (!getLmHeadAttr())
    return success();
  return verifyWeightUse(*this, tables, getLmHeadAttr(), "lm_head",
                         {ShapedType::kDynamic, hiddenSize(getHidden())},
                         "[vocab, hidden]");
}

//===----------------------------------------------------------------------===//
// Dense decoder ops
//===----------------------------------------------------------------------===//

LogicalResult EmbedOp::verify() {
  if (!dimsAgree(tokens(getResult()),
                 cast<RankedTensorType>(getTokens().getType()).getDimSize(0)))
    return emitOpError("result must have one row per token");
  return success();
}

LogicalResult EmbedOp::verifySymbolUses(SymbolTableCollection &tables) {
  return verifyWeightUse(*this, tables, getTableAttr(), "table",
                         {ShapedType::kDynamic, hiddenSize(getResult())},
                         "[vocab, hidden]");
}

LogicalResult UnembedOp::verify() {
  if (!dimsAgree(tokens(getLogits()), tokens(getInput())))
    return emitOpError("logits must have one row per token");
  return success();
}

LogicalResult UnembedOp::verifySymbolUses(SymbolTableCollection &tables) {
  int64_t vocab = cast<RankedTensorType>(getLogits().getType()).getDimSize(1);
  return verifyWeightUse(*this, tables, getLmHeadAttr(), "lm_head",
                         {vocab, hiddenSize(getInput())}, "[vocab, hidden]");
}

LogicalResult AttentionOp::verify() {
  int64_t heads = getNumHeads(), kvHeads = getNumKvHeads(),
          headDim = getHeadDim();
  if (heads < 1 || kvHeads < 1 || headDim < 1)
    return emitOpError("heads, kv_heads and head_dim must be at least 1");
  if (heads % kvHeads != 0)
    return emitOpError() << "heads = " << heads
                         << " must be a multiple of kv_heads = " << kvHeads
                         << " (grouped-query attention)";
  if (static_cast<int64_t>(getCacheSlot()) < 0)
    return emitOpError("cache_slot must be non-negative");
  if (getClipQkv() && !(getClipQkv()->convertToDouble() > 0.0))
    return emitOpError("clip_qkv must be positive");
  if (!(getRopeTheta().convertToDouble() > 0.0))
    return emitOpError("rope_theta must be positive");
  if (std::optional<uint64_t> window = getSlidingWindow()) {
    if (static_cast<int64_t>(*window) < 1)
      return emitOpError("sliding_window must be at least 1");
    if (!getCausal())
      return emitOpError("sliding_window needs a causal mask");
  }
  if (getScale() && !(getScale()->convertToDouble() > 0.0 &&
                      std::isfinite(getScale()->convertToDouble())))
    return emitOpError("scale must be positive and finite");
  // Outside a loop, each attention of the function has a cache of its own.
  if (!(*this)->getParentOfType<LoopOp>())
    for (Operation &other : *(*this)->getBlock()) {
      auto sibling = dyn_cast<AttentionOp>(&other);
      if (sibling && sibling != *this &&
          sibling.getCacheSlot() == getCacheSlot())
        return emitOpError() << "cache_slot = " << getCacheSlot()
                             << " is also used by another attention outside "
                                "the loop; each needs its own KV cache slot";
    }
  if (!dimsAgree(cast<RankedTensorType>(getPositions().getType()).getDimSize(0),
                 tokens(getInput())))
    return emitOpError("positions must have one entry per token");
  return success();
}

LogicalResult AttentionOp::verifySymbolUses(SymbolTableCollection &tables) {
  int64_t d = hiddenSize(getInput()), hd = getHeadDim();
  int64_t qWidth = getNumHeads() * hd, kvWidth = getNumKvHeads() * hd;
  if (failed(verifyWeightUse(*this, tables, getQProjAttr(), "q_proj",
                             {qWidth, d}, "[heads * head_dim, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getKProjAttr(), "k_proj",
                             {kvWidth, d}, "[kv_heads * head_dim, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getVProjAttr(), "v_proj",
                             {kvWidth, d}, "[kv_heads * head_dim, hidden]")) ||
      failed(verifyWeightUse(*this, tables, getOProjAttr(), "o_proj",
                             {d, qWidth}, "[hidden, heads * head_dim]")))
    return failure();
  for (auto [bias, role, width] :
       {std::tuple{getQBiasAttr(), "q_bias", qWidth},
        std::tuple{getKBiasAttr(), "k_bias", kvWidth},
        std::tuple{getVBiasAttr(), "v_bias", kvWidth},
        std::tuple{getOBiasAttr(), "o_bias", d}})
    if (bias && failed(verifyWeightUse(*this, tables, bias, role, {width},
                                       "[projection width]")))
      return failure();
  // Per-head norms (Qwen3) are [head_dim]; full-width ones (OLMoE) span the
  // projection.
  for (auto [norm, role, width] :
       {std::tuple{getQNormAttr(), "q_norm", qWidth},
        std::tuple{getKNormAttr(), "k_norm", kvWidth}}) {
    if (!norm)
      continue;
    FailureOr<RankedTensorType> type = lookupWeight(*this, tables, norm, role);
    if (failed(type))
      return failure();
    if (!shapesAgree(type->getShape(), {hd}) &&
        !shapesAgree(type->getShape(), {width}))
      return emitOpError() << role << " " << norm
                           << " must have shape [head_dim] = [" << hd
                           << "] (per head) or [" << width
                           << "] (full width), but it has "
                           << formatShape(type->getShape());
  }
  if (bool(getQNormAttr()) != bool(getKNormAttr()))
    return emitOpError("q_norm and k_norm come together");
  return success();
}

//===----------------------------------------------------------------------===//
// Kernel level
//===----------------------------------------------------------------------===//

LogicalResult PlanType::verify(function_ref<InFlightDiagnostic()> emitError,
                               int64_t experts, int64_t topK, int64_t tile) {
  if (experts < 1 || topK < 1 || tile < 1)
    return emitError() << "plan experts, top_k and tile must be at least 1";
  if (topK > experts)
    return emitError() << "plan top_k = " << topK << " exceeds its " << experts
                       << " experts";
  return success();
}

namespace {
/// `value`'s top_k dimension must be the plan's.
LogicalResult checkTopK(Operation *op, StringRef name, Value value,
                        PlanType plan) {
  int64_t k = cast<RankedTensorType>(value.getType()).getDimSize(1);
  if (dimsAgree(k, plan.getTopK()))
    return success();
  return op->emitOpError() << name << " have top_k = " << k
                           << ", but the plan is for top_k = "
                           << plan.getTopK();
}

LogicalResult checkHidden(Operation *op, Value input, Value result) {
  if (dimsAgree(hiddenSize(input), hiddenSize(result)))
    return success();
  return op->emitOpError() << "result rows have " << hiddenSize(result)
                           << " columns, but the input rows have "
                           << hiddenSize(input);
}

/// Checks the [experts, ffn, hidden] / [experts, hidden, ffn] triple of an
/// expert group with `experts` experts over rows of `hidden` columns.
LogicalResult verifyExpertWeights(Operation *op, SymbolTableCollection &tables,
                                  FlatSymbolRefAttr gateProj,
                                  FlatSymbolRefAttr upProj,
                                  FlatSymbolRefAttr downProj, int64_t experts,
                                  int64_t hidden) {
  RankedTensorType gate;
  if (failed(verifyWeightUse(op, tables, gateProj, "gate_proj",
                             {experts, ShapedType::kDynamic, hidden},
                             "[experts, ffn, hidden]", &gate)))
    return failure();
  int64_t ffn = gate.getDimSize(1);
  if (failed(verifyWeightUse(op, tables, upProj, "up_proj",
                             {experts, ffn, hidden}, "[experts, ffn, hidden]")))
    return failure();
  return verifyWeightUse(op, tables, downProj, "down_proj",
                         {experts, hidden, ffn}, "[experts, hidden, ffn]");
}
} // namespace

LogicalResult PlanOp::verify() {
  return checkTopK(*this, "ids", getIds(), getPlan().getType());
}

LogicalResult DispatchOp::verify() {
  return checkHidden(*this, getInput(), getResult());
}

LogicalResult GroupedMatmulOp::verify() {
  if (!dimsAgree(tokens(getInput()), tokens(getResult())))
    return emitOpError("result must have one row per input row");
  return success();
}

LogicalResult GroupedMatmulOp::verifySymbolUses(SymbolTableCollection &tables) {
  return verifyWeightUse(*this, tables, getWeightAttr(), "weight",
                         {getPlan().getType().getExperts(),
                          hiddenSize(getResult()), hiddenSize(getInput())},
                         "[experts, out, in]");
}

LogicalResult CombineOp::verify() {
  if (failed(checkTopK(*this, "gates", getGates(), getPlan().getType())) ||
      failed(checkHidden(*this, getInput(), getResult())))
    return failure();
  if (!dimsAgree(tokens(getGates()), tokens(getResult())))
    return emitOpError("result must have one row per token of the gates");
  return success();
}

LogicalResult FusedExpertsOp::verify() {
  if (failed(checkTopK(*this, "gates", getGates(), getPlan().getType())))
    return failure();
  if (!dimsAgree(tokens(getGates()), tokens(getInput())))
    return emitOpError() << "gates route " << tokens(getGates())
                         << " tokens, but the input has " << tokens(getInput());
  return success();
}

LogicalResult FusedExpertsOp::verifySymbolUses(SymbolTableCollection &tables) {
  return verifyExpertWeights(
      *this, tables, getGateProjAttr(), getUpProjAttr(), getDownProjAttr(),
      getPlan().getType().getExperts(), hiddenSize(getInput()));
}

//===----------------------------------------------------------------------===//
// Expert layers, whole or decomposed
//===----------------------------------------------------------------------===//

bool mlir::moe::isExpertLayer(Operation *op) {
  return isa<ExpertsOp, CombineOp, FusedExpertsOp>(op);
}

Value mlir::moe::getExpertLayerIds(Operation *layer) {
  if (auto experts = dyn_cast<ExpertsOp>(layer))
    return experts.getIds();
  auto plan = layer->getOperand(1).getDefiningOp<PlanOp>();
  return plan ? plan.getIds() : Value();
}

int64_t mlir::moe::getExpertLayerExperts(Operation *layer) {
  if (auto experts = dyn_cast<ExpertsOp>(layer)) {
    auto gate = SymbolTable::lookupNearestSymbolFrom<WeightOp>(
        experts, experts.getGateProjAttr().getAttr());
    return gate ? gate.getTensorType().getDimSize(0) : ShapedType::kDynamic;
  }
  return cast<PlanType>(layer->getOperand(1).getType()).getExperts();
}

#define GET_OP_CLASSES
#include "moe/Dialect/MoE/IR/MoEOps.cpp.inc"
