//===- MoEStackImport.cpp - moe_stack config.json to moe IR ---------------===//
//
// Two steps: ConfigReader checks the JSON against the contract's field table
// and reports every problem at the offending key; StackEmitter then builds the
// IR from a config that is known to be valid, so it never has to fail.
//
//===----------------------------------------------------------------------===//
#include "moe/Import/MoEStackImport.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MathExtras.h"

#include <cmath>
#include <limits>

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

constexpr StringRef kJsonSpace = " \t\r\n";

/// Byte offsets of the keys of the top-level object in `text`, which must be
/// valid JSON (llvm::json keeps no positions). A repeated key maps to its last
/// occurrence, the one llvm::json keeps; a key spelt with escapes is stored as
/// written and so is not found, which only costs the diagnostic its position.
llvm::StringMap<size_t> findTopLevelKeys(StringRef text) {
  llvm::StringMap<size_t> keys;
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    switch (text[i]) {
    case '{':
    case '[':
      ++depth;
      break;
    case '}':
    case ']':
      --depth;
      break;
    case '"': {
      size_t start = i;
      for (++i; i < text.size() && text[i] != '"'; ++i)
        if (text[i] == '\\')
          ++i;
      size_t next = text.find_first_not_of(kJsonSpace, i + 1);
      if (depth == 1 && next != StringRef::npos && text[next] == ':')
        keys[text.slice(start + 1, i)] = start;
      break;
    }
    default:
      break;
    }
  }
  return keys;
}

/// llvm::json reports "[line:column, byte=N]: message"; returns N and the
/// message so the diagnostic can point into the file like all the others.
std::pair<size_t, std::string> splitJsonError(StringRef error) {
  StringRef rest = error;
  size_t offset;
  if (rest.consume_front("[")) {
    auto [position, message] = rest.split("]: ");
    if (!message.empty() &&
        !position.split("byte=").second.getAsInteger(10, offset))
      return {offset, message.str()};
  }
  return {0, error.str()};
}

/// A JSON value as a message shows it; containers only by kind, so that a
/// large one cannot flood the message.
std::string describe(const llvm::json::Value &value) {
  if (value.kind() == llvm::json::Value::Object)
    return "an object";
  if (value.kind() == llvm::json::Value::Array)
    return "an array";
  std::string text;
  llvm::raw_string_ostream(text) << value;
  return text;
}

std::string formatFloat(double value) {
  std::string text;
  llvm::raw_string_ostream(text) << llvm::format("%g", value);
  return text;
}

/// Like formatFloat, but "4.0" rather than "4": the form a message uses to
/// tell a float apart from an integer.
std::string formatFloatLiteral(double value) {
  std::string text = formatFloat(value);
  if (text.find_first_not_of("-0123456789") == std::string::npos)
    text += ".0";
  return text;
}

/// Reads and validates a config; every error names the field and points at
/// its key (or, for a missing field, at the object).
class ConfigReader {
public:
  ConfigReader(StringRef text, StringRef sourceName, MLIRContext *ctx)
      : text(text), sourceName(sourceName), ctx(ctx) {}

  FailureOr<MoEStackConfig> read();

  /// Where the config object starts; valid after read() succeeds.
  Location configLoc() const { return locAt(objectOffset); }

private:
  LogicalResult parseObject();
  LogicalResult readModelType();
  LogicalResult readFields(MoEStackConfig &config);
  LogicalResult checkConsistency(const MoEStackConfig &config);
  void warnUnknownFields();
  void warnUnreachableExit(const MoEStackConfig &config);

  FailureOr<const llvm::json::Value *> lookup(StringRef field, bool required);
  LogicalResult readPositiveInt(StringRef field, int64_t &out,
                                bool required = false);
  LogicalResult readFloat(StringRef field, float &out);
  LogicalResult readBool(StringRef field, bool &out);
  FailureOr<std::optional<StringRef>> readString(StringRef field,
                                                 bool required = false);
  template <typename T, size_t N>
  LogicalResult readEnum(StringRef field,
                         const std::pair<StringRef, T> (&cases)[N], T &out);

  Location locAt(size_t offset) const;
  Location fieldLoc(StringRef field) const;
  InFlightDiagnostic fieldError(StringRef field) {
    return emitError(fieldLoc(field)) << "field '" << field << "' ";
  }

  StringRef text, sourceName;
  MLIRContext *ctx;
  llvm::json::Value root = nullptr;
  const llvm::json::Object *object = nullptr;
  size_t objectOffset = 0;
  llvm::StringMap<size_t> keyOffsets;
};

Location ConfigReader::locAt(size_t offset) const {
  StringRef before = text.take_front(offset);
  size_t lineStart = before.rfind('\n');
  lineStart = lineStart == StringRef::npos ? 0 : lineStart + 1;
  return FileLineColLoc::get(ctx, sourceName, 1 + before.count('\n'),
                             1 + before.size() - lineStart);
}

Location ConfigReader::fieldLoc(StringRef field) const {
  auto it = keyOffsets.find(field);
  return locAt(it == keyOffsets.end() ? objectOffset : it->second);
}

LogicalResult ConfigReader::parseObject() {
  llvm::Expected<llvm::json::Value> parsed = llvm::json::parse(text);
  if (!parsed) {
    auto [offset, message] = splitJsonError(toString(parsed.takeError()));
    return emitError(locAt(offset)) << "invalid JSON: " << message;
  }
  root = std::move(*parsed);
  // Valid JSON has a value, so this finds it.
  objectOffset = text.find_first_not_of(kJsonSpace);
  object = root.getAsObject();
  if (!object)
    return emitError(locAt(objectOffset))
           << "the config must be a JSON object, got " << describe(root);
  keyOffsets = findTopLevelKeys(text);
  return success();
}

FailureOr<const llvm::json::Value *> ConfigReader::lookup(StringRef field,
                                                          bool required) {
  const llvm::json::Value *value = object->get(field);
  if (!value && required)
    return emitError(fieldLoc(field))
           << "missing required field '" << field << "'";
  return value;
}

LogicalResult ConfigReader::readPositiveInt(StringRef field, int64_t &out,
                                            bool required) {
  FailureOr<const llvm::json::Value *> value = lookup(field, required);
  if (failed(value))
    return failure();
  if (!*value)
    return success();
  // llvm::json also reads `2.0` as an integer, but the contract (like Python)
  // keeps ints and floats apart. Only integer literals have an unsigned form;
  // a negative `-2.0` slips through as -2, which the range check rejects.
  std::optional<int64_t> integer = (*value)->getAsInteger();
  std::optional<double> number = (*value)->getAsNumber();
  if (!number)
    return fieldError(field) << "must be an integer, got " << describe(**value);
  if (!(*value)->getAsUINT64() && !(integer && *integer < 0))
    return fieldError(field)
           << "must be an integer, got " << formatFloatLiteral(*number);
  if (!integer)
    return fieldError(field) << "= " << describe(**value) << " is out of range";
  if (*integer < 1)
    return fieldError(field) << "= " << *integer << " must be >= 1";
  out = *integer;
  return success();
}

LogicalResult ConfigReader::readFloat(StringRef field, float &out) {
  FailureOr<const llvm::json::Value *> value = lookup(field, false);
  if (failed(value))
    return failure();
  if (!*value)
    return success();
  std::optional<double> number = (*value)->getAsNumber();
  if (!number)
    return fieldError(field) << "must be a number, got " << describe(**value);
  // Casting a double beyond the f32 range is undefined; flushing a tiny one to
  // zero would change its meaning.
  if (std::fabs(*number) > std::numeric_limits<float>::max() ||
      (*number != 0.0 && static_cast<float>(*number) == 0.0f))
    return fieldError(field)
           << "= " << formatFloat(*number) << " is not representable as f32";
  out = static_cast<float>(*number);
  return success();
}

LogicalResult ConfigReader::readBool(StringRef field, bool &out) {
  FailureOr<const llvm::json::Value *> value = lookup(field, false);
  if (failed(value))
    return failure();
  if (!*value)
    return success();
  std::optional<bool> flag = (*value)->getAsBoolean();
  if (!flag)
    return fieldError(field) << "must be a boolean, got " << describe(**value);
  out = *flag;
  return success();
}

FailureOr<std::optional<StringRef>> ConfigReader::readString(StringRef field,
                                                             bool required) {
  FailureOr<const llvm::json::Value *> value = lookup(field, required);
  if (failed(value))
    return failure();
  if (!*value)
    return std::optional<StringRef>();
  std::optional<StringRef> string = (*value)->getAsString();
  if (!string)
    return fieldError(field) << "must be a string, got " << describe(**value);
  return string;
}

template <typename T, size_t N>
LogicalResult ConfigReader::readEnum(StringRef field,
                                     const std::pair<StringRef, T> (&cases)[N],
                                     T &out) {
  FailureOr<std::optional<StringRef>> name = readString(field);
  if (failed(name))
    return failure();
  if (!*name)
    return success();
  for (const auto &[spelling, value] : cases) {
    if (**name == spelling) {
      out = value;
      return success();
    }
  }
  InFlightDiagnostic diag = emitError(fieldLoc(field))
                            << "unknown " << field << " '" << **name
                            << "' (expected ";
  for (size_t i = 0; i < N; ++i)
    diag << (i == 0 ? "" : i + 1 == N ? " or " : ", ") << cases[i].first;
  return diag << ")";
}

LogicalResult ConfigReader::readModelType() {
  FailureOr<std::optional<StringRef>> name =
      readString("model_type", /*required=*/true);
  if (failed(name))
    return failure();
  if (**name != kModelType)
    return emitError(fieldLoc("model_type"))
           << "unsupported model_type '" << **name
           << "' (supported: " << kModelType << ")";
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
      {"float32", Float32Type::get(ctx)}, {"bfloat16", BFloat16Type::get(ctx)}};
  c.weightType = Float32Type::get(ctx);
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

void ConfigReader::warnUnknownFields() {
  SmallVector<StringRef> unknown;
  for (const auto &entry : *object)
    if (!llvm::is_contained(kFields, StringRef(entry.first)))
      unknown.push_back(entry.first);
  llvm::sort(unknown);
  for (StringRef field : unknown)
    emitWarning(fieldLoc(field)) << "ignoring unknown field '" << field << "'";
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
  if (failed(parseObject()) || failed(readModelType()))
    return failure();
  warnUnknownFields();
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
                                   layerSymbol(l, "norm"), APFloat(c.eps));
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
                                     /*lm_head=*/nullptr));
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
                                loop.getResult(), "final_norm", APFloat(c.eps));
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
