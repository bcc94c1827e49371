//===- CpuKernelRegistry.h - every CPU kernel the compiler calls -*- C++ -*-===//
//
// A JIT (moe-run) resolves the kernel calls of a lowered model through this
// table; an application linking a compiled object resolves them through the
// linker instead.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPUKERNELREGISTRY_H
#define MOERT_CPUKERNELREGISTRY_H

#include "llvm/ADT/ArrayRef.h"

namespace moert::cpu {
struct KernelSymbol {
  const char *name; ///< the C symbol, `_mlir_ciface_moert_*`
  void *address;
};

/// Every `_mlir_ciface_moert_*` function convert-moe-to-cpu may call.
llvm::ArrayRef<KernelSymbol> kernelSymbols();
} // namespace moert::cpu

#endif // MOERT_CPUKERNELREGISTRY_H
