//===- MoEStackImport.cpp - moe_stack config.json to moe IR ---------------===//
//
// Two steps: ConfigReader checks the JSON against the contract's field table
// and reports every problem at the offending key; StackEmitter then builds the
// IR from a config that is known to be valid, so it never has to fail.
//
//===----------------------------------------------------------------------===//
#include "moe/Import/MoEStackImport.h"
#include "moe/Import/ConfigImport.h"
#include "moe/Import/JsonConfig.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/MathExtras.h"

using namespace mlir;
using namespace mlir::moe;

namespace {

//===----------------------------------------------------------------------===//
// Config
//===----------------------------------------------------------------------===//

/// A validated moe_stack config. The initial values are the contract's
/// defaults: an optional field that is absent keeps them.
struct MoEStackConfig {
  int64_t hiddenSize = 0; // d
  int64_t numLayers = 0;  // L
  int64_t numExperts = 0; // E
  int64_t topK = 0;       // k
  int64_t ffnSize = 0;    // f
  Activation activation = Activation::silu;
  ScoringFunc scoring = ScoringFunc::softmax;
  bool normalizeTopK = false;
  // The IR keeps these as f32 attributes.
  float scaling = 1.0f;
  float eps = 1e-6f;
  int64_t shareBlock = 1; // B
  RouterDecision decision = RouterDecision::per_layer;
  int64_t numLoops = 1;                       // K
  std::optional<ExitCriterion> exitCriterion; // "none"
  float exitThreshold = 0.0f;
  int64_t exitMinLoops = 1;
  Type weightType; // torch_dtype; set to f32 before reading
};

constexpr llvm::StringLiteral kModelType = "moe_stack";

constexpr llvm::StringLiteral kFields[] = {
    "model_type",          "hidden_size",
    "num_hidden_layers",   "num_experts",
    "num_experts_per_tok", "moe_intermediate_size",
    "hidden_act",          "scoring_func",
    "norm_topk_prob",      "routed_scaling_factor",
    "rms_norm_eps",        "router_share_block",
    "router_decision",     "num_loops",
    "exit_criterion",      "exit_threshold",
    "exit_min_loops",      "torch_dtype"};

const std::pair<StringRef, Activation> kActivations[] = {
    {"silu", Activation::silu}, {"gelu", Activation::gelu}};
const std::pair<StringRef, ScoringFunc> kScoringFuncs[] = {
    {"softmax", ScoringFunc::softmax}, {"sigmoid", ScoringFunc::sigmoid}};
const std::pair<StringRef, RouterDecision> kDecisions[] = {
    {"per_layer", RouterDecision::per_layer}, {"block", RouterDecision::block}};
const std::pair<StringRef, std::optional<ExitCriterion>> kExitCriteria[] = {
    {"none", std::nullopt},
    {"cosine", ExitCriterion::cosine},
    {"relative_l2", ExitCriterion::relative_l2}};

/// Reads and validates a config; every error names the field and points at
/// its key (or, for a missing field, at the object).
class ConfigReader : public JsonConfig {
public:
  using JsonConfig::JsonConfig;
  FailureOr<MoEStackConfig> read();

private:
  LogicalResult readModelType();
  LogicalResult readFields(MoEStackConfig &config);
  LogicalResult checkConsistency(const MoEStackConfig &config);
  void warnUnreachableExit(const MoEStackConfig &config);
};

LogicalResult ConfigReader::readModelType() {
  FailureOr<std::optional<StringRef>> name =
      readString("model_type", /*required=*/true);
  if (failed(name))
    return failure();
  if (**name != kModelType)
    return emitError(fieldLoc("model_type"))
           << "unsupported model_type '" << **name
           << "' (supported: " << supportedModelTypes() << ")";
  return success();
}

LogicalResult ConfigReader::readFields(MoEStackConfig &c) {
  // Read every field before failing, so one run reports all bad fields.
  bool ok = succeeded(readPositiveInt("hidden_size", c.hiddenSize, true));
  ok &= succeeded(readPositiveInt("num_hidden_layers", c.numLayers, true));
  ok &= succeeded(readPositiveInt("num_experts", c.numExperts, true));
  ok &= succeeded(readPositiveInt("num_experts_per_tok", c.topK, true));
  ok &= succeeded(readPositiveInt("moe_intermediate_size", c.ffnSize, true));
  ok &= succeeded(readEnum("hidden_act", kActivations, c.activation));
  ok &= succeeded(readEnum("scoring_func", kScoringFuncs, c.scoring));
  ok &= succeeded(readBool("norm_topk_prob", c.normalizeTopK));
  ok &= succeeded(readFloat("routed_scaling_factor", c.scaling));
  ok &= succeeded(readFloat("rms_norm_eps", c.eps));
  ok &= succeeded(readPositiveInt("router_share_block", c.shareBlock));
  ok &= succeeded(readEnum("router_decision", kDecisions, c.decision));
  ok &= succeeded(readPositiveInt("num_loops", c.numLoops));
  ok &= succeeded(readEnum("exit_criterion", kExitCriteria, c.exitCriterion));
  ok &= succeeded(readFloat("exit_threshold", c.exitThreshold));
  ok &= succeeded(readPositiveInt("exit_min_loops", c.exitMinLoops));
  const std::pair<StringRef, Type> dtypes[] = {
      {"float32", Float32Type::get(getContext())}, {"bfloat16", BFloat16Type::get(getContext())}};
  c.weightType = Float32Type::get(getContext());
  ok &= succeeded(readEnum("torch_dtype", dtypes, c.weightType));
  return success(ok);
}

LogicalResult ConfigReader::checkConsistency(const MoEStackConfig &c) {
  bool ok = true;
  if (c.topK > c.numExperts) {
    fieldError("num_experts_per_tok")
        << "= " << c.topK << " must be <= num_experts (" << c.numExperts << ")";
    ok = false;
  }
  for (auto [field, value] :
       {std::pair<StringRef, float>{"rms_norm_eps", c.eps},
        {"routed_scaling_factor", c.scaling}}) {
    if (!(value > 0.0f)) {
      fieldError(field) << "= " << formatFloat(value) << " must be > 0";
      ok = false;
    }
  }
  float tau = c.exitThreshold;
  if (c.exitCriterion == ExitCriterion::cosine &&
      !(tau >= -1.0f && tau <= 1.0f)) {
    fieldError("exit_threshold")
        << "= " << formatFloat(tau)
        << " must be in [-1, 1] for exit_criterion 'cosine'";
    ok = false;
  }
  if (c.exitCriterion == ExitCriterion::relative_l2 && !(tau >= 0.0f)) {
    fieldError("exit_threshold")
        << "= " << formatFloat(tau)
        << " must be >= 0 for exit_criterion 'relative_l2'";
    ok = false;
  }
  // Element counts of the stacked expert weights must fit the int64 sizes
  // that shapes and buffers are computed in.
  int64_t elements;
  if (llvm::MulOverflow(c.numExperts, c.ffnSize, elements) ||
      llvm::MulOverflow(elements, c.hiddenSize, elements)) {
    emitError(fieldLoc("num_experts"))
        << "expert weights of num_experts x moe_intermediate_size x "
           "hidden_size = "
        << c.numExperts << " x " << c.ffnSize << " x " << c.hiddenSize
        << " elements overflow a 64-bit size";
    ok = false;
  }
  return success(ok);
}

void ConfigReader::warnUnreachableExit(const MoEStackConfig &c) {
  if (!c.exitCriterion || c.exitMinLoops < c.numLoops)
    return;
  emitWarning(fieldLoc("exit_criterion"))
      << "exit_criterion '" << stringifyExitCriterion(*c.exitCriterion)
      << "' never fires because exit_min_loops (" << c.exitMinLoops
      << ") >= num_loops (" << c.numLoops << "); importing without early exits";
}

FailureOr<MoEStackConfig> ConfigReader::read() {
  if (failed(parse()) || failed(readModelType()))
    return failure();
  warnUnknownFields(kFields);
  MoEStackConfig config;
  if (failed(readFields(config)) || failed(checkConsistency(config)))
    return failure();
  warnUnreachableExit(config);
  return config;
}

//===----------------------------------------------------------------------===//
// IR
//===----------------------------------------------------------------------===//

std::string layerSymbol(int64_t layer, StringRef role) {
  return ("l" + Twine(layer) + "_" + role).str();
}

std::string layerTensor(int64_t layer, StringRef suffix) {
  return ("model.layers." + Twine(layer) + "." + suffix).str();
}

/// Builds the module of a validated config. Every op gets a NameLoc (the
/// weight's tensor name, `model.layers.L`, ...) inside the config's location,
/// so later diagnostics name the part of the model they are about.
class StackEmitter {
public:
  StackEmitter(const MoEStackConfig &config, Location configLoc)
      : c(config), configLoc(configLoc), builder(configLoc.getContext()) {
    int64_t dyn = ShapedType::kDynamic;
    hiddenType =
        RankedTensorType::get({dyn, c.hiddenSize}, builder.getF32Type());
    idsType = RankedTensorType::get({dyn, c.topK}, builder.getI32Type());
    gatesType = RankedTensorType::get({dyn, c.topK}, builder.getF32Type());
    exitLoopType = RankedTensorType::get({dyn}, builder.getI32Type());
    maskType = RankedTensorType::get({dyn}, builder.getI1Type());
  }

  OwningOpRef<ModuleOp> emit();

private:
  Location named(const Twine &name) {
    return NameLoc::get(builder.getStringAttr(name), configLoc);
  }
  void declareWeight(StringRef symbol, ArrayRef<int64_t> shape,
                     StringRef source);
  void declareLayerWeights(int64_t layer);
  void emitForward();
  void emitPass(LoopOp loop);
  Value emitLayer(int64_t layer, Value hidden, RouteOp &route);

  const MoEStackConfig &c;
  Location configLoc;
  OpBuilder builder;
  RankedTensorType hiddenType, idsType, gatesType, exitLoopType, maskType;
};

void StackEmitter::declareWeight(StringRef symbol, ArrayRef<int64_t> shape,
                                 StringRef source) {
  WeightOp::create(builder, named(source), symbol,
                   RankedTensorType::get(shape, c.weightType),
                   builder.getStringAttr(source));
}

void StackEmitter::declareLayerWeights(int64_t l) {
  int64_t d = c.hiddenSize, e = c.numExperts, f = c.ffnSize;
  declareWeight(layerSymbol(l, "norm"), {d},
                layerTensor(l, "post_attention_layernorm.weight"));
  // Only block heads have a router; the rest of the block shares it.
  if (l % c.shareBlock == 0)
    declareWeight(layerSymbol(l, "router"), {e, d},
                  layerTensor(l, "mlp.gate.weight"));
  declareWeight(layerSymbol(l, "gate"), {e, f, d},
                layerTensor(l, "mlp.experts.{e}.gate_proj.weight"));
  declareWeight(layerSymbol(l, "up"), {e, f, d},
                layerTensor(l, "mlp.experts.{e}.up_proj.weight"));
  declareWeight(layerSymbol(l, "down"), {e, d, f},
                layerTensor(l, "mlp.experts.{e}.down_proj.weight"));
}

Value StackEmitter::emitLayer(int64_t l, Value hidden, RouteOp &route) {
  Location loc = named("model.layers." + Twine(l));
  int64_t head = l - l % c.shareBlock;
  Value normed = RmsNormOp::create(builder, loc, hiddenType, hidden,
                                   FlatSymbolRefAttr::get(builder.getContext(), layerSymbol(l, "norm")),
                                   APFloat(c.eps));
  // With a block decision only the head routes; the other layers of the
  // block reuse its ids and gates from this pass.
  if (c.decision == RouterDecision::per_layer || l == head)
    route = RouteOp::create(builder, loc, idsType, gatesType, normed,
                            layerSymbol(head, "router"), c.topK, c.scoring,
                            c.normalizeTopK, APFloat(c.scaling), c.decision);
  Value experts = ExpertsOp::create(
      builder, loc, hiddenType, normed, route.getIds(), route.getGates(),
      layerSymbol(l, "gate"), layerSymbol(l, "up"), layerSymbol(l, "down"),
      c.activation);
  return arith::AddFOp::create(builder, loc, hidden, experts);
}

void StackEmitter::emitPass(LoopOp loop) {
  OpBuilder::InsertionGuard guard(builder);
  Block *body =
      builder.createBlock(&loop.getBody(), {}, {hiddenType}, {loop.getLoc()});
  Value hidden = body->getArgument(0);
  RouteOp route;
  for (int64_t l = 0; l < c.numLayers; ++l)
    hidden = emitLayer(l, hidden, route);

  SmallVector<Value, 2> results = {hidden};
  // ConfigReader warned when the exit can never fire; moe.exit rejects that.
  if (c.exitCriterion && c.exitMinLoops < c.numLoops)
    results.push_back(ExitOp::create(builder, loop.getLoc(), maskType, hidden,
                                     body->getArgument(0), *c.exitCriterion,
                                     APFloat(c.exitThreshold), c.exitMinLoops,
                                     /*lm_head=*/nullptr, /*lm_norm=*/nullptr,
                                     APFloat(c.eps)));
  YieldOp::create(builder, loop.getLoc(), results);
}

void StackEmitter::emitForward() {
  Location loc = named("forward");
  auto func = func::FuncOp::create(
      builder, loc, "forward",
      builder.getFunctionType({hiddenType}, {hiddenType, exitLoopType}));
  Block *entry = func.addEntryBlock();
  builder.setInsertionPointToStart(entry);
  // Emitted even for one pass, so every model has the same structure.
  auto loop = LoopOp::create(builder, named("model.layers"), hiddenType,
                             exitLoopType, entry->getArgument(0), c.numLoops);
  emitPass(loop);
  Value out = RmsNormOp::create(builder, named("model.norm"), hiddenType,
                                loop.getResult(),
                                FlatSymbolRefAttr::get(builder.getContext(), "final_norm"),
                                APFloat(c.eps));
  func::ReturnOp::create(builder, loc, ValueRange{out, loop.getExitLoop()});
}

OwningOpRef<ModuleOp> StackEmitter::emit() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(named("model"));
  (*module)->setAttr("moe.model_type", builder.getStringAttr(kModelType));
  builder.setInsertionPointToEnd(module->getBody());
  for (int64_t l = 0; l < c.numLayers; ++l)
    declareLayerWeights(l);
  declareWeight("final_norm", {c.hiddenSize}, "model.norm.weight");
  emitForward();
  return module;
}

} // namespace

FailureOr<OwningOpRef<ModuleOp>>
mlir::moe::importMoEStackConfig(StringRef jsonText, StringRef sourceName,
                                MLIRContext *ctx) {
  ctx->loadDialect<MoEDialect, func::FuncDialect, arith::ArithDialect>();
  ConfigReader reader(jsonText, sourceName, ctx);
  FailureOr<MoEStackConfig> config = reader.read();
  if (failed(config))
    return failure();
  OwningOpRef<ModuleOp> module =
      StackEmitter(*config, reader.configLoc()).emit();
  if (failed(verify(*module)))
    return failure();
  return module;
}
