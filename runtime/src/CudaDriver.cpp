//===- CudaDriver.cpp - the CUDA driver API, loaded at run time -----------===//
#include "CudaDriver.h"

#include <cstdlib>
#include <dlfcn.h>
#include <map>
#include <memory>
#include <mutex>

using namespace moert::cuda;

std::string Driver::errorName(CUresult code) const {
  const char *name = nullptr, *text = nullptr;
  if (cuGetErrorName(code, &name) != CUDA_SUCCESS || !name)
    return "CUDA error " + std::to_string(code);
  std::string result = name;
  if (cuGetErrorString && cuGetErrorString(code, &text) == CUDA_SUCCESS && text)
    result += std::string(" (") + text + ")";
  return result;
}

std::string Driver::failure(const std::string &call, CUresult code) const {
  return call + " failed: " + errorName(code);
}

namespace {
/// Resolves `symbol` into `slot`; false if the library lacks it.
template <typename F> bool resolve(void *library, const char *symbol, F &slot) {
  slot = reinterpret_cast<F>(dlsym(library, symbol));
  return slot != nullptr;
}

/// Resolves every entry point; returns the first missing required one.
const char *resolveAll(void *lib, Driver &d) {
#define MOERT_REQUIRE(field, symbol)                                           \
  if (!resolve(lib, symbol, d.field))                                          \
    return symbol;
  MOERT_REQUIRE(cuInit, "cuInit")
  MOERT_REQUIRE(cuDriverGetVersion, "cuDriverGetVersion")
  MOERT_REQUIRE(cuGetErrorName, "cuGetErrorName")
  MOERT_REQUIRE(cuGetErrorString, "cuGetErrorString")
  MOERT_REQUIRE(cuDeviceGetCount, "cuDeviceGetCount")
  MOERT_REQUIRE(cuDeviceGet, "cuDeviceGet")
  MOERT_REQUIRE(cuDeviceGetName, "cuDeviceGetName")
  MOERT_REQUIRE(cuDeviceGetAttribute, "cuDeviceGetAttribute")
  MOERT_REQUIRE(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")
  MOERT_REQUIRE(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2")
  MOERT_REQUIRE(cuCtxPushCurrent, "cuCtxPushCurrent_v2")
  MOERT_REQUIRE(cuCtxPopCurrent, "cuCtxPopCurrent_v2")
  MOERT_REQUIRE(cuStreamCreate, "cuStreamCreate")
  MOERT_REQUIRE(cuStreamDestroy, "cuStreamDestroy_v2")
  MOERT_REQUIRE(cuStreamSynchronize, "cuStreamSynchronize")
  MOERT_REQUIRE(cuStreamWaitEvent, "cuStreamWaitEvent")
  MOERT_REQUIRE(cuEventCreate, "cuEventCreate")
  MOERT_REQUIRE(cuEventDestroy, "cuEventDestroy_v2")
  MOERT_REQUIRE(cuEventSynchronize, "cuEventSynchronize")
  MOERT_REQUIRE(cuEventRecord, "cuEventRecord")
  MOERT_REQUIRE(cuMemAlloc, "cuMemAlloc_v2")
  MOERT_REQUIRE(cuMemAllocManaged, "cuMemAllocManaged")
  MOERT_REQUIRE(cuMemFree, "cuMemFree_v2")
  MOERT_REQUIRE(cuMemcpyHtoD, "cuMemcpyHtoD_v2")
  MOERT_REQUIRE(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2")
  MOERT_REQUIRE(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2")
  MOERT_REQUIRE(cuMemcpyAsync, "cuMemcpyAsync")
  MOERT_REQUIRE(cuMemsetD32Async, "cuMemsetD32Async")
  MOERT_REQUIRE(cuMemsetD16Async, "cuMemsetD16Async")
  MOERT_REQUIRE(cuModuleLoadData, "cuModuleLoadData")
  MOERT_REQUIRE(cuModuleUnload, "cuModuleUnload")
  MOERT_REQUIRE(cuModuleGetFunction, "cuModuleGetFunction")
  MOERT_REQUIRE(cuLaunchKernel, "cuLaunchKernel")
  MOERT_REQUIRE(cuLaunchCooperativeKernel, "cuLaunchCooperativeKernel")
  MOERT_REQUIRE(cuOccupancyMaxActiveBlocksPerMultiprocessor,
                "cuOccupancyMaxActiveBlocksPerMultiprocessor")
  MOERT_REQUIRE(cuFuncSetAttribute, "cuFuncSetAttribute")
#undef MOERT_REQUIRE
  resolve(lib, "cuMemAllocAsync", d.cuMemAllocAsync);
  resolve(lib, "cuMemFreeAsync", d.cuMemFreeAsync);
  resolve(lib, "cuTensorMapEncodeTiled", d.cuTensorMapEncodeTiled);
  if (!d.cuMemAllocAsync || !d.cuMemFreeAsync)
    d.cuMemAllocAsync = nullptr, d.cuMemFreeAsync = nullptr;
  return nullptr;
}
} // namespace

const Driver *moert::cuda::loadDriver(std::string &problem) {
  const char *override = std::getenv(kDriverVariable);
  std::string path = override && *override ? override : "libcuda.so.1";
  std::string what =
      override && *override ? std::string(kDriverVariable) + "=" + path : path;

  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Driver>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = loaded.find(path); it != loaded.end())
    return it->second.get();

  void *library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char *why = dlerror();
    problem = "no NVIDIA driver: " + what + " cannot be loaded (" +
              (why ? why : "unknown error") + ")";
    return nullptr;
  }
  auto driver = std::make_unique<Driver>();
  if (const char *missing = resolveAll(library, *driver)) {
    dlclose(library);
    problem = "the NVIDIA driver library " + what + " lacks " + missing +
              " (the driver is too old or not NVIDIA's)";
    return nullptr;
  }
  // Kept loaded for the life of the process, as the CUDA runtime does.
  return (loaded[path] = std::move(driver)).get();
}
