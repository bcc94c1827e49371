//===- LoopLMImport.cpp - LoopLM (Looped-MoE) configs to moe IR ----------===//
//
// The Looped-MoE checkpoints of "Sparse Layers are Critical to Scaling Looped
// Language Models" (arXiv 2605.09165), read as their config.json
// (`model_type` "loop-lm", or "loop-moe" as the public port writes it) and
// their state-dict names. A stack of num_layers_in_stack MoE transformer
// layers runs num_stacks times with shared weights, optionally between
// num_head_layers and num_tail_layers MoE layers that run once (8 experts
// each). What differs from the Hugging Face decoders (muP):
//  - RMSNorms without gain (eps 1e-5), so there are no norm tensors;
//  - attention scaled by 1/d_k, RoPE on interleaved pairs (2i, 2i+1), one
//    KV head per query head;
//  - the router renormalises its top-k; an expert is d_ff / k wide and its
//    weights are stored [E, in, out] (the loader transposes them);
//  - each attention's `rope.rotations` buffer [context, d_k/2, 2, 2] is a
//    function of rope_theta: bound (shape-checked) but not read.
//
//===----------------------------------------------------------------------===//
#include "moe/Import/ConfigImport.h"
#include "moe/Import/JsonConfig.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

using namespace mlir;
using namespace mlir::moe;

namespace {
/// Experts of a head or tail layer, in every published configuration.
constexpr int64_t kHeadTailExperts = 8;
/// LoopLM's RMSNorm epsilon (not a config field).
constexpr float kNormEps = 1e-5f;

struct LoopLMConfig {
  StringRef modelType;
  int64_t vocab = 0, context = 0, hidden = 0, heads = 0, ffn = 0,
          stackLayers = 0, stacks = 0, experts = 0, topK = 0, headLayers = 0,
          tailLayers = 0;
  float ropeTheta = 10000.0f, widthRatio = 1.0f;
  int64_t shareBlock = 1;
  RouterDecision decision = RouterDecision::per_layer;
  std::optional<ExitCriterion> exitCriterion;
  float exitThreshold = 0.0f;
  int64_t exitMinLoops = 1;
  Type weightType;
  int64_t headDim() const { return hidden / heads; }
  int64_t expertWidth() const { return ffn / topK; }
};

constexpr llvm::StringLiteral kKnownFields[] = {
    "model_type", "architectures", "auto_map", "model_variant", "vocab_size",
    "context_length", "max_length", "d_model", "num_heads", "d_ff",
    "rope_theta", "width_ratio", "num_layers", "num_layers_in_stack",
    "num_stacks", "num_experts", "num_active", "num_head_layers",
    "num_tail_layers", "per_pass_attention", "weight_tying",
    "tie_word_embeddings", "lb_loss_factor", "lz_loss_factor", "dtype",
    "torch_dtype", "transformers_version", "bos_token_id", "eos_token_id",
    "pad_token_id", "use_cache", "router_share_block", "router_decision",
    "num_loops", "exit_criterion", "exit_threshold", "exit_min_loops"};

class LoopLMReader : public JsonConfig {
public:
  using JsonConfig::JsonConfig;
  FailureOr<LoopLMConfig> read();

private:
  LogicalResult readFields(LoopLMConfig &c);
  LogicalResult check(const LoopLMConfig &c);
};

LogicalResult LoopLMReader::readFields(LoopLMConfig &c) {
  bool ok = succeeded(readPositiveInt("vocab_size", c.vocab, true));
  ok &= succeeded(readPositiveInt("context_length", c.context, true));
  ok &= succeeded(readPositiveInt("d_model", c.hidden, true));
  ok &= succeeded(readPositiveInt("num_heads", c.heads, true));
  ok &= succeeded(readPositiveInt("d_ff", c.ffn, true));
  ok &= succeeded(readPositiveInt("num_layers_in_stack", c.stackLayers, true));
  ok &= succeeded(readPositiveInt("num_stacks", c.stacks, true));
  ok &= succeeded(readPositiveInt("num_experts", c.experts, true));
  ok &= succeeded(readPositiveInt("num_active", c.topK, true));
  ok &= succeeded(readFloat("rope_theta", c.ropeTheta, true));
  ok &= succeeded(readFloat("width_ratio", c.widthRatio));
  ok &= succeeded(readCount("num_head_layers", c.headLayers));
  ok &= succeeded(readCount("num_tail_layers", c.tailLayers));
  ok &= succeeded(readPositiveInt("router_share_block", c.shareBlock));
  const std::pair<StringRef, RouterDecision> decisions[] = {
      {"per_layer", RouterDecision::per_layer},
      {"block", RouterDecision::block}};
  ok &= succeeded(readEnum("router_decision", decisions, c.decision));
  int64_t numLoops = 0;
  ok &= succeeded(readPositiveInt("num_loops", numLoops));
  const std::pair<StringRef, std::optional<ExitCriterion>> criteria[] = {
      {"none", std::nullopt},
      {"cosine", ExitCriterion::cosine},
      {"relative_l2", ExitCriterion::relative_l2},
      {"max_prob", ExitCriterion::max_prob},
      {"entropy", ExitCriterion::entropy}};
  ok &= succeeded(readEnum("exit_criterion", criteria, c.exitCriterion));
  ok &= succeeded(readFloat("exit_threshold", c.exitThreshold));
  ok &= succeeded(readPositiveInt("exit_min_loops", c.exitMinLoops));
  const std::pair<StringRef, Type> dtypes[] = {
      {"float32", Float32Type::get(getContext())},
      {"bfloat16", BFloat16Type::get(getContext())}};
  c.weightType = Float32Type::get(getContext());
  // transformers 5 writes `dtype`, earlier versions `torch_dtype`.
  ok &= succeeded(readEnum(has("dtype") ? "dtype" : "torch_dtype", dtypes,
                           c.weightType));
  const std::pair<StringRef, bool> variants[] = {{"looped-moe", true}};
  bool loopedMoe = true;
  ok &= succeeded(readEnum("model_variant", variants, loopedMoe));
  bool flag = false;
  for (StringRef field :
       {"weight_tying", "tie_word_embeddings", "per_pass_attention"}) {
    if (!has(field))
      continue;
    ok &= succeeded(readBool(field, flag));
    if (ok && flag)
      return fieldError(field)
             << "= true is not supported yet (LoopLM checkpoints have an "
                "untied lm_head and one attention per stack layer)";
  }
  if (!ok)
    return failure();
  if (numLoops && numLoops != c.stacks)
    return fieldError("num_loops")
           << "= " << numLoops << " contradicts num_stacks = " << c.stacks
           << " (a LoopLM's loop count is num_stacks; omit num_loops)";
  int64_t layers = 0;
  if (failed(readPositiveInt("num_layers", layers)))
    return failure();
  if (layers && layers != c.stackLayers * c.stacks)
    return fieldError("num_layers")
           << "= " << layers << " must be num_layers_in_stack * num_stacks = "
           << c.stackLayers * c.stacks;
  return success();
}

LogicalResult LoopLMReader::check(const LoopLMConfig &c) {
  if (c.hidden % c.heads)
    return fieldError("d_model") << "= " << c.hidden
                                 << " is not a multiple of num_heads ("
                                 << c.heads << ")";
  if (c.headDim() % 2)
    return fieldError("num_heads")
           << "= " << c.heads << " gives d_k = " << c.headDim()
           << ", which must be even for rotary embeddings";
  if (c.topK > c.experts)
    return fieldError("num_active") << "= " << c.topK
                                    << " must be <= num_experts ("
                                    << c.experts << ")";
  if ((c.headLayers || c.tailLayers) && c.topK > kHeadTailExperts)
    return fieldError("num_active")
           << "= " << c.topK << " must be <= " << kHeadTailExperts
           << ", the experts of a head or tail layer";
  if (c.ffn % c.topK)
    return fieldError("d_ff") << "= " << c.ffn
                              << " must be a multiple of num_active ("
                              << c.topK << "): an expert is d_ff / k wide";
  if (!(c.ropeTheta > 0.0f))
    return fieldError("rope_theta")
           << "= " << formatFloat(c.ropeTheta) << " must be > 0";
  if (!(c.widthRatio > 0.0f))
    return fieldError("width_ratio")
           << "= " << formatFloat(c.widthRatio) << " must be > 0";
  if (c.exitCriterion == ExitCriterion::cosine &&
      !(c.exitThreshold >= -1.0f && c.exitThreshold <= 1.0f))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be in [-1, 1] for exit_criterion 'cosine'";
  if (c.exitCriterion == ExitCriterion::max_prob &&
      !(c.exitThreshold >= 0.0f && c.exitThreshold <= 1.0f))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be in [0, 1] for exit_criterion 'max_prob'";
  if ((c.exitCriterion == ExitCriterion::relative_l2 ||
       c.exitCriterion == ExitCriterion::entropy) &&
      !(c.exitThreshold >= 0.0f))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold) << " must be >= 0";
  if (c.exitCriterion && c.exitMinLoops >= c.stacks)
    emitWarning(fieldLoc("exit_criterion"))
        << "exit_criterion never fires because exit_min_loops ("
        << c.exitMinLoops << ") >= num_stacks (" << c.stacks
        << "); importing without early exits";
  return success();
}

FailureOr<LoopLMConfig> LoopLMReader::read() {
  if (failed(parse()))
    return failure();
  FailureOr<std::optional<StringRef>> type = readString("model_type", true);
  if (failed(type))
    return failure();
  LoopLMConfig c;
  c.modelType = **type;
  warnUnknownFields(kKnownFields);
  if (failed(readFields(c)) || failed(check(c)))
    return failure();
  return c;
}

/// The kind of a layer: once before the loop, in the loop, once after it.
enum class Part { Head, Stack, Tail };

class LoopLMEmitter {
public:
  LoopLMEmitter(const LoopLMConfig &c, Location loc)
      : c(c), configLoc(loc), builder(loc.getContext()) {
    int64_t dyn = ShapedType::kDynamic;
    hiddenType = RankedTensorType::get({dyn, c.hidden}, builder.getF32Type());
    tokensType = RankedTensorType::get({dyn}, builder.getI32Type());
    logitsType = RankedTensorType::get({dyn, c.vocab}, builder.getF32Type());
    maskType = RankedTensorType::get({dyn}, builder.getI1Type());
  }
  OwningOpRef<ModuleOp> emit();

private:
  Location named(const Twine &name) {
    return NameLoc::get(builder.getStringAttr(name), configLoc);
  }
  FlatSymbolRefAttr ref(StringRef name) {
    return FlatSymbolRefAttr::get(builder.getContext(), name);
  }
  static std::string prefix(Part part, int64_t i) {
    switch (part) {
    case Part::Head:
      return ("model.head_layers." + Twine(i)).str();
    case Part::Stack:
      return ("model.stack.layers." + Twine(i)).str();
    case Part::Tail:
      return ("model.tail_layers." + Twine(i)).str();
    }
    llvm_unreachable("part");
  }
  static std::string sym(Part part, int64_t i, StringRef role) {
    StringRef p = part == Part::Head ? "h" : part == Part::Stack ? "s" : "t";
    return (p + Twine(i) + "_" + role).str();
  }
  void weight(StringRef symbol, ArrayRef<int64_t> shape, StringRef source,
              bool transposed = false) {
    auto w = WeightOp::create(builder, named(source), symbol,
                              RankedTensorType::get(shape, c.weightType),
                              builder.getStringAttr(source));
    if (transposed)
      w.setTransposed(true);
  }
  int64_t expertsOf(Part part) const {
    return part == Part::Stack ? c.experts : kHeadTailExperts;
  }
  void declareLayer(Part part, int64_t i);
  Value emitLayer(Part part, int64_t i, Value hidden, Value positions,
                  int64_t cacheSlot, RouteOp &route);

  const LoopLMConfig &c;
  Location configLoc;
  OpBuilder builder;
  RankedTensorType hiddenType, tokensType, logitsType, maskType;
};

void LoopLMEmitter::declareLayer(Part part, int64_t i) {
  int64_t d = c.hidden, e = expertsOf(part), f = c.expertWidth();
  std::string p = prefix(part, i);
  for (StringRef proj : {"q", "k", "v"})
    weight(sym(part, i, proj), {d, d},
           p + ".attn." + proj.str() + "_proj.weight");
  weight(sym(part, i, "o"), {d, d}, p + ".attn.output_proj.weight");
  weight(sym(part, i, "rope"), {c.context, c.headDim() / 2, 2, 2},
         p + ".attn.rope.rotations");
  if (part != Part::Stack || i % c.shareBlock == 0)
    weight(sym(part, i, "router"), {e, d}, p + ".router.gate.weight");
  // Stored [E, d, f] (w1, w3) and [E, f, d] (w2): input by output.
  weight(sym(part, i, "gate"), {e, f, d}, p + ".experts_w1", true);
  weight(sym(part, i, "up"), {e, f, d}, p + ".experts_w3", true);
  weight(sym(part, i, "down"), {e, d, f}, p + ".experts_w2", true);
}

Value LoopLMEmitter::emitLayer(Part part, int64_t i, Value hidden,
                               Value positions, int64_t cacheSlot,
                               RouteOp &route) {
  Location loc = named(prefix(part, i));
  int64_t hd = c.headDim();
  Value normed = RmsNormOp::create(builder, loc, hiddenType, hidden,
                                   FlatSymbolRefAttr(), APFloat(kNormEps));
  auto attention = AttentionOp::create(
      builder, loc, hiddenType, normed, positions, sym(part, i, "q"),
      sym(part, i, "k"), sym(part, i, "v"), sym(part, i, "o"), c.heads,
      c.heads, hd, APFloat(c.ropeTheta), /*causal=*/true, FlatSymbolRefAttr(),
      FlatSymbolRefAttr(), FloatAttr(), cacheSlot, APFloat(kNormEps),
      /*scale=*/builder.getF32FloatAttr(1.0f / float(hd)),
      /*rope_interleaved=*/true, /*rope_scaling=*/RopeScalingAttr(),
      /*sliding_window=*/IntegerAttr(), /*q_bias=*/FlatSymbolRefAttr(),
      /*k_bias=*/FlatSymbolRefAttr(), /*v_bias=*/FlatSymbolRefAttr(),
      /*o_bias=*/FlatSymbolRefAttr());
  hidden = arith::AddFOp::create(builder, loc, hidden, attention);
  normed = RmsNormOp::create(builder, loc, hiddenType, hidden,
                             FlatSymbolRefAttr(), APFloat(kNormEps));
  auto idsType = RankedTensorType::get({ShapedType::kDynamic, c.topK},
                                       builder.getI32Type());
  auto gatesType = RankedTensorType::get({ShapedType::kDynamic, c.topK},
                                         builder.getF32Type());
  bool stack = part == Part::Stack;
  int64_t head = stack ? i - i % c.shareBlock : i;
  RouterDecision decision = stack ? c.decision : RouterDecision::per_layer;
  if (decision == RouterDecision::per_layer || i == head)
    route = RouteOp::create(builder, loc, idsType, gatesType, normed,
                            sym(part, head, "router"), c.topK,
                            ScoringFunc::softmax, /*normalize=*/true,
                            APFloat(1.0f), decision);
  Value experts = ExpertsOp::create(
      builder, loc, hiddenType, normed, route.getIds(), route.getGates(),
      sym(part, i, "gate"), sym(part, i, "up"), sym(part, i, "down"),
      Activation::silu);
  return arith::AddFOp::create(builder, loc, hidden, experts);
}

OwningOpRef<ModuleOp> LoopLMEmitter::emit() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(named("model"));
  (*module)->setAttr("moe.model_type", builder.getStringAttr(c.modelType));
  (*module)->setAttr("moe.max_positions", builder.getI64IntegerAttr(c.context));
  builder.setInsertionPointToEnd(module->getBody());
  weight("embed", {c.vocab, c.hidden}, "model.token_embeddings.weight");
  for (int64_t i = 0; i < c.headLayers; ++i)
    declareLayer(Part::Head, i);
  for (int64_t l = 0; l < c.stackLayers; ++l)
    declareLayer(Part::Stack, l);
  for (int64_t i = 0; i < c.tailLayers; ++i)
    declareLayer(Part::Tail, i);
  weight("lm_head", {c.vocab, c.hidden}, "model.lm_head.weight");

  Location loc = named("forward");
  auto exitLoopType =
      RankedTensorType::get({ShapedType::kDynamic}, builder.getI32Type());
  auto func =
      func::FuncOp::create(builder, loc, "forward",
                           builder.getFunctionType({tokensType, tokensType},
                                                   {logitsType, exitLoopType}));
  Block *entry = func.addEntryBlock();
  builder.setInsertionPointToStart(entry);
  Value positions = entry->getArgument(1);
  Value hidden =
      EmbedOp::create(builder, named("model.token_embeddings"), hiddenType,
                      entry->getArgument(0), "embed");
  // Head and tail attentions are outside the loop: they number their own KV
  // cache slots, head layers first.
  RouteOp route;
  for (int64_t i = 0; i < c.headLayers; ++i)
    hidden = emitLayer(Part::Head, i, hidden, positions, i, route);
  auto loop = LoopOp::create(builder, named("model.stack"), hiddenType,
                             exitLoopType, hidden, c.stacks, LoopMode::unroll);
  {
    OpBuilder::InsertionGuard guard(builder);
    Block *body =
        builder.createBlock(&loop.getBody(), {}, {hiddenType}, {loop.getLoc()});
    Value state = body->getArgument(0);
    RouteOp stackRoute;
    for (int64_t l = 0; l < c.stackLayers; ++l)
      state = emitLayer(Part::Stack, l, state, positions, l, stackRoute);
    SmallVector<Value, 2> results = {state};
    if (c.exitCriterion && c.exitMinLoops < c.stacks) {
      bool onHead = *c.exitCriterion == ExitCriterion::max_prob ||
                    *c.exitCriterion == ExitCriterion::entropy;
      auto exit = ExitOp::create(
          builder, loop.getLoc(), maskType, state, body->getArgument(0),
          *c.exitCriterion, APFloat(c.exitThreshold), c.exitMinLoops,
          onHead ? ref("lm_head") : FlatSymbolRefAttr(), FlatSymbolRefAttr(),
          APFloat(kNormEps));
      // The final norm has no gain.
      if (onHead)
        exit.setLmNormUnit(true);
      results.push_back(exit);
    }
    YieldOp::create(builder, loop.getLoc(), results);
  }
  hidden = loop.getResult();
  for (int64_t i = 0; i < c.tailLayers; ++i)
    hidden = emitLayer(Part::Tail, i, hidden, positions, c.headLayers + i,
                       route);
  Value normed = RmsNormOp::create(builder, named("model.ln_final"), hiddenType,
                                   hidden, FlatSymbolRefAttr(),
                                   APFloat(kNormEps));
  Value logits = UnembedOp::create(builder, named("model.lm_head"), logitsType,
                                   normed, "lm_head");
  func::ReturnOp::create(builder, loc, ValueRange{logits, loop.getExitLoop()});
  return module;
}
} // namespace

FailureOr<OwningOpRef<ModuleOp>>
mlir::moe::importLoopLMConfig(StringRef jsonText, StringRef sourceName,
                              MLIRContext *ctx) {
  ctx->loadDialect<MoEDialect, func::FuncDialect, arith::ArithDialect>();
  LoopLMReader reader(jsonText, sourceName, ctx);
  FailureOr<LoopLMConfig> config = reader.read();
  if (failed(config))
    return failure();
  OwningOpRef<ModuleOp> module =
      LoopLMEmitter(*config, reader.configLoc()).emit();
  if (failed(verify(*module)))
    return failure();
  return module;
}
