//===- GpuEmulation.cpp - what emulated GPU kernels report ----------------===//
#include "moert/GpuEmulation.h"

namespace {
/// Per thread: a model runs its kernels on the thread that calls it.
thread_local const char *firstFault = nullptr;
} // namespace

void moert_emulated_out_of_bounds(const char *kernel) {
  if (!firstFault)
    firstFault = kernel;
}

const char *moert::takeEmulatedFault() {
  const char *kernel = firstFault;
  firstFault = nullptr;
  return kernel;
}
