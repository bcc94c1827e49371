//===- FakeCuda.cpp - a fake CUDA driver for the runtime's tests ----------===//
//
// See FakeCuda.h. Built as a shared library named libcuda.so.1 (without a
// soname, so that it never stands in for a real driver loaded by name).
//
//===----------------------------------------------------------------------===//
#include "FakeCuda.h"
// The runtime's spelling of the driver types, so that the signatures match
// exactly (UBSan checks calls through function pointers).
#include "CudaDriver.h"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>

using namespace moert::cuda;

namespace {
enum : CUresult {
  SUCCESS = 0,
  INVALID_VALUE = 1,
  NOT_INITIALIZED = 3,
  INVALID_IMAGE = 200,
  INVALID_CONTEXT = 201,
  INVALID_HANDLE = 400,
  NOT_FOUND = 500,
  COOPERATIVE_LAUNCH_TOO_LARGE = 720,
};

struct ErrorText {
  CUresult code;
  const char *name, *text;
};
constexpr ErrorText kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU",
     "no kernel image is available for execution on the device"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain."},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
     "too many blocks in cooperative launch"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};

struct Module {
  const FakeCudaBinary *binary;
};

std::mutex mutex;
bool initialised = false;
std::map<uintptr_t, size_t> allocations; ///< base -> bytes
std::set<CUstream> streams;
std::set<CUevent> events;
std::set<Module *> modules;
int primaryRefs = 0, launches = 0, driverCalls = 0, cooperativeLaunches = 0;
unsigned lastGridX = 0;
int tensorMapsEncoded = 0, sharedOptIns = 0;
unsigned lastSharedBytes = 0;
/// What cuFuncSetAttribute let each kernel take of dynamic shared memory.
std::map<CUfunction, unsigned> sharedAllowed;
constexpr unsigned kSharedWithoutOptIn = 48 * 1024,
                   kSharedOptInLimit = 227 * 1024;
CUstream lastStream = nullptr;
std::map<std::string, int> callCounts; ///< since the fail spec changed
std::string lastFailSpec;
thread_local int contextDepth = 0;
char primaryContext; // its address is the context handle

int envInt(const char *name, int fallback) {
  const char *value = std::getenv(name);
  return value && *value ? std::atoi(value) : fallback;
}

/// Counts the call and returns what MOERT_FAKE_CUDA_FAIL makes it return.
CUresult injected(const std::string &call) {
  std::lock_guard<std::mutex> lock(mutex);
  ++driverCalls;
  const char *env = std::getenv("MOERT_FAKE_CUDA_FAIL");
  std::string spec = env ? env : "";
  if (spec != lastFailSpec) {
    lastFailSpec = spec;
    callCounts.clear();
  }
  int nth = ++callCounts[call];
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t end = spec.find(',', pos);
    std::string item = spec.substr(pos, end - pos);
    pos = end == std::string::npos ? spec.size() : end + 1;
    size_t eq = item.find('=');
    if (eq == std::string::npos)
      continue;
    std::string name = item.substr(0, eq);
    int only = 0;
    if (size_t at = name.find('@'); at != std::string::npos) {
      only = std::atoi(name.c_str() + at + 1);
      name.resize(at);
    }
    if (name == call && (only == 0 || only == nth))
      return std::atoi(item.c_str() + eq + 1);
  }
  return SUCCESS;
}

/// True if [p, p + bytes) lies in a live allocation.
bool isDevice(uintptr_t p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex);
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin())
    return false;
  --it;
  return p + bytes <= it->first + it->second;
}

bool knownStream(CUstream stream) {
  std::lock_guard<std::mutex> lock(mutex);
  return !stream || streams.count(stream);
}

CUresult allocate(CUdeviceptr *p, size_t bytes) {
  if (!p || bytes == 0)
    return INVALID_VALUE;
  if (contextDepth == 0)
    return INVALID_CONTEXT;
  void *memory = std::malloc(bytes);
  if (!memory)
    return 2;
  std::lock_guard<std::mutex> lock(mutex);
  allocations[reinterpret_cast<uintptr_t>(memory)] = bytes;
  *p = reinterpret_cast<uintptr_t>(memory);
  return SUCCESS;
}

CUresult release(CUdeviceptr p) {
  if (contextDepth == 0)
    return INVALID_CONTEXT;
  std::lock_guard<std::mutex> lock(mutex);
  if (!allocations.erase(p))
    return INVALID_VALUE;
  std::free(reinterpret_cast<void *>(uintptr_t(p)));
  return SUCCESS;
}

/// The checks every call that works in a context makes first.
#define FAKE_CALL(name)                                                        \
  if (CUresult injectedResult = injected(name))                                \
    return injectedResult;                                                     \
  if (!initialised)                                                            \
    return NOT_INITIALIZED;
#define FAKE_IN_CONTEXT(name)                                                  \
  FAKE_CALL(name)                                                              \
  if (contextDepth == 0)                                                       \
    return INVALID_CONTEXT;
} // namespace

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT FakeCudaCounters fakeCudaCounters() {
  std::lock_guard<std::mutex> lock(mutex);
  return {int(allocations.size()),
          int(streams.size()),
          int(events.size()),
          int(modules.size()),
          primaryRefs,
          launches,
          driverCalls,
          static_cast<void *>(lastStream),
          contextDepth,
          cooperativeLaunches,
          lastGridX,
          tensorMapsEncoded,
          sharedOptIns,
          lastSharedBytes};
}

EXPORT bool fakeCudaIsDeviceMemory(const void *p, size_t bytes) {
  return p && isDevice(reinterpret_cast<uintptr_t>(p), bytes);
}

EXPORT CUresult cuInit(unsigned flags) {
  if (CUresult r = injected("cuInit"))
    return r;
  if (flags)
    return INVALID_VALUE;
  initialised = true;
  return SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int *version) {
  *version = 13000;
  return SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult code, const char **name) {
  for (const ErrorText &e : kErrors)
    if (e.code == code)
      return *name = e.name, SUCCESS;
  *name = nullptr;
  return INVALID_VALUE;
}
EXPORT CUresult cuGetErrorString(CUresult code, const char **text) {
  for (const ErrorText &e : kErrors)
    if (e.code == code)
      return *text = e.text, SUCCESS;
  *text = nullptr;
  return INVALID_VALUE;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
  FAKE_CALL("cuDeviceGetCount")
  *count = envInt("MOERT_FAKE_CUDA_DEVICES", 1);
  return SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  FAKE_CALL("cuDeviceGet")
  if (ordinal < 0 || ordinal >= envInt("MOERT_FAKE_CUDA_DEVICES", 1))
    return 101; // CUDA_ERROR_INVALID_DEVICE
  *device = ordinal;
  return SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char *name, int length, CUdevice) {
  FAKE_CALL("cuDeviceGetName")
  std::strncpy(name, "Fake GPU", size_t(length));
  return SUCCESS;
}
EXPORT CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice) {
  FAKE_CALL("cuDeviceGetAttribute")
  int sm = envInt("MOERT_FAKE_CUDA_SM", 90);
  switch (attribute) {
  case 75: // compute capability major
    return *value = sm / 10, SUCCESS;
  case 76: // minor
    return *value = sm % 10, SUCCESS;
  case 16: // multiprocessors
    return *value = envInt("MOERT_FAKE_CUDA_SMS", 132), SUCCESS;
  case 95: // cooperative launch
    return *value = envInt("MOERT_FAKE_CUDA_COOPERATIVE", 1), SUCCESS;
  case 115: // memory pools supported
    return *value = envInt("MOERT_FAKE_CUDA_POOLS", 1), SUCCESS;
  default:
    return INVALID_VALUE;
  }
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice) {
  FAKE_CALL("cuDevicePrimaryCtxRetain")
  std::lock_guard<std::mutex> lock(mutex);
  ++primaryRefs;
  *ctx = reinterpret_cast<CUcontext>(&primaryContext);
  return SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
  FAKE_CALL("cuDevicePrimaryCtxRelease")
  std::lock_guard<std::mutex> lock(mutex);
  if (primaryRefs == 0)
    return INVALID_CONTEXT;
  --primaryRefs;
  return SUCCESS;
}
EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  FAKE_CALL("cuCtxPushCurrent")
  if (ctx != reinterpret_cast<CUcontext>(&primaryContext))
    return INVALID_CONTEXT;
  ++contextDepth;
  return SUCCESS;
}
EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *ctx) {
  FAKE_CALL("cuCtxPopCurrent")
  if (contextDepth == 0)
    return INVALID_CONTEXT;
  --contextDepth;
  if (ctx)
    *ctx = reinterpret_cast<CUcontext>(&primaryContext);
  return SUCCESS;
}

// Streams and events are tokens: all work is done when it is queued.
EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned) {
  FAKE_CALL("cuStreamCreate")
  std::lock_guard<std::mutex> lock(mutex);
  *stream = reinterpret_cast<CUstream>(new char);
  streams.insert(*stream);
  return SUCCESS;
}
EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
  FAKE_CALL("cuStreamDestroy")
  std::lock_guard<std::mutex> lock(mutex);
  if (!streams.erase(stream))
    return INVALID_HANDLE;
  delete reinterpret_cast<char *>(stream);
  return SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream stream) {
  FAKE_IN_CONTEXT("cuStreamSynchronize")
  return knownStream(stream) ? SUCCESS : INVALID_HANDLE;
}
EXPORT CUresult cuEventCreate(CUevent *event, unsigned) {
  FAKE_IN_CONTEXT("cuEventCreate")
  std::lock_guard<std::mutex> lock(mutex);
  *event = reinterpret_cast<CUevent>(new char);
  events.insert(*event);
  return SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(CUevent event) {
  FAKE_CALL("cuEventDestroy")
  std::lock_guard<std::mutex> lock(mutex);
  if (!events.erase(event))
    return INVALID_HANDLE;
  delete reinterpret_cast<char *>(event);
  return SUCCESS;
}
EXPORT CUresult cuEventSynchronize(CUevent event) {
  FAKE_CALL("cuEventSynchronize")
  std::lock_guard<std::mutex> lock(mutex);
  return events.count(event) ? SUCCESS : INVALID_HANDLE;
}
EXPORT CUresult cuEventRecord(CUevent event, CUstream stream) {
  FAKE_IN_CONTEXT("cuEventRecord")
  if (!knownStream(stream))
    return INVALID_HANDLE;
  std::lock_guard<std::mutex> lock(mutex);
  return events.count(event) ? SUCCESS : INVALID_HANDLE;
}
EXPORT CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned) {
  FAKE_IN_CONTEXT("cuStreamWaitEvent")
  if (!knownStream(stream))
    return INVALID_HANDLE;
  std::lock_guard<std::mutex> lock(mutex);
  return events.count(event) ? SUCCESS : INVALID_HANDLE;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) {
  FAKE_CALL("cuMemAlloc")
  return allocate(p, bytes);
}
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t bytes, unsigned) {
  FAKE_CALL("cuMemAllocManaged")
  return allocate(p, bytes);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t bytes, CUstream stream) {
  FAKE_CALL("cuMemAllocAsync")
  if (envInt("MOERT_FAKE_CUDA_POOLS", 1) == 0)
    return 801; // CUDA_ERROR_NOT_SUPPORTED
  if (!knownStream(stream))
    return INVALID_HANDLE;
  return allocate(p, bytes);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
  FAKE_CALL("cuMemFree")
  return release(p);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream stream) {
  FAKE_CALL("cuMemFreeAsync")
  if (!knownStream(stream))
    return INVALID_HANDLE;
  return release(p);
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src,
                                size_t bytes) {
  FAKE_IN_CONTEXT("cuMemcpyHtoD")
  if (!isDevice(dst, bytes))
    return INVALID_VALUE;
  std::memcpy(reinterpret_cast<void *>(uintptr_t(dst)), src, bytes);
  return SUCCESS;
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src,
                                     size_t bytes, CUstream stream) {
  FAKE_IN_CONTEXT("cuMemcpyHtoDAsync")
  if (!isDevice(dst, bytes) || !knownStream(stream))
    return INVALID_VALUE;
  std::memcpy(reinterpret_cast<void *>(uintptr_t(dst)), src, bytes);
  return SUCCESS;
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes,
                                     CUstream stream) {
  FAKE_IN_CONTEXT("cuMemcpyDtoHAsync")
  if (!isDevice(src, bytes) || !knownStream(stream))
    return INVALID_VALUE;
  std::memcpy(dst, reinterpret_cast<void *>(uintptr_t(src)), bytes);
  return SUCCESS;
}
// Unified addressing: either side may be host or device memory.
EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                              CUstream stream) {
  FAKE_IN_CONTEXT("cuMemcpyAsync")
  if (!knownStream(stream))
    return INVALID_HANDLE;
  std::memcpy(reinterpret_cast<void *>(uintptr_t(dst)),
              reinterpret_cast<void *>(uintptr_t(src)), bytes);
  return SUCCESS;
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t count,
                                 CUstream stream) {
  FAKE_IN_CONTEXT("cuMemsetD32Async")
  if (!isDevice(dst, count * 4) || !knownStream(stream))
    return INVALID_VALUE;
  auto *p = reinterpret_cast<uint32_t *>(uintptr_t(dst));
  for (size_t i = 0; i < count; ++i)
    p[i] = value;
  return SUCCESS;
}
EXPORT CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short value,
                                 size_t count, CUstream stream) {
  FAKE_IN_CONTEXT("cuMemsetD16Async")
  if (!isDevice(dst, count * 2) || !knownStream(stream))
    return INVALID_VALUE;
  auto *p = reinterpret_cast<uint16_t *>(uintptr_t(dst));
  for (size_t i = 0; i < count; ++i)
    p[i] = value;
  return SUCCESS;
}

EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  FAKE_IN_CONTEXT("cuModuleLoadData")
  // A real fatbinary (magic 0xba55ed50) loads as a module without kernels
  // when MOERT_FAKE_CUDA_IMAGES=fatbinary.
  const uint32_t fatbinMagic = 0xba55ed50;
  bool fatbin =
      image && std::getenv("MOERT_FAKE_CUDA_IMAGES") &&
      std::string(std::getenv("MOERT_FAKE_CUDA_IMAGES")) == "fatbinary" &&
      !std::memcmp(image, &fatbinMagic, sizeof(fatbinMagic));
  if (!fatbin &&
      (!image || std::memcmp(image, kFakeCudaMagic, sizeof(kFakeCudaMagic))))
    return INVALID_IMAGE;
  std::lock_guard<std::mutex> lock(mutex);
  auto *m =
      new Module{fatbin ? nullptr : static_cast<const FakeCudaBinary *>(image)};
  modules.insert(m);
  *module = reinterpret_cast<CUmodule>(m);
  return SUCCESS;
}
EXPORT CUresult cuModuleUnload(CUmodule module) {
  FAKE_IN_CONTEXT("cuModuleUnload")
  std::lock_guard<std::mutex> lock(mutex);
  auto *m = reinterpret_cast<Module *>(module);
  if (!modules.erase(m))
    return INVALID_HANDLE;
  // A kernel's attributes go with its module; a module loaded again starts
  // from the defaults (the fake's kernels are the binary's, shared by the
  // modules loaded from it).
  for (int i = 0; m->binary && i < m->binary->count; ++i)
    sharedAllowed.erase(reinterpret_cast<CUfunction>(
        const_cast<FakeCudaKernel *>(&m->binary->kernels[i])));
  delete m;
  return SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(CUfunction *function, CUmodule module,
                                    const char *name) {
  FAKE_CALL("cuModuleGetFunction")
  std::lock_guard<std::mutex> lock(mutex);
  auto *m = reinterpret_cast<Module *>(module);
  if (!modules.count(m))
    return INVALID_HANDLE;
  for (int i = 0; m->binary && i < m->binary->count; ++i)
    if (!std::strcmp(m->binary->kernels[i].name, name))
      return *function = reinterpret_cast<CUfunction>(
                 const_cast<FakeCudaKernel *>(&m->binary->kernels[i])),
             SUCCESS;
  return NOT_FOUND;
}
namespace {
/// A launch the driver accepted the call of: runs the kernel.
CUresult runKernel(CUfunction function, unsigned gx, unsigned gy, unsigned gz,
                   unsigned bx, unsigned by, unsigned bz, unsigned shared,
                   CUstream stream, void **params) {
  if (!function || !gx || !gy || !gz || !bx || !by || !bz)
    return INVALID_VALUE;
  if (!knownStream(stream))
    return INVALID_HANDLE;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto allowed = sharedAllowed.find(function);
    if (shared > (allowed == sharedAllowed.end() ? kSharedWithoutOptIn
                                                 : allowed->second))
      return INVALID_VALUE;
    ++launches;
    lastStream = stream;
    lastGridX = gx;
    lastSharedBytes = shared;
  }
  reinterpret_cast<FakeCudaKernel *>(function)->run(params);
  return SUCCESS;
}
} // namespace

EXPORT CUresult cuLaunchKernel(CUfunction function, unsigned gx, unsigned gy,
                               unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, unsigned shared, CUstream stream,
                               void **params, void **) {
  FAKE_IN_CONTEXT("cuLaunchKernel")
  return runKernel(function, gx, gy, gz, bx, by, bz, shared, stream, params);
}
EXPORT CUresult cuLaunchCooperativeKernel(CUfunction function, unsigned gx,
                                          unsigned gy, unsigned gz, unsigned bx,
                                          unsigned by, unsigned bz,
                                          unsigned shared, CUstream stream,
                                          void **params) {
  FAKE_IN_CONTEXT("cuLaunchCooperativeKernel")
  // The driver refuses a grid that cannot be resident all at once.
  if (gx * gy * gz > unsigned(envInt("MOERT_FAKE_CUDA_SMS", 132) *
                              envInt("MOERT_FAKE_CUDA_BLOCKS_PER_SM", 2)))
    return COOPERATIVE_LAUNCH_TOO_LARGE;
  if (CUresult r =
          runKernel(function, gx, gy, gz, bx, by, bz, shared, stream, params))
    return r;
  std::lock_guard<std::mutex> lock(mutex);
  ++cooperativeLaunches;
  return SUCCESS;
}
#ifndef FAKE_CUDA_WITHOUT_TENSOR_MAPS
EXPORT CUresult cuTensorMapEncodeTiled(void *map, int dataType, uint32_t rank,
                                       void *address, const uint64_t *dims,
                                       const uint64_t *strides,
                                       const uint32_t *box,
                                       const uint32_t *elementStrides,
                                       int interleave, int swizzle, int l2,
                                       int oobFill) {
  // A host function: no context needed.
  FAKE_CALL("cuTensorMapEncodeTiled")
  constexpr int kSwizzle128B = 3, kBF16Bytes = 2;
  if (!map || rank != 3 || uintptr_t(address) % 16 || swizzle != kSwizzle128B ||
      box[0] * kBF16Bytes > 128)
    return INVALID_VALUE;
  for (uint32_t i = 0; i + 1 < rank; ++i)
    if (strides[i] % 16)
      return INVALID_VALUE;
  for (uint32_t i = 0; i < rank; ++i)
    if (box[i] == 0 || box[i] > 256 || elementStrides[i] != 1)
      return INVALID_VALUE;
  FakeCudaTensorMap fields = {uintptr_t(address),
                              {dims[0], dims[1], dims[2]},
                              {strides[0], strides[1]},
                              {box[0], box[1], box[2]},
                              dataType,
                              int(rank),
                              swizzle};
  std::memset(map, 0, 128);
  std::memcpy(map, &fields, sizeof(fields));
  std::lock_guard<std::mutex> lock(mutex);
  ++tensorMapsEncoded;
  return SUCCESS;
}
#endif
EXPORT CUresult cuFuncSetAttribute(CUfunction function, int attribute,
                                   int value) {
  FAKE_IN_CONTEXT("cuFuncSetAttribute")
  constexpr int kMaxDynamicSharedSizeBytes = 8;
  if (!function || attribute != kMaxDynamicSharedSizeBytes || value < 0 ||
      unsigned(value) > kSharedOptInLimit)
    return INVALID_VALUE;
  std::lock_guard<std::mutex> lock(mutex);
  sharedAllowed[function] = unsigned(value);
  ++sharedOptIns;
  return SUCCESS;
}
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks,
                                                            CUfunction function,
                                                            int blockSize,
                                                            size_t) {
  FAKE_IN_CONTEXT("cuOccupancyMaxActiveBlocksPerMultiprocessor")
  if (!function || blockSize <= 0)
    return INVALID_VALUE;
  *blocks = envInt("MOERT_FAKE_CUDA_BLOCKS_PER_SM", 2);
  return SUCCESS;
}
