//===- DecoderImport.cpp - Hugging Face MoE decoder configs to moe IR -----===//
//
// Mixtral, OLMoE and Qwen3-MoE read as their Hugging Face configs are written,
// with the tensor names of their checkpoints, plus the PathMoE extension
// fields (router_share_block, router_decision).
//
//===----------------------------------------------------------------------===//
#include "moe/Import/ConfigImport.h"
#include "moe/Import/JsonConfig.h"
#include "moe/Import/RopeConfig.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "llvm/ADT/BitVector.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mlir::moe;

namespace {
enum class DecoderKind { Mixtral, Olmoe, Qwen3Moe };

struct DecoderConfig {
  DecoderKind kind;
  StringRef modelType;
  int64_t vocab = 0, hidden = 0, layers = 0, heads = 0, kvHeads = 0,
          headDim = 0, experts = 0, topK = 0, ffn = 0, maxPositions = 4096;
  float eps = 1e-6f, ropeTheta = 10000.0f, clipQkv = 0.0f;
  RopeScalingAttr ropeScaling;
  /// The layers whose attention masks keys slidingWindow or more back.
  llvm::BitVector windowedLayers;
  /// Qwen3-MoE's dense MLP layers (no experts), of width denseFfn.
  llvm::BitVector denseLayers;
  int64_t denseFfn = 0;
  int64_t slidingWindow = 0;
  bool normalizeTopK = false, tied = false;
  /// OLMoE's and Qwen3-MoE's attention_bias: q, k, v and o have biases.
  bool attentionBias = false;
  int64_t shareBlock = 1;
  RouterDecision decision = RouterDecision::per_layer;
  int64_t numLoops = 1;
  std::optional<ExitCriterion> exitCriterion;
  float exitThreshold = 0.0f;
  int64_t exitMinLoops = 1;
  Type weightType;
};

/// Fields a Hugging Face config carries that do not change the forward pass
/// (or are checked separately); they are read silently.
constexpr llvm::StringLiteral kKnownFields[] = {"model_type",
                                                "architectures",
                                                "vocab_size",
                                                "hidden_size",
                                                "intermediate_size",
                                                "moe_intermediate_size",
                                                "num_hidden_layers",
                                                "num_attention_heads",
                                                "num_key_value_heads",
                                                "head_dim",
                                                "num_local_experts",
                                                "num_experts",
                                                "num_experts_per_tok",
                                                "norm_topk_prob",
                                                "rms_norm_eps",
                                                "rope_theta",
                                                "rope_scaling",
                                                "rope_parameters",
                                                "partial_rotary_factor",
                                                "layer_types",
                                                "max_position_embeddings",
                                                "tie_word_embeddings",
                                                "hidden_act",
                                                "torch_dtype",
                                                "clip_qkv",
                                                "attention_bias",
                                                "attention_dropout",
                                                "decoder_sparse_step",
                                                "mlp_only_layers",
                                                "sliding_window",
                                                "use_sliding_window",
                                                "max_window_layers",
                                                "router_jitter_noise",
                                                "router_aux_loss_coef",
                                                "output_router_logits",
                                                "bos_token_id",
                                                "eos_token_id",
                                                "pad_token_id",
                                                "initializer_range",
                                                "use_cache",
                                                "transformers_version",
                                                "router_share_block",
                                                "router_decision",
                                                "num_loops",
                                                "exit_criterion",
                                                "exit_threshold",
                                                "exit_min_loops"};

class DecoderReader : public JsonConfig {
public:
  using JsonConfig::JsonConfig;
  FailureOr<DecoderConfig> read();

private:
  LogicalResult readFields(DecoderConfig &c);
  LogicalResult checkUnsupported(const DecoderConfig &c);
  LogicalResult readSlidingWindow(DecoderConfig &c);
  LogicalResult readDenseLayers(DecoderConfig &c);
};

LogicalResult DecoderReader::readFields(DecoderConfig &c) {
  bool mixtral = c.kind == DecoderKind::Mixtral;
  bool qwen = c.kind == DecoderKind::Qwen3Moe;
  bool ok = succeeded(readPositiveInt("vocab_size", c.vocab, true));
  ok &= succeeded(readPositiveInt("hidden_size", c.hidden, true));
  ok &= succeeded(readPositiveInt("num_hidden_layers", c.layers, true));
  ok &= succeeded(readPositiveInt("num_attention_heads", c.heads, true));
  c.kvHeads = 0;
  // transformers writes `null` for these when they follow from others.
  ok &= succeeded(readPositiveInt("num_key_value_heads", c.kvHeads,
                                  /*required=*/false, /*nullable=*/true));
  ok &= succeeded(readPositiveInt("head_dim", c.headDim, /*required=*/false,
                                  /*nullable=*/true));
  ok &= succeeded(readPositiveInt(mixtral ? "num_local_experts" : "num_experts",
                                  c.experts, true));
  ok &= succeeded(readPositiveInt("num_experts_per_tok", c.topK, true));
  ok &= succeeded(readPositiveInt(
      qwen ? "moe_intermediate_size" : "intermediate_size", c.ffn, true));
  ok &= succeeded(readPositiveInt("max_position_embeddings", c.maxPositions));
  ok &= succeeded(readFloat("rms_norm_eps", c.eps));
  ok &= succeeded(readFloat("rope_theta", c.ropeTheta));
  ok &= succeeded(readBool("tie_word_embeddings", c.tied));
  // Mixtral always renormalises the selected experts' probabilities.
  c.normalizeTopK = mixtral;
  if (!mixtral)
    ok &= succeeded(readBool("norm_topk_prob", c.normalizeTopK));
  if (c.kind == DecoderKind::Olmoe)
    ok &= succeeded(readFloat("clip_qkv", c.clipQkv, false, /*nullable=*/true));
  if (!mixtral)
    ok &= succeeded(readBool("attention_bias", c.attentionBias));
  ok &= succeeded(readPositiveInt("router_share_block", c.shareBlock));
  const std::pair<StringRef, RouterDecision> decisions[] = {
      {"per_layer", RouterDecision::per_layer},
      {"block", RouterDecision::block}};
  ok &= succeeded(readEnum("router_decision", decisions, c.decision));
  ok &= succeeded(readPositiveInt("num_loops", c.numLoops));
  const std::pair<StringRef, std::optional<ExitCriterion>> criteria[] = {
      {"none", std::nullopt},
      {"cosine", ExitCriterion::cosine},
      {"relative_l2", ExitCriterion::relative_l2},
      {"max_prob", ExitCriterion::max_prob},
      {"entropy", ExitCriterion::entropy}};
  ok &= succeeded(readEnum("exit_criterion", criteria, c.exitCriterion));
  ok &= succeeded(readFloat("exit_threshold", c.exitThreshold));
  ok &= succeeded(readPositiveInt("exit_min_loops", c.exitMinLoops));
  const std::pair<StringRef, bool> activations[] = {{"silu", true}};
  bool silu = true;
  ok &= succeeded(readEnum("hidden_act", activations, silu));
  const std::pair<StringRef, Type> dtypes[] = {
      {"float32", Float32Type::get(getContext())},
      {"bfloat16", BFloat16Type::get(getContext())}};
  c.weightType = Float32Type::get(getContext());
  ok &= succeeded(readEnum("torch_dtype", dtypes, c.weightType));
  if (!ok)
    return failure();

  if (!c.kvHeads)
    c.kvHeads = c.heads;
  // Hugging Face's OLMoE attention has taken head_dim as hidden_size /
  // num_attention_heads whatever the config says (later versions read
  // head_dim): only a head_dim that both agree on is unambiguous.
  if (c.kind == DecoderKind::Olmoe && c.headDim &&
      c.headDim * c.heads != c.hidden)
    return fieldError("head_dim")
           << "= " << c.headDim
           << " is ambiguous for olmoe: Hugging Face's OLMoE attention uses "
              "hidden_size / num_attention_heads ("
           << c.hidden << " / " << c.heads
           << "); omit head_dim or make it agree";
  if (!c.headDim) {
    if (c.hidden % c.heads)
      return fieldError("hidden_size")
             << "= " << c.hidden
             << " is not a multiple of num_attention_heads (" << c.heads
             << "); give head_dim";
    c.headDim = c.hidden / c.heads;
  }
  if (c.heads % c.kvHeads)
    return fieldError("num_attention_heads")
           << "= " << c.heads << " must be a multiple of num_key_value_heads ("
           << c.kvHeads << ")";
  if (c.topK > c.experts)
    return fieldError("num_experts_per_tok")
           << "= " << c.topK << " must be <= the number of experts ("
           << c.experts << ")";
  if (c.headDim % 2)
    return fieldError("head_dim")
           << "= " << c.headDim << " must be even for rotary embeddings";
  if (failed(readRope(*this, c.headDim, c.maxPositions, c.ropeTheta,
                      c.ropeScaling)))
    return failure();
  for (auto [field, value] :
       {std::pair<StringRef, float>{"rms_norm_eps", c.eps},
        {"rope_theta", c.ropeTheta}})
    if (!(value > 0.0f))
      return fieldError(field) << "= " << formatFloat(value) << " must be > 0";
  if (c.exitCriterion == ExitCriterion::cosine &&
      !(c.exitThreshold >= -1.0f && c.exitThreshold <= 1.0f))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be in [-1, 1] for exit_criterion 'cosine'";
  if (c.exitCriterion == ExitCriterion::relative_l2 && !(c.exitThreshold >= 0))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be >= 0 for exit_criterion 'relative_l2'";
  if (c.exitCriterion == ExitCriterion::max_prob &&
      !(c.exitThreshold >= 0.0f && c.exitThreshold <= 1.0f))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be in [0, 1] for exit_criterion 'max_prob'";
  if (c.exitCriterion == ExitCriterion::entropy && !(c.exitThreshold >= 0))
    return fieldError("exit_threshold")
           << "= " << formatFloat(c.exitThreshold)
           << " must be >= 0 for exit_criterion 'entropy'";
  if (c.exitCriterion && c.exitMinLoops >= c.numLoops)
    emitWarning(fieldLoc("exit_criterion"))
        << "exit_criterion never fires because exit_min_loops ("
        << c.exitMinLoops << ") >= num_loops (" << c.numLoops
        << "); importing without early exits";
  if (c.clipQkv < 0.0f)
    return fieldError("clip_qkv")
           << "= " << formatFloat(c.clipQkv) << " must be > 0 (or null)";
  return success();
}

/// Config values that would change the model in ways this compiler does not
/// implement yet: an error, never a silently different model.
LogicalResult DecoderReader::checkUnsupported(const DecoderConfig &c) {
  auto present = [&](StringRef field) -> const llvm::json::Value * {
    FailureOr<const llvm::json::Value *> v = lookup(field, false);
    if (failed(v) || !*v || (*v)->kind() == llvm::json::Value::Null)
      return nullptr;
    return *v;
  };
  if (auto *factor = present("partial_rotary_factor"))
    if (factor->getAsNumber() != 1.0)
      return fieldError("partial_rotary_factor")
             << "is not supported yet (must be 1)";
  // Mixtral's attention has no biases (Hugging Face ignores the field).
  if (auto *bias = present("attention_bias"))
    if (c.kind == DecoderKind::Mixtral && bias->getAsBoolean().value_or(true))
      return fieldError("attention_bias")
             << "must be false for mixtral, whose attention has no biases";
  // Only Qwen3-MoE has dense MLP layers (readDenseLayers).
  if (c.kind != DecoderKind::Qwen3Moe) {
    if (auto *step = present("decoder_sparse_step"))
      if (step->getAsInteger() != 1)
        return fieldError("decoder_sparse_step")
               << "must be 1: only qwen3_moe has dense MLP layers";
    if (auto *dense = present("mlp_only_layers"))
      if (!dense->getAsArray() || !dense->getAsArray()->empty())
        return fieldError("mlp_only_layers")
               << "must be empty: only qwen3_moe has dense MLP layers";
  }
  return success();
}

/// Hugging Face masks keys `sliding_window` or more positions back: Mixtral
/// in every layer whenever a window is set, Qwen3-MoE only with
/// use_sliding_window and in the layers from max_window_layers on (or those
/// that transformers 5's layer_types calls sliding_attention); OLMoE has no
/// window. A window no shorter than the position limit never masks a key,
/// so it is left out.
LogicalResult DecoderReader::readSlidingWindow(DecoderConfig &c) {
  c.windowedLayers = llvm::BitVector(c.layers);
  // transformers 5's layer_types names each layer's attention; for
  // Qwen3-MoE it decides which layers are windowed.
  llvm::BitVector listedWindowed(c.layers);
  FailureOr<const llvm::json::Value *> types = lookup("layer_types", false);
  bool listed =
      succeeded(types) && *types && (*types)->kind() != llvm::json::Value::Null;
  if (listed) {
    const llvm::json::Array *list = (*types)->getAsArray();
    if (!list || int64_t(list->size()) != c.layers)
      return fieldError("layer_types")
             << "must list the attention type of each of the " << c.layers
             << " layers";
    for (auto [layer, type] : llvm::enumerate(*list)) {
      std::optional<StringRef> name = type.getAsString();
      if (name == "sliding_attention")
        listedWindowed.set(layer);
      else if (name != "full_attention")
        return fieldError("layer_types")
               << "has " << describeJson(type) << " for layer " << layer
               << ", which is not supported (only \"full_attention\" and "
                  "\"sliding_attention\")";
    }
  }
  if (c.kind == DecoderKind::Olmoe)
    return success();
  FailureOr<const llvm::json::Value *> window = lookup("sliding_window", false);
  if (failed(window) || !*window ||
      (*window)->kind() == llvm::json::Value::Null)
    return success();
  if (failed(readPositiveInt("sliding_window", c.slidingWindow)))
    return failure();
  if (c.kind == DecoderKind::Qwen3Moe && listed) {
    c.windowedLayers = listedWindowed;
  } else if (c.kind == DecoderKind::Qwen3Moe) {
    bool enabled = false;
    if (failed(readBool("use_sliding_window", enabled)))
      return failure();
    // Qwen3MoeConfig's default.
    int64_t firstWindowed = 28;
    if (failed(readCount("max_window_layers", firstWindowed)))
      return failure();
    if (enabled)
      c.windowedLayers.set(std::min(firstWindowed, c.layers), c.layers);
  } else {
    c.windowedLayers.set();
  }
  if (c.slidingWindow >= c.maxPositions)
    c.windowedLayers.reset();
  return success();
}

/// Qwen3-MoE's layer l is a dense MLP of intermediate_size when it is in
/// mlp_only_layers or (l + 1) is not a multiple of decoder_sparse_step, as
/// Hugging Face builds it. A PathMoE block must start at a MoE layer, whose
/// router the block shares.
LogicalResult DecoderReader::readDenseLayers(DecoderConfig &c) {
  c.denseLayers = llvm::BitVector(c.layers);
  if (c.kind != DecoderKind::Qwen3Moe)
    return success();
  int64_t step = 1;
  if (failed(readPositiveInt("decoder_sparse_step", step)))
    return failure();
  for (int64_t l = 0; l < c.layers; ++l)
    if ((l + 1) % step != 0)
      c.denseLayers.set(l);
  FailureOr<const llvm::json::Value *> only = lookup("mlp_only_layers", false);
  if (failed(only))
    return failure();
  if (*only && (*only)->kind() != llvm::json::Value::Null) {
    const llvm::json::Array *list = (*only)->getAsArray();
    if (!list)
      return fieldError("mlp_only_layers") << "must be a list of layer indices";
    for (const llvm::json::Value &entry : *list) {
      std::optional<int64_t> layer = entry.getAsInteger();
      if (!layer || *layer < 0 || *layer >= c.layers)
        return fieldError("mlp_only_layers")
               << "has " << describeJson(entry)
               << ", which is not a layer index in [0, " << c.layers << ")";
      c.denseLayers.set(*layer);
    }
  }
  if (c.denseLayers.none())
    return success();
  if (failed(readPositiveInt("intermediate_size", c.denseFfn)))
    return failure();
  if (!c.denseFfn)
    return emitError(configLoc())
           << "missing required field 'intermediate_size' (layer "
           << c.denseLayers.find_first() << " is a dense MLP layer)";
  for (int64_t l = 0; l < c.layers; ++l) {
    int64_t head = l - l % c.shareBlock;
    if (!c.denseLayers.test(l) && c.denseLayers.test(head))
      return fieldError("router_share_block")
             << "= " << c.shareBlock << " makes layer " << l
             << " (a MoE layer) share the router of layer " << head
             << ", which is a dense MLP layer and has none";
  }
  return success();
}

FailureOr<DecoderConfig> DecoderReader::read() {
  if (failed(parse()))
    return failure();
  FailureOr<std::optional<StringRef>> type = readString("model_type", true);
  if (failed(type))
    return failure();
  DecoderConfig c;
  c.modelType = **type;
  if (c.modelType == "mixtral")
    c.kind = DecoderKind::Mixtral;
  else if (c.modelType == "olmoe")
    c.kind = DecoderKind::Olmoe;
  else if (c.modelType == "qwen3_moe")
    c.kind = DecoderKind::Qwen3Moe;
  else
    return emitError(fieldLoc("model_type"))
           << "unsupported model_type '" << c.modelType
           << "' (supported: " << supportedModelTypes() << ")";
  warnUnknownFields(kKnownFields);
  if (failed(readFields(c)) || failed(checkUnsupported(c)) ||
      failed(readSlidingWindow(c)) || failed(readDenseLayers(c)))
    return failure();
  return c;
}

/// Builds the module of a validated decoder config.
class DecoderEmitter {
public:
  DecoderEmitter(const DecoderConfig &c, Location loc)
      : c(c), configLoc(loc), builder(loc.getContext()) {
    int64_t dyn = ShapedType::kDynamic;
    hiddenType = RankedTensorType::get({dyn, c.hidden}, builder.getF32Type());
    tokensType = RankedTensorType::get({dyn}, builder.getI32Type());
    logitsType = RankedTensorType::get({dyn, c.vocab}, builder.getF32Type());
    exitLoopType = RankedTensorType::get({dyn}, builder.getI32Type());
    maskType = RankedTensorType::get({dyn}, builder.getI1Type());
    idsType = RankedTensorType::get({dyn, c.topK}, builder.getI32Type());
    gatesType = RankedTensorType::get({dyn, c.topK}, builder.getF32Type());
  }
  OwningOpRef<ModuleOp> emit();

private:
  Location named(const Twine &name) {
    return NameLoc::get(builder.getStringAttr(name), configLoc);
  }
  FlatSymbolRefAttr symbolRef(StringRef name) {
    return FlatSymbolRefAttr::get(builder.getContext(), name);
  }
  std::string sym(int64_t l, StringRef role) {
    return ("l" + Twine(l) + "_" + role).str();
  }
  std::string tensor(int64_t l, StringRef suffix) {
    return ("model.layers." + Twine(l) + "." + suffix).str();
  }
  void weight(StringRef symbol, ArrayRef<int64_t> shape, StringRef source) {
    WeightOp::create(builder, named(source), symbol,
                     RankedTensorType::get(shape, c.weightType),
                     builder.getStringAttr(source));
  }
  void declareLayer(int64_t l);
  Value emitLayer(int64_t l, Value hidden, Value positions, RouteOp &route);

  const DecoderConfig &c;
  Location configLoc;
  OpBuilder builder;
  RankedTensorType hiddenType, tokensType, logitsType, idsType, gatesType,
      exitLoopType, maskType;
};

void DecoderEmitter::declareLayer(int64_t l) {
  int64_t d = c.hidden, q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  int64_t e = c.experts, f = c.ffn;
  bool mixtral = c.kind == DecoderKind::Mixtral;
  weight(sym(l, "input_norm"), {d}, tensor(l, "input_layernorm.weight"));
  weight(sym(l, "q"), {q, d}, tensor(l, "self_attn.q_proj.weight"));
  weight(sym(l, "k"), {kv, d}, tensor(l, "self_attn.k_proj.weight"));
  weight(sym(l, "v"), {kv, d}, tensor(l, "self_attn.v_proj.weight"));
  weight(sym(l, "o"), {d, q}, tensor(l, "self_attn.o_proj.weight"));
  if (c.attentionBias)
    for (auto [role, width] : {std::pair<StringRef, int64_t>{"q", q},
                               {"k", kv},
                               {"v", kv},
                               {"o", d}})
      weight(sym(l, (role + "_bias").str()), {width},
             tensor(l, ("self_attn." + role + "_proj.bias").str()));
  // OLMoE normalises whole projections, Qwen3 each head.
  if (c.kind != DecoderKind::Mixtral) {
    bool perHead = c.kind == DecoderKind::Qwen3Moe;
    weight(sym(l, "q_norm"), {perHead ? c.headDim : q},
           tensor(l, "self_attn.q_norm.weight"));
    weight(sym(l, "k_norm"), {perHead ? c.headDim : kv},
           tensor(l, "self_attn.k_norm.weight"));
  }
  weight(sym(l, "post_norm"), {d},
         tensor(l, "post_attention_layernorm.weight"));
  StringRef moe = mixtral ? "block_sparse_moe" : "mlp";
  if (c.denseLayers.test(l)) {
    int64_t dense = c.denseFfn;
    weight(sym(l, "gate"), {dense, d}, tensor(l, "mlp.gate_proj.weight"));
    weight(sym(l, "up"), {dense, d}, tensor(l, "mlp.up_proj.weight"));
    weight(sym(l, "down"), {d, dense}, tensor(l, "mlp.down_proj.weight"));
    return;
  }
  if (l % c.shareBlock == 0)
    weight(sym(l, "router"), {e, d}, tensor(l, (moe + ".gate.weight").str()));
  auto expert = [&](StringRef hf, StringRef mixtralName) {
    return tensor(
        l, (moe + ".experts.{e}." + (mixtral ? mixtralName : hf) + ".weight")
               .str());
  };
  weight(sym(l, "gate"), {e, f, d}, expert("gate_proj", "w1"));
  weight(sym(l, "up"), {e, f, d}, expert("up_proj", "w3"));
  weight(sym(l, "down"), {e, d, f}, expert("down_proj", "w2"));
}

Value DecoderEmitter::emitLayer(int64_t l, Value hidden, Value positions,
                                RouteOp &route) {
  Location loc = named("model.layers." + Twine(l));
  Value normed =
      RmsNormOp::create(builder, loc, hiddenType, hidden,
                        symbolRef(sym(l, "input_norm")), APFloat(c.eps));
  bool norms = c.kind != DecoderKind::Mixtral;
  auto symbolOrNull = [&](bool present, StringRef role) {
    return present ? FlatSymbolRefAttr::get(builder.getContext(), sym(l, role))
                   : FlatSymbolRefAttr();
  };
  Value attention = AttentionOp::create(
      builder, loc, hiddenType, normed, positions, sym(l, "q"), sym(l, "k"),
      sym(l, "v"), sym(l, "o"), c.heads, c.kvHeads, c.headDim,
      APFloat(c.ropeTheta), /*causal=*/true, symbolOrNull(norms, "q_norm"),
      symbolOrNull(norms, "k_norm"),
      c.clipQkv > 0.0f ? builder.getF32FloatAttr(c.clipQkv) : FloatAttr(),
      /*cache_slot=*/l, APFloat(c.eps), /*scale=*/FloatAttr(),
      /*rope_interleaved=*/false, c.ropeScaling,
      c.windowedLayers.test(l) ? builder.getI64IntegerAttr(c.slidingWindow)
                               : IntegerAttr(),
      symbolOrNull(c.attentionBias, "q_bias"),
      symbolOrNull(c.attentionBias, "k_bias"),
      symbolOrNull(c.attentionBias, "v_bias"),
      symbolOrNull(c.attentionBias, "o_bias"));
  hidden = arith::AddFOp::create(builder, loc, hidden, attention);
  normed = RmsNormOp::create(builder, loc, hiddenType, hidden,
                             symbolRef(sym(l, "post_norm")), APFloat(c.eps));
  if (c.denseLayers.test(l)) {
    Value mlp = MlpOp::create(builder, loc, hiddenType, normed, sym(l, "gate"),
                              sym(l, "up"), sym(l, "down"), Activation::silu);
    return arith::AddFOp::create(builder, loc, hidden, mlp);
  }
  int64_t head = l - l % c.shareBlock;
  if (c.decision == RouterDecision::per_layer || l == head)
    route = RouteOp::create(builder, loc, idsType, gatesType, normed,
                            sym(head, "router"), c.topK, ScoringFunc::softmax,
                            c.normalizeTopK, APFloat(1.0f), c.decision);
  Value experts = ExpertsOp::create(
      builder, loc, hiddenType, normed, route.getIds(), route.getGates(),
      sym(l, "gate"), sym(l, "up"), sym(l, "down"), Activation::silu);
  return arith::AddFOp::create(builder, loc, hidden, experts);
}

OwningOpRef<ModuleOp> DecoderEmitter::emit() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(named("model"));
  (*module)->setAttr("moe.model_type", builder.getStringAttr(c.modelType));
  (*module)->setAttr("moe.max_positions",
                     builder.getI64IntegerAttr(c.maxPositions));
  builder.setInsertionPointToEnd(module->getBody());
  weight("embed", {c.vocab, c.hidden}, "model.embed_tokens.weight");
  for (int64_t l = 0; l < c.layers; ++l)
    declareLayer(l);
  weight("final_norm", {c.hidden}, "model.norm.weight");
  // Tied embeddings: the LM head is the embedding table.
  if (!c.tied)
    weight("lm_head", {c.vocab, c.hidden}, "lm_head.weight");

  Location loc = named("forward");
  auto func =
      func::FuncOp::create(builder, loc, "forward",
                           builder.getFunctionType({tokensType, tokensType},
                                                   {logitsType, exitLoopType}));
  Block *entry = func.addEntryBlock();
  builder.setInsertionPointToStart(entry);
  Value hidden = EmbedOp::create(builder, named("model.embed_tokens"),
                                 hiddenType, entry->getArgument(0), "embed");
  // The layers run in a moe.loop of num_loops passes (one for a plain
  // decoder); each pass has its own KV caches, so the loop is unrolled.
  auto loop =
      LoopOp::create(builder, named("model.layers"), hiddenType, exitLoopType,
                     hidden, c.numLoops, LoopMode::unroll);
  {
    OpBuilder::InsertionGuard guard(builder);
    Block *body =
        builder.createBlock(&loop.getBody(), {}, {hiddenType}, {loop.getLoc()});
    Value state = body->getArgument(0);
    RouteOp route;
    for (int64_t l = 0; l < c.layers; ++l)
      state = emitLayer(l, state, entry->getArgument(1), route);
    SmallVector<Value, 2> results = {state};
    if (c.exitCriterion && c.exitMinLoops < c.numLoops) {
      // The LM-head criteria read the next-token distribution of the state.
      bool onHead = *c.exitCriterion == ExitCriterion::max_prob ||
                    *c.exitCriterion == ExitCriterion::entropy;
      auto symbol = [&](StringRef name) {
        return onHead ? FlatSymbolRefAttr::get(builder.getContext(), name)
                      : FlatSymbolRefAttr();
      };
      results.push_back(ExitOp::create(builder, loop.getLoc(), maskType, state,
                                       body->getArgument(0), *c.exitCriterion,
                                       APFloat(c.exitThreshold), c.exitMinLoops,
                                       symbol(c.tied ? "embed" : "lm_head"),
                                       symbol("final_norm"), APFloat(c.eps)));
    }
    YieldOp::create(builder, loop.getLoc(), results);
  }
  Value normed = RmsNormOp::create(builder, named("model.norm"), hiddenType,
                                   loop.getResult(), symbolRef("final_norm"),
                                   APFloat(c.eps));
  Value logits = UnembedOp::create(builder, named("lm_head"), logitsType,
                                   normed, c.tied ? "embed" : "lm_head");
  func::ReturnOp::create(builder, loc, ValueRange{logits, loop.getExitLoop()});
  return module;
}
} // namespace

FailureOr<OwningOpRef<ModuleOp>>
mlir::moe::importDecoderConfig(StringRef jsonText, StringRef sourceName,
                               MLIRContext *ctx) {
  ctx->loadDialect<MoEDialect, func::FuncDialect, arith::ArithDialect>();
  DecoderReader reader(jsonText, sourceName, ctx);
  FailureOr<DecoderConfig> config = reader.read();
  if (failed(config))
    return failure();
  OwningOpRef<ModuleOp> module =
      DecoderEmitter(*config, reader.configLoc()).emit();
  if (failed(verify(*module)))
    return failure();
  return module;
}
