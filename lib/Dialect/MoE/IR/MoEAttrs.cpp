//===- MoEAttrs.cpp - moe dialect attributes --------------------*- C++ -*-===//
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/IR/DialectImplementation.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moe;

//===----------------------------------------------------------------------===//
// RopeScalingAttr
//===----------------------------------------------------------------------===//

// #moe.rope_scaling<factor = F [, ramp = [L, H]] [, attention_factor = A]>;
// the ramp defaults to [0, 0] and the attention factor to 1.
Attribute RopeScalingAttr::parse(AsmParser &parser, Type) {
  double factor = 0.0, rampLow = 0.0, rampHigh = 0.0, attention = 1.0;
  SMLoc loc = parser.getCurrentLocation();
  if (parser.parseLess() || parser.parseKeyword("factor") ||
      parser.parseEqual() || parser.parseFloat(factor))
    return {};
  while (succeeded(parser.parseOptionalComma())) {
    StringRef key;
    if (parser.parseKeyword(&key) || parser.parseEqual())
      return {};
    if (key == "ramp") {
      if (parser.parseLSquare() || parser.parseFloat(rampLow) ||
          parser.parseComma() || parser.parseFloat(rampHigh) ||
          parser.parseRSquare())
        return {};
    } else if (key == "attention_factor") {
      if (parser.parseFloat(attention))
        return {};
    } else {
      parser.emitError(parser.getCurrentLocation())
          << "expected 'ramp' or 'attention_factor', got '" << key << "'";
      return {};
    }
  }
  if (parser.parseGreater())
    return {};
  return RopeScalingAttr::getChecked(
      [&] { return parser.emitError(loc); }, parser.getContext(),
      APFloat(factor), APFloat(rampLow), APFloat(rampHigh), APFloat(attention));
}

void RopeScalingAttr::print(AsmPrinter &printer) const {
  printer << "<factor = ";
  printer.printFloat(getFactor());
  if (!getRampLow().isZero() || !getRampHigh().isZero()) {
    printer << ", ramp = [";
    printer.printFloat(getRampLow());
    printer << ", ";
    printer.printFloat(getRampHigh());
    printer << "]";
  }
  if (getAttentionFactor().convertToDouble() != 1.0) {
    printer << ", attention_factor = ";
    printer.printFloat(getAttentionFactor());
  }
  printer << ">";
}

LogicalResult
RopeScalingAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                        APFloat factor, APFloat rampLow, APFloat rampHigh,
                        APFloat attentionFactor) {
  double f = factor.convertToDouble(), low = rampLow.convertToDouble(),
         high = rampHigh.convertToDouble(),
         attention = attentionFactor.convertToDouble();
  if (!(f > 0.0 && std::isfinite(f)))
    return emitError() << "rope_scaling factor must be positive and finite";
  if (!(low >= 0.0 && high >= low && std::isfinite(high)))
    return emitError() << "rope_scaling ramp must have 0 <= low <= high";
  if (!(attention > 0.0 && std::isfinite(attention)))
    return emitError()
           << "rope_scaling attention_factor must be positive and finite";
  return success();
}
