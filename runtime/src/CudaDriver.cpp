//===- CudaDriver.cpp - is there a usable CUDA driver and GPU? ------------===//
#include "CudaDriver.h"

#include <dlfcn.h>
#include <memory>

using namespace moert;

namespace {
// The few driver API entry points the probe needs (cuda.h types, spelled
// out so that building the runtime does not need the CUDA headers).
using CUresult = int;
using CuInit = CUresult (*)(unsigned);
using CuDeviceGetCount = CUresult (*)(int *);
using CuGetErrorName = CUresult (*)(CUresult, const char **);

std::string errorName(void *driver, CUresult code) {
  const char *name = nullptr;
  auto getName =
      reinterpret_cast<CuGetErrorName>(dlsym(driver, "cuGetErrorName"));
  if (getName && getName(code, &name) == 0 && name)
    return name;
  return "CUDA error " + std::to_string(code);
}
} // namespace

CudaProbe moert::probeCudaDriver() {
  CudaProbe probe;
  void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  std::unique_ptr<void, int (*)(void *)> unload(driver, dlclose);
  if (!driver) {
    const char *why = dlerror();
    probe.problem = std::string("no NVIDIA driver: libcuda.so.1 cannot be "
                                "loaded (") +
                    (why ? why : "unknown error") + ")";
    return probe;
  }
  auto init = reinterpret_cast<CuInit>(dlsym(driver, "cuInit"));
  auto count =
      reinterpret_cast<CuDeviceGetCount>(dlsym(driver, "cuDeviceGetCount"));
  if (!init || !count) {
    probe.problem = "the NVIDIA driver library lacks cuInit/cuDeviceGetCount";
    return probe;
  }
  if (CUresult result = init(0)) {
    probe.problem = "the CUDA driver failed to initialise: cuInit returned " +
                    errorName(driver, result);
    return probe;
  }
  if (CUresult result = count(&probe.devices)) {
    probe.problem = "cuDeviceGetCount returned " + errorName(driver, result);
    return probe;
  }
  if (probe.devices == 0)
    probe.problem = "the CUDA driver reports no device";
  return probe;
}
