//===- JsonConfig.cpp - validated reading of a config.json ----------------===//
#include "moe/Import/JsonConfig.h"

#include "llvm/Support/Format.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace mlir::moe;

namespace {
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

} // namespace

std::string mlir::moe::describeJson(const llvm::json::Value &value) {
  if (value.kind() == llvm::json::Value::Object)
    return "an object";
  if (value.kind() == llvm::json::Value::Array)
    return "an array";
  std::string text;
  llvm::raw_string_ostream(text) << value;
  return text;
}

std::string mlir::moe::formatFloat(double value) {
  std::string text;
  llvm::raw_string_ostream(text) << llvm::format("%g", value);
  return text;
}

namespace {
/// Like formatFloat, but "4.0" rather than "4": the form a message uses to
/// tell a float apart from an integer.
std::string formatFloatLiteral(double value) {
  std::string text = formatFloat(value);
  if (text.find_first_not_of("-0123456789") == std::string::npos)
    text += ".0";
  return text;
}

} // namespace

Location JsonConfig::locAt(size_t offset) const {
  StringRef before = text.take_front(offset);
  size_t lineStart = before.rfind('\n');
  lineStart = lineStart == StringRef::npos ? 0 : lineStart + 1;
  return FileLineColLoc::get(ctx, sourceName, 1 + before.count('\n'),
                             1 + before.size() - lineStart);
}

Location JsonConfig::fieldLoc(StringRef field) const {
  auto it = keyOffsets.find(field);
  return locAt(it == keyOffsets.end() ? objectOffset : it->second);
}

LogicalResult JsonConfig::parse() {
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
           << "the config must be a JSON object, got " << describeJson(root);
  keyOffsets = findTopLevelKeys(text);
  return success();
}

FailureOr<const llvm::json::Value *> JsonConfig::lookup(StringRef field,
                                                        bool required) {
  const llvm::json::Value *value = object->get(field);
  if (!value && required)
    return emitError(fieldLoc(field))
           << "missing required field '" << field << "'";
  return value;
}

LogicalResult JsonConfig::readPositiveInt(StringRef field, int64_t &out,
                                          bool required, bool nullable) {
  FailureOr<const llvm::json::Value *> value = lookup(field, required);
  if (failed(value))
    return failure();
  if (!*value || (nullable && (*value)->kind() == llvm::json::Value::Null))
    return success();
  // llvm::json also reads `2.0` as an integer, but the contract (like Python)
  // keeps ints and floats apart. Only integer literals have an unsigned form;
  // a negative `-2.0` slips through as -2, which the range check rejects.
  std::optional<int64_t> integer = (*value)->getAsInteger();
  std::optional<double> number = (*value)->getAsNumber();
  if (!number)
    return fieldError(field)
           << "must be an integer, got " << describeJson(**value);
  if (!(*value)->getAsUINT64() && !(integer && *integer < 0))
    return fieldError(field)
           << "must be an integer, got " << formatFloatLiteral(*number);
  if (!integer)
    return fieldError(field)
           << "= " << describeJson(**value) << " is out of range";
  if (*integer < 1)
    return fieldError(field) << "= " << *integer << " must be >= 1";
  out = *integer;
  return success();
}

LogicalResult JsonConfig::readCount(StringRef field, int64_t &out) {
  FailureOr<const llvm::json::Value *> value = lookup(field, false);
  if (failed(value))
    return failure();
  if (*value && (*value)->getAsUINT64() == 0 &&
      (*value)->kind() == llvm::json::Value::Number &&
      (*value)->getAsInteger()) {
    out = 0;
    return success();
  }
  return readPositiveInt(field, out);
}

LogicalResult JsonConfig::readFloat(StringRef field, float &out, bool required,
                                    bool nullable) {
  FailureOr<const llvm::json::Value *> value = lookup(field, required);
  if (failed(value))
    return failure();
  if (!*value || (nullable && (*value)->kind() == llvm::json::Value::Null))
    return success();
  std::optional<double> number = (*value)->getAsNumber();
  if (!number)
    return fieldError(field)
           << "must be a number, got " << describeJson(**value);
  // Casting a double beyond the f32 range is undefined; flushing a tiny one to
  // zero would change its meaning.
  if (std::fabs(*number) > std::numeric_limits<float>::max() ||
      (*number != 0.0 && static_cast<float>(*number) == 0.0f))
    return fieldError(field)
           << "= " << formatFloat(*number) << " is not representable as f32";
  out = static_cast<float>(*number);
  return success();
}

LogicalResult JsonConfig::readBool(StringRef field, bool &out) {
  FailureOr<const llvm::json::Value *> value = lookup(field, false);
  if (failed(value))
    return failure();
  if (!*value)
    return success();
  std::optional<bool> flag = (*value)->getAsBoolean();
  if (!flag)
    return fieldError(field)
           << "must be a boolean, got " << describeJson(**value);
  out = *flag;
  return success();
}

FailureOr<std::optional<StringRef>> JsonConfig::readString(StringRef field,
                                                           bool required) {
  FailureOr<const llvm::json::Value *> value = lookup(field, required);
  if (failed(value))
    return failure();
  if (!*value)
    return std::optional<StringRef>();
  std::optional<StringRef> string = (*value)->getAsString();
  if (!string)
    return fieldError(field)
           << "must be a string, got " << describeJson(**value);
  return string;
}

void JsonConfig::warnUnknownFields(ArrayRef<llvm::StringLiteral> known) {
  SmallVector<StringRef> unknown;
  for (const auto &entry : *object)
    if (!llvm::is_contained(known, StringRef(entry.first)))
      unknown.push_back(entry.first);
  llvm::sort(unknown);
  for (StringRef field : unknown)
    emitWarning(fieldLoc(field)) << "ignoring unknown field '" << field << "'";
}
