//===- CudaDriver.h - is there a usable CUDA driver and GPU? ----*- C++ -*-===//
#ifndef MOERT_CUDADRIVER_H
#define MOERT_CUDADRIVER_H

#include <string>

namespace moert {
/// What the machine offers for device "cuda": the number of CUDA devices, or
/// why there are none usable (no driver library, cuInit failing, ...). The
/// driver is loaded at run time, so the runtime builds and runs without one.
struct CudaProbe {
  int devices = 0;
  std::string problem; ///< empty when devices > 0
};
CudaProbe probeCudaDriver();
} // namespace moert

#endif // MOERT_CUDADRIVER_H
