//===- JsonConfig.h - validated reading of a config.json --------*- C++ -*-===//
//
// The field-by-field reading that every config importer shares: each problem
// becomes an error at the offending key (file:line:col), naming the field and
// what was expected, and unknown fields become warnings.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_IMPORT_JSONCONFIG_H
#define MOE_IMPORT_JSONCONFIG_H

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Location.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/JSON.h"

#include <optional>
#include <string>

namespace mlir::moe {

/// A JSON object parsed from `text` with the key positions diagnostics need.
class JsonConfig {
public:
  JsonConfig(StringRef text, StringRef sourceName, MLIRContext *ctx)
      : text(text), sourceName(sourceName), ctx(ctx) {}

  /// Parses the text; errors if it is not valid JSON or not an object.
  LogicalResult parse();

  FailureOr<const llvm::json::Value *> lookup(StringRef field, bool required);
  /// An integer >= 1; an absent optional field leaves `out` unchanged, and
  /// so does JSON null with `nullable`.
  LogicalResult readPositiveInt(StringRef field, int64_t &out,
                                bool required = false, bool nullable = false);
  /// An optional integer >= 0 (0 is allowed, unlike readPositiveInt).
  LogicalResult readCount(StringRef field, int64_t &out);
  /// A number representable as f32; with `nullable`, JSON null means absent.
  LogicalResult readFloat(StringRef field, float &out, bool required = false,
                          bool nullable = false);
  LogicalResult readBool(StringRef field, bool &out);
  FailureOr<std::optional<StringRef>> readString(StringRef field,
                                                 bool required = false);
  template <typename T, size_t N>
  LogicalResult readEnum(StringRef field,
                         const std::pair<StringRef, T> (&cases)[N], T &out);
  /// Warns about every field not in `known`, at its key.
  void warnUnknownFields(ArrayRef<llvm::StringLiteral> known);
  bool has(StringRef field) const { return object->get(field); }

  Location locAt(size_t offset) const;
  Location fieldLoc(StringRef field) const;
  /// Where the config object starts.
  Location configLoc() const { return locAt(objectOffset); }
  InFlightDiagnostic fieldError(StringRef field) {
    return emitError(fieldLoc(field)) << "field '" << field << "' ";
  }
  MLIRContext *getContext() const { return ctx; }

private:
  StringRef text, sourceName;
  MLIRContext *ctx;
  llvm::json::Value root = nullptr;
  const llvm::json::Object *object = nullptr;
  size_t objectOffset = 0;
  llvm::StringMap<size_t> keyOffsets;
};

/// `%g`, the way messages show a config's numbers.
std::string formatFloat(double value);
/// A JSON value as a message shows it; containers only by kind, so that a
/// large one cannot flood the message.
std::string describeJson(const llvm::json::Value &value);

template <typename T, size_t N>
LogicalResult JsonConfig::readEnum(StringRef field,
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

} // namespace mlir::moe

#endif // MOE_IMPORT_JSONCONFIG_H
