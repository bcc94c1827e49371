//===- RopeConfig.cpp - RoPE fields of a Hugging Face config ----*- C++ -*-===//
#include "moe/Import/RopeConfig.h"

#include "llvm/ADT/STLExtras.h"

#include <cmath>
#include <limits>
#include <map>

using namespace mlir;
using namespace mlir::moe;

namespace {
/// The parameters of one rope_type, beyond rope_type and rope_theta.
constexpr llvm::StringLiteral kLinearKeys[] = {"factor"};
constexpr llvm::StringLiteral kYarnKeys[] = {
    "factor",           "original_max_position_embeddings",
    "attention_factor", "beta_fast",
    "beta_slow",        "mscale",
    "mscale_all_dim",   "truncate"};

/// YaRN's attention scale for a context `scale` times longer (the paper's
/// 0.1 ln s + 1, with DeepSeek's mscale).
double yarnMscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

/// The rotary pair that turns `rotations` times over `positions`, as a real
/// number (YaRN's find_correction_dim).
double correctionPair(double rotations, int64_t dim, double theta,
                      double positions) {
  return double(dim) * std::log(positions / (rotations * 2.0 * M_PI)) /
         (2.0 * std::log(theta));
}
} // namespace

LogicalResult mlir::moe::readRope(JsonConfig &config, int64_t headDim,
                                  int64_t maxPositions, float &theta,
                                  RopeScalingAttr &scaling) {
  // transformers 5's name, then transformers 4's.
  StringRef field;
  const llvm::json::Object *params = nullptr;
  for (StringRef name : {"rope_parameters", "rope_scaling"}) {
    FailureOr<const llvm::json::Value *> value = config.lookup(name, false);
    if (failed(value))
      return failure();
    if (!*value || (*value)->kind() == llvm::json::Value::Null)
      continue;
    if (params)
      return config.fieldError(name)
             << "and '" << field << "' are both set; give one";
    params = (*value)->getAsObject();
    field = name;
    if (!params)
      return config.fieldError(name) << "must be an object";
  }
  if (!params)
    return success();
  auto error = [&]() { return config.fieldError(field); };

  // In key order, so that the first of several problems is always the one
  // reported. transformers 4 also spells rope_type "type".
  SmallVector<StringRef> keys;
  for (const auto &item : *params)
    keys.push_back(item.first);
  llvm::sort(keys);
  std::optional<StringRef> types[2];
  for (auto [key, name] : llvm::zip_equal(
           ArrayRef<StringRef>{"rope_type", "type"}, MutableArrayRef(types))) {
    const llvm::json::Value *entry = params->get(key);
    if (!entry)
      continue;
    name = entry->getAsString();
    if (!name)
      return error() << "has " << key << " " << describeJson(*entry)
                     << ", which must be a string";
  }
  if (types[0] && types[1] && *types[0] != *types[1])
    return error() << "has rope_type \"" << *types[0] << "\" and type \""
                   << *types[1] << "\"; give one";
  StringRef type = types[0].value_or(types[1].value_or("default"));
  ArrayRef<llvm::StringLiteral> typeKeys;
  if (type == "linear")
    typeKeys = kLinearKeys;
  else if (type == "yarn")
    typeKeys = kYarnKeys;
  else if (type != "default")
    return error() << "has rope_type \"" << type
                   << "\", which is not supported yet (supported: \"default\", "
                      "\"linear\", \"yarn\")";

  std::optional<double> paramTheta;
  // The numbers of the type's parameters; null means absent, as
  // transformers reads them with get().
  std::map<std::string, double> numbers;
  bool truncate = true;
  for (StringRef key : keys) {
    const llvm::json::Value &entry = *params->get(key);
    if (key == "rope_type" || key == "type")
      continue;
    if (key == "rope_theta") {
      paramTheta = entry.getAsNumber();
      if (!paramTheta || !(*paramTheta > 0.0) ||
          *paramTheta > std::numeric_limits<float>::max())
        return error() << "has rope_theta " << describeJson(entry)
                       << ", which must be a number > 0";
    } else if (key == "partial_rotary_factor") {
      if (entry.getAsNumber() != 1.0)
        return error() << "has partial_rotary_factor " << describeJson(entry)
                       << ", which is not supported yet (only 1)";
    } else if (entry.getAsObject()) {
      return error() << "gives parameters per layer type ('" << key
                     << "'), which is not supported yet";
    } else if (!llvm::is_contained(typeKeys, key)) {
      auto diag = error() << "has '" << key << "', which rope_type \"" << type
                          << "\" does not take";
      if (type == "default")
        diag << " (RoPE scaling needs rope_type \"linear\" or \"yarn\")";
      return diag;
    } else if (entry.kind() == llvm::json::Value::Null) {
      continue;
    } else if (key == "truncate") {
      std::optional<bool> flag = entry.getAsBoolean();
      if (!flag)
        return error() << "has truncate " << describeJson(entry)
                       << ", which must be a boolean";
      truncate = *flag;
    } else {
      std::optional<double> number = entry.getAsNumber();
      if (!number || !std::isfinite(*number))
        return error() << "has " << key << " " << describeJson(entry)
                       << ", which must be a number";
      numbers[key.str()] = *number;
    }
  }
  if (paramTheta) {
    if (config.has("rope_theta") && float(*paramTheta) != theta)
      return error() << "has rope_theta " << formatFloat(*paramTheta)
                     << ", which contradicts rope_theta = "
                     << formatFloat(theta);
    theta = float(*paramTheta);
  }
  if (type == "default")
    return success();

  auto number = [&](StringRef key) -> std::optional<double> {
    auto it = numbers.find(key.str());
    if (it == numbers.end())
      return std::nullopt;
    return it->second;
  };
  std::optional<double> factor = number("factor");
  MLIRContext *ctx = config.getContext();
  if (type == "linear") {
    if (!factor)
      return error() << "needs a factor for rope_type \"linear\"";
    if (!(*factor > 0.0))
      return error() << "has factor " << formatFloat(*factor)
                     << ", which must be > 0";
    scaling = RopeScalingAttr::get(ctx, *factor, 0.0, 0.0, 1.0);
    return success();
  }

  // YaRN, as transformers 5's _compute_yarn_parameters: an explicit factor
  // wins over max_position_embeddings / original_max_position_embeddings
  // (some transformers 4 releases used the ratio), and the original context
  // defaults to max_position_embeddings.
  std::optional<double> original = number("original_max_position_embeddings");
  if (original && !(*original >= 1.0 && std::floor(*original) == *original))
    return error() << "has original_max_position_embeddings "
                   << formatFloat(*original)
                   << ", which must be an integer >= 1";
  double context = original.value_or(double(maxPositions));
  if (!factor && !original)
    return error() << "needs a factor (or original_max_position_embeddings) "
                      "for rope_type \"yarn\"";
  double f = factor.value_or(double(maxPositions) / context);
  if (!(f > 0.0))
    return error() << "has factor " << formatFloat(f) << ", which must be > 0";
  if (factor && original && double(maxPositions) / *original != *factor)
    emitWarning(config.fieldLoc(field))
        << "field '" << field << "' has factor " << formatFloat(*factor)
        << " but max_position_embeddings / original_max_position_embeddings = "
        << formatFloat(double(maxPositions) / *original)
        << "; using the factor, as transformers 5 does";
  double attention;
  if (std::optional<double> given = number("attention_factor")) {
    if (!(*given > 0.0))
      return error() << "has attention_factor " << formatFloat(*given)
                     << ", which must be > 0";
    attention = *given;
  } else {
    std::optional<double> mscale = number("mscale"),
                          mscaleAllDim = number("mscale_all_dim");
    // transformers tests them for truth: 0 is the same as absent.
    attention = mscale.value_or(0.0) != 0.0 && mscaleAllDim.value_or(0.0) != 0.0
                    ? yarnMscale(f, *mscale) / yarnMscale(f, *mscaleAllDim)
                    : yarnMscale(f);
    if (!(attention > 0.0 && std::isfinite(attention)))
      return error() << "gives an attention factor of "
                     << formatFloat(attention) << " (from mscale "
                     << formatFloat(mscale.value_or(0.0)) << " / "
                     << formatFloat(mscaleAllDim.value_or(0.0))
                     << "), which must be > 0";
  }
  // `or` in transformers: 0 means the default too.
  double betaFast = number("beta_fast").value_or(0.0),
         betaSlow = number("beta_slow").value_or(0.0);
  if (betaFast == 0.0)
    betaFast = 32.0;
  if (betaSlow == 0.0)
    betaSlow = 1.0;
  if (!(betaFast > 0.0 && betaSlow > 0.0 && betaFast >= betaSlow))
    return error() << "has beta_fast " << formatFloat(betaFast)
                   << " and beta_slow " << formatFloat(betaSlow)
                   << ", which must be > 0 with beta_fast >= beta_slow";
  double low = correctionPair(betaFast, headDim, theta, context),
         high = correctionPair(betaSlow, headDim, theta, context);
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(headDim - 1));
  if (!(low <= high))
    return error() << "gives a YaRN ramp from rotary pair " << formatFloat(low)
                   << " to " << formatFloat(high)
                   << " for head_dim = " << headDim
                   << " and an original context of " << formatFloat(context)
                   << ", which is empty";
  // transformers' guard against a ramp of width 0.
  if (low == high)
    high += 0.001;
  scaling = RopeScalingAttr::get(ctx, f, low, high, attention);
  return success();
}
