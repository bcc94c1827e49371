//===- CudaBackend.cpp - device "cuda": contexts, models, runs ------------===//
#include "CudaBackend.h"
#include "moert/GpuRuntime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <tuple>

using namespace moert::cuda;

namespace {
llvm::Error failure(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

CUdeviceptr devicePointer(const void *p) {
  return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}
void *hostView(CUdeviceptr p) {
  return reinterpret_cast<void *>(static_cast<uintptr_t>(p));
}

/// Device memory for one run: stream-ordered where the device has the
/// allocator, else plain (cuMemFree synchronises, so both are safe).
CUresult allocate(const Device &dev, CUdeviceptr *p, size_t bytes,
                  CUstream stream, const char *&call) {
  const Driver &drv = dev.driver();
  if (dev.hasAsyncAllocator()) {
    call = "cuMemAllocAsync";
    return drv.cuMemAllocAsync(p, bytes, stream);
  }
  call = "cuMemAlloc";
  return drv.cuMemAlloc(p, bytes);
}
CUresult release(const Device &dev, CUdeviceptr p, CUstream stream,
                 const char *&call) {
  const Driver &drv = dev.driver();
  if (dev.hasAsyncAllocator()) {
    call = "cuMemFreeAsync";
    return drv.cuMemFreeAsync(p, stream);
  }
  call = "cuMemFree";
  return drv.cuMemFree(p);
}

/// What the mgpu* functions act in: set by DeviceModel::run on its thread.
bool environmentFlag(const char *variable) {
  const char *v = std::getenv(variable);
  return v && *v && std::string(v) != "0";
}

struct LaunchScope {
  DeviceModel &model;
  CUstream stream;
  std::string error;           ///< the first failure
  std::vector<void *> managed; ///< host-shared allocations (cuMemFree)
  /// Debugging and profiling aids, read once per run (slow when set):
  /// MOERT_CUDA_SYNC_EACH_LAUNCH waits after every launch, so that a fault
  /// inside a kernel is reported with that kernel's name instead of at the
  /// next synchronisation; MOERT_CUDA_PROFILE does too and times each
  /// launch to its completion.
  bool profile = environmentFlag("MOERT_CUDA_PROFILE");
  bool syncEachLaunch =
      profile || environmentFlag("MOERT_CUDA_SYNC_EACH_LAUNCH");

  const Device &device() const { return model.device(); }
  const Driver &driver() const { return model.device().driver(); }
  /// Records the first failure; true on success.
  bool check(CUresult result, llvm::function_ref<std::string()> call) {
    if (result == CUDA_SUCCESS)
      return true;
    if (error.empty())
      error = driver().failure(call(), result);
    return false;
  }
  void fail(std::string message) {
    if (error.empty())
      error = std::move(message);
  }
};
thread_local LaunchScope *activeScope = nullptr;

/// The scope, if calls are to act: inside one and before its first error.
LaunchScope *acting() {
  return activeScope && activeScope->error.empty() ? activeScope : nullptr;
}

class ScopeGuard {
public:
  explicit ScopeGuard(LaunchScope &scope) : previous(activeScope) {
    activeScope = &scope;
  }
  ~ScopeGuard() { activeScope = previous; }

private:
  LaunchScope *previous;
};
} // namespace

//===----------------------------------------------------------------------===//
// Device
//===----------------------------------------------------------------------===//

std::unique_ptr<Device> Device::create(std::string &problem) {
  const Driver *drv = loadDriver(problem);
  if (!drv)
    return nullptr;
  if (CUresult r = drv->cuInit(0)) {
    problem =
        "the CUDA driver failed to initialise: " + drv->failure("cuInit", r);
    return nullptr;
  }
  int count = 0;
  if (CUresult r = drv->cuDeviceGetCount(&count)) {
    problem = drv->failure("cuDeviceGetCount", r);
    return nullptr;
  }
  if (count == 0) {
    problem = "the CUDA driver reports no device";
    return nullptr;
  }
  std::unique_ptr<Device> dev(new Device);
  dev->drv = drv;
  if (CUresult r = drv->cuDeviceGet(&dev->device, 0)) {
    problem = drv->failure("cuDeviceGet(0)", r);
    return nullptr;
  }
  char name[256] = {};
  if (drv->cuDeviceGetName(name, sizeof(name) - 1, dev->device) == 0)
    dev->name = name;
  int major = 0, minor = 0, pools = 0;
  drv->cuDeviceGetAttribute(
      &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev->device);
  drv->cuDeviceGetAttribute(
      &minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev->device);
  dev->capability = major * 10 + minor;
  int cooperative = 0;
  drv->cuDeviceGetAttribute(&dev->multiprocessors,
                            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                            dev->device);
  if (drv->cuDeviceGetAttribute(&cooperative,
                                CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH,
                                dev->device) == CUDA_SUCCESS)
    dev->cooperativeLaunch = cooperative != 0;
  if (drv->cuMemAllocAsync &&
      drv->cuDeviceGetAttribute(&pools,
                                CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED,
                                dev->device) == CUDA_SUCCESS)
    dev->asyncAllocator = pools != 0;
  if (CUresult r = drv->cuDevicePrimaryCtxRetain(&dev->ctx, dev->device)) {
    dev->ctx = nullptr;
    problem =
        drv->failure("cuDevicePrimaryCtxRetain", r) + " on " + dev->describe();
    return nullptr;
  }
  CurrentContext current(*dev);
  if (!current.problem().empty()) {
    problem = current.problem();
    return nullptr;
  }
  if (CUresult r =
          drv->cuStreamCreate(&dev->ownStream, CU_STREAM_NON_BLOCKING)) {
    dev->ownStream = nullptr;
    problem = drv->failure("cuStreamCreate", r) + " on " + dev->describe();
    return nullptr;
  }
  return dev;
}

Device::~Device() {
  if (ownStream) {
    CurrentContext current(*this);
    if (current.problem().empty())
      drv->cuStreamDestroy(ownStream);
  }
  if (ctx)
    drv->cuDevicePrimaryCtxRelease(device);
}

std::string Device::describe() const {
  std::string text = "sm_" + std::to_string(capability);
  return name.empty() ? text : text + ", " + name;
}

CurrentContext::CurrentContext(const Device &device) : device(device) {
  if (CUresult r = device.driver().cuCtxPushCurrent(device.context()))
    error = device.driver().failure("cuCtxPushCurrent", r);
  else
    pushed = true;
}

CurrentContext::~CurrentContext() {
  if (pushed)
    device.driver().cuCtxPopCurrent(nullptr);
}

//===----------------------------------------------------------------------===//
// DeviceModel
//===----------------------------------------------------------------------===//

std::vector<size_t> moert::cuda::rankBuilds(int capability,
                                            llvm::ArrayRef<std::string> chips) {
  // (tier, chip number, arch-specific) per build; tier 0 runs the cubin, 1
  // compiles the PTX, 2 is a spelling this cannot judge.
  struct Candidate {
    int tier, arch;
    bool specific;
    size_t index;
  };
  std::vector<Candidate> candidates;
  for (size_t i = 0; i < chips.size(); ++i) {
    llvm::StringRef chip = chips[i];
    int arch = 0;
    bool specific = chip.consume_back("a");
    if (!chip.consume_front("sm_") || chip.getAsInteger(10, arch)) {
      candidates.push_back({2, 0, false, i});
      continue;
    }
    if (specific ? arch == capability
                 : arch / 10 == capability / 10 && arch <= capability)
      candidates.push_back({0, arch, specific, i});
    else if (!specific && arch < capability)
      candidates.push_back({1, arch, false, i});
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate &a, const Candidate &b) {
                     return std::tie(a.tier, b.arch, b.specific) <
                            std::tie(b.tier, a.arch, a.specific);
                   });
  std::vector<size_t> order;
  for (const Candidate &c : candidates)
    order.push_back(c.index);
  return order;
}

llvm::Expected<std::unique_ptr<DeviceModel>>
DeviceModel::load(Device &device, llvm::ArrayRef<KernelBuild> builds) {
  const Driver &drv = device.driver();
  CurrentContext current(device);
  if (!current.problem().empty())
    return failure(current.problem());
  std::string archs;
  std::vector<std::string> chips;
  for (size_t i = 0; i < builds.size(); ++i) {
    archs += (i == 0                   ? ""
              : i + 1 == builds.size() ? " and "
                                       : ", ") +
             builds[i].chip;
    chips.push_back(builds[i].chip);
  }
  std::vector<size_t> order = rankBuilds(device.computeCapability(), chips);
  if (order.empty())
    return failure("the model's kernels have no build for this GPU (" +
                   device.describe() + "); it was compiled for " + archs +
                   ": compile it with moe-compile --chip sm_" +
                   std::to_string(device.computeCapability()));
  std::unique_ptr<DeviceModel> model(new DeviceModel(device));
  CUresult r = CUDA_SUCCESS;
  for (size_t index : order) {
    r = drv.cuModuleLoadData(&model->mod, builds[index].binary);
    if (r == CUDA_SUCCESS) {
      model->build = index;
      return std::move(model);
    }
    model->mod = nullptr;
    if (r != CUDA_ERROR_NO_BINARY_FOR_GPU)
      break;
  }
  std::string call = drv.failure("cuModuleLoadData", r);
  if (r == CUDA_ERROR_NO_BINARY_FOR_GPU)
    return failure("the model's kernels have no binary for this GPU (" +
                   device.describe() + "); it was compiled for " + archs +
                   " (" + call + ")");
  if (r == CUDA_ERROR_UNSUPPORTED_PTX_VERSION) {
    int version = 0;
    drv.cuDriverGetVersion(&version);
    return failure("the model's PTX is newer than this NVIDIA driver "
                   "supports (CUDA " +
                   std::to_string(version / 1000) + "." +
                   std::to_string(version % 1000 / 10) +
                   "); update the driver (" + call + ")");
  }
  return failure("cannot load the model's kernels on " + device.describe() +
                 ": " + call);
}

DeviceModel::~DeviceModel() {
  if (!profile.empty()) {
    // Kernels by total time, as MOERT_CUDA_PROFILE asked for.
    std::vector<std::pair<std::string, std::pair<int64_t, double>>> rows;
    double total = 0;
    for (const auto &entry : profile) {
      rows.emplace_back(entry.getKey().str(), entry.getValue());
      total += entry.getValue().second;
    }
    std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) {
      return a.second.second > b.second.second;
    });
    std::fprintf(stderr,
                 "moert profile (MOERT_CUDA_PROFILE; each launch timed on "
                 "the host to its completion):\n%-32s %9s %12s %7s\n",
                 "kernel", "launches", "total ms", "share");
    for (const auto &[name, stats] : rows)
      std::fprintf(stderr, "%-32s %9lld %12.3f %6.1f%%\n", name.c_str(),
                   static_cast<long long>(stats.first), stats.second * 1e3,
                   total > 0 ? 100.0 * stats.second / total : 0.0);
  }
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return; // nothing can be freed without the context
  for (void *p : weightPointers)
    if (p)
      drv.cuMemFree(devicePointer(p));
  for (const auto &entry : tensorMaps)
    drv.cuMemFree(entry.second);
  if (mod)
    drv.cuModuleUnload(mod);
}

llvm::Error DeviceModel::addWeight(const std::string &name,
                                   llvm::ArrayRef<uint8_t> data) {
  size_t bytes = data.size();
  if (bytes == 0) {
    weightPointers.push_back(nullptr);
    return llvm::Error::success();
  }
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return failure(current.problem());
  CUdeviceptr p = 0;
  auto fail = [&](const char *call, CUresult r) {
    return failure("cannot copy weight '" + name + "' (" +
                   std::to_string(bytes) + " bytes) to " + dev.describe() +
                   ": " + drv.failure(call, r));
  };
  if (CUresult r = drv.cuMemAlloc(&p, bytes))
    return fail("cuMemAlloc", r);
  weightPointers.push_back(hostView(p));
  if (CUresult r = drv.cuMemcpyHtoD(p, data.data(), bytes))
    return fail("cuMemcpyHtoD", r);
  return llvm::Error::success();
}

llvm::Error DeviceModel::finishLoading() {
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return failure(current.problem());
  // The copies ran on the legacy default stream.
  if (CUresult r = drv.cuStreamSynchronize(nullptr))
    return failure("cannot copy the weights to " + dev.describe() + ": " +
                   drv.failure("cuStreamSynchronize", r));
  return llvm::Error::success();
}

CUfunction DeviceModel::function(const char *name, std::string &error) {
  std::lock_guard<std::mutex> lock(functionsMutex);
  auto it = functions.find(name);
  if (it != functions.end())
    return it->second;
  const Driver &drv = dev.driver();
  CUfunction f = nullptr;
  if (CUresult r = drv.cuModuleGetFunction(&f, mod, name)) {
    error = drv.failure(std::string("cuModuleGetFunction('") + name + "')", r);
    return nullptr;
  }
  functions[name] = f;
  if (llvm::StringRef(name).starts_with(kResidentKernelPrefix))
    residentLoopKernels.insert(f);
  return f;
}

bool DeviceModel::isResidentLoopKernel(CUfunction function) {
  std::lock_guard<std::mutex> lock(functionsMutex);
  return residentLoopKernels.contains(function);
}

CUresult DeviceModel::allowDynamicShared(CUfunction function, int32_t bytes) {
  // What any kernel may take without opting in (the CUDA Programming
  // Guide's 48 KB).
  constexpr int32_t kWithoutOptIn = 48 * 1024;
  if (bytes <= kWithoutOptIn)
    return CUDA_SUCCESS;
  std::lock_guard<std::mutex> lock(functionsMutex);
  int32_t &allowed = dynamicSharedAllowed[function];
  if (bytes <= allowed)
    return CUDA_SUCCESS;
  CUresult r = dev.driver().cuFuncSetAttribute(
      function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
  if (r == CUDA_SUCCESS)
    allowed = bytes;
  return r;
}

void DeviceModel::addToProfile(CUfunction function, double seconds) {
  std::string name = functionName(function);
  std::lock_guard<std::mutex> lock(functionsMutex);
  auto &stats = profile[name];
  ++stats.first;
  stats.second += seconds;
}

std::string DeviceModel::functionName(CUfunction function) {
  std::lock_guard<std::mutex> lock(functionsMutex);
  for (const auto &entry : functions)
    if (entry.second == function)
      return entry.first().str();
  return "?";
}

llvm::Expected<void *>
DeviceModel::allocatePersistent(size_t bytes, const llvm::Twine &what) {
  if (bytes == 0)
    return nullptr;
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return failure("cannot allocate " + what + " on " + dev.describe() + ": " +
                   current.problem());
  CUdeviceptr p = 0;
  if (CUresult r = drv.cuMemAlloc(&p, bytes))
    return failure(
        "cannot allocate " + what + " on " + dev.describe() + ": " +
        drv.failure("cuMemAlloc of " + std::to_string(bytes) + " bytes", r));
  return hostView(p);
}

void *DeviceModel::tensorMap(void *base, const uint64_t (&dims)[3],
                             const uint32_t (&box)[2], std::string &error) {
  // Every run asks again for the maps of the same weights: a hit costs a
  // lookup, neither an encode nor a message.
  std::array<uint64_t, 6> key = {uint64_t(reinterpret_cast<uintptr_t>(base)),
                                 dims[0],
                                 dims[1],
                                 dims[2],
                                 box[0],
                                 box[1]};
  std::lock_guard<std::mutex> lock(functionsMutex);
  if (auto it = tensorMaps.find(key); it != tensorMaps.end())
    return hostView(it->second);

  const Driver &drv = dev.driver();
  std::string what = "the tensor map of a " + std::to_string(dims[0]) + "x" +
                     std::to_string(dims[1]) + "x" + std::to_string(dims[2]) +
                     " bf16 tensor (innermost first)";
  if (!drv.cuTensorMapEncodeTiled) {
    error = "the driver lacks cuTensorMapEncodeTiled (CUDA 12.0 or later), "
            "which kernels compiled with --wgmma need for " +
            what;
    return nullptr;
  }
  // Strides in bytes of dimensions 1 and 2 (dimension 0 is contiguous).
  const uint64_t strides[2] = {dims[0] * 2, dims[0] * dims[1] * 2};
  const uint32_t boxDims[3] = {box[0], box[1], 1};
  const uint32_t elementStrides[3] = {1, 1, 1};
  CUtensorMap map;
  if (CUresult r = drv.cuTensorMapEncodeTiled(
          &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, base, dims, strides,
          boxDims, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)) {
    error = drv.failure("cuTensorMapEncodeTiled of " + what, r);
    return nullptr;
  }
  // Kernels read the map from global memory, once copied per map. A copy
  // from pageable memory returns once the bytes are staged, not landed, and
  // the run's stream does not wait for the legacy stream it runs on: wait
  // for it here, before any launch can see the map.
  CUdeviceptr p = 0;
  CUresult r = drv.cuMemAlloc(&p, sizeof(CUtensorMap));
  if (r == CUDA_SUCCESS) {
    r = drv.cuMemcpyHtoD(p, &map, sizeof(CUtensorMap));
    if (r == CUDA_SUCCESS)
      r = drv.cuStreamSynchronize(nullptr);
    if (r != CUDA_SUCCESS)
      drv.cuMemFree(p);
  }
  if (r != CUDA_SUCCESS) {
    error = drv.failure("copying " + what + " to the device", r);
    return nullptr;
  }
  tensorMaps.emplace(key, p);
  return hostView(p);
}

void DeviceModel::freePersistent(llvm::ArrayRef<void *> pointers) {
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return; // nothing can be freed without the context
  for (void *p : pointers)
    if (p)
      drv.cuMemFree(devicePointer(p));
}

llvm::Error DeviceModel::run(llvm::MutableArrayRef<Buffer> buffers,
                             llvm::function_ref<void()> entry,
                             llvm::StringRef caller) {
  const Driver &drv = dev.driver();
  CurrentContext current(dev);
  if (!current.problem().empty())
    return failure(caller + " on cuda: " + current.problem());
  LaunchScope scope{*this, dev.stream(), {}, {}};
  CUstream stream = scope.stream;
  // The first failure; later steps still synchronise and free.
  std::string error;
  auto check = [&](CUresult r, llvm::function_ref<std::string()> call) {
    if (r != CUDA_SUCCESS && error.empty())
      error = drv.failure(call(), r);
    return r == CUDA_SUCCESS;
  };
  for (Buffer &b : buffers) {
    b.device = nullptr;
    if (!error.empty() || b.bytes == 0)
      continue;
    CUdeviceptr p = 0;
    const char *call;
    if (!check(allocate(dev, &p, b.bytes, stream, call), [&] {
          return std::string(call) + " of " + std::to_string(b.bytes) +
                 " bytes";
        }))
      continue;
    b.device = hostView(p);
    if (b.copyIn)
      check(drv.cuMemcpyHtoDAsync(p, b.host, b.bytes, stream),
            [] { return "cuMemcpyHtoDAsync"; });
  }
  if (error.empty()) {
    ScopeGuard guard(scope);
    entry();
    error = scope.error;
  }
  if (error.empty())
    for (Buffer &b : buffers)
      if (b.copyOut && b.device)
        check(drv.cuMemcpyDtoHAsync(b.host, devicePointer(b.device), b.bytes,
                                    stream),
              [] { return "cuMemcpyDtoHAsync"; });
  // Kernel faults surface here, asynchronously.
  check(drv.cuStreamSynchronize(stream),
        [] { return "cuStreamSynchronize after the model's kernels"; });
  for (Buffer &b : buffers)
    if (b.device) {
      const char *call;
      check(release(dev, devicePointer(b.device), stream, call),
            [&] { return std::string(call); });
      b.device = nullptr;
    }
  if (!error.empty())
    return failure(caller + " on cuda (" + dev.describe() + "): " + error);
  return llvm::Error::success();
}

//===----------------------------------------------------------------------===//
// MLIR's GPU runtime ABI
//===----------------------------------------------------------------------===//

extern "C" {
void *mgpuStreamCreate() {
  LaunchScope *s = acting();
  return s ? s->stream : nullptr;
}

// The run's stream belongs to the context or the user, never to the model.
void mgpuStreamDestroy(void *) {}

void mgpuStreamSynchronize(void *stream) {
  if (LaunchScope *s = acting())
    s->check(s->driver().cuStreamSynchronize(static_cast<CUstream>(stream)),
             [] { return "cuStreamSynchronize"; });
}

void mgpuStreamWaitEvent(void *stream, void *event) {
  if (LaunchScope *s = acting(); s && event)
    s->check(s->driver().cuStreamWaitEvent(static_cast<CUstream>(stream),
                                           static_cast<CUevent>(event), 0),
             [] { return "cuStreamWaitEvent"; });
}

void *mgpuEventCreate() {
  LaunchScope *s = acting();
  CUevent event = nullptr;
  if (!s ||
      !s->check(s->driver().cuEventCreate(&event, CU_EVENT_DISABLE_TIMING),
                [] { return "cuEventCreate"; }))
    return nullptr;
  return event;
}

void mgpuEventDestroy(void *event) {
  // Runs after an error too: the event is valid and would leak.
  if (activeScope && event)
    activeScope->check(
        activeScope->driver().cuEventDestroy(static_cast<CUevent>(event)),
        [] { return "cuEventDestroy"; });
}

void mgpuEventSynchronize(void *event) {
  if (LaunchScope *s = acting(); s && event)
    s->check(s->driver().cuEventSynchronize(static_cast<CUevent>(event)),
             [] { return "cuEventSynchronize"; });
}

void mgpuEventRecord(void *event, void *stream) {
  if (LaunchScope *s = acting(); s && event)
    s->check(s->driver().cuEventRecord(static_cast<CUevent>(event),
                                       static_cast<CUstream>(stream)),
             [] { return "cuEventRecord"; });
}

void *mgpuMemAlloc(uint64_t sizeBytes, void *stream, bool isHostShared) {
  LaunchScope *s = acting();
  if (!s || sizeBytes == 0)
    return nullptr;
  CUdeviceptr p = 0;
  const char *call = "cuMemAllocManaged";
  CUresult r =
      isHostShared
          ? s->driver().cuMemAllocManaged(&p, sizeBytes, CU_MEM_ATTACH_GLOBAL)
          : allocate(s->device(), &p, sizeBytes, static_cast<CUstream>(stream),
                     call);
  if (!s->check(r, [&] {
        return std::string(call) + " of " + std::to_string(sizeBytes) +
               " bytes";
      }))
    return nullptr;
  if (isHostShared)
    s->managed.push_back(hostView(p));
  return hostView(p);
}

void mgpuMemFree(void *ptr, void *stream) {
  // Runs after an error too: the pointer came from a successful allocation,
  // and a run that fails must not leak device memory.
  LaunchScope *s = activeScope;
  if (!s || !ptr)
    return;
  const char *call = "cuMemFree";
  CUresult r;
  auto managed = llvm::find(s->managed, ptr);
  if (managed != s->managed.end()) {
    s->managed.erase(managed);
    r = s->driver().cuMemFree(devicePointer(ptr));
  } else {
    r = release(s->device(), devicePointer(ptr), static_cast<CUstream>(stream),
                call);
  }
  s->check(r, [&] { return std::string(call); });
}

void mgpuMemcpy(void *dst, void *src, size_t sizeBytes, void *stream) {
  if (LaunchScope *s = acting(); s && sizeBytes)
    s->check(
        s->driver().cuMemcpyAsync(devicePointer(dst), devicePointer(src),
                                  sizeBytes, static_cast<CUstream>(stream)),
        [&] {
          return "cuMemcpyAsync of " + std::to_string(sizeBytes) + " bytes";
        });
}

void mgpuMemset32(void *dst, unsigned int value, size_t count, void *stream) {
  if (LaunchScope *s = acting(); s && count)
    s->check(s->driver().cuMemsetD32Async(devicePointer(dst), value, count,
                                          static_cast<CUstream>(stream)),
             [] { return "cuMemsetD32Async"; });
}

void mgpuMemset16(void *dst, unsigned short value, size_t count, void *stream) {
  if (LaunchScope *s = acting(); s && count)
    s->check(s->driver().cuMemsetD16Async(devicePointer(dst), value, count,
                                          static_cast<CUstream>(stream)),
             [] { return "cuMemsetD16Async"; });
}

// moert_model_load has loaded the model's one module; code that loads it
// again gets that one, and unloading is the runtime's business.
void *mgpuModuleLoad(void *, size_t) {
  LaunchScope *s = acting();
  return s ? s->model.module() : nullptr;
}
void *mgpuModuleLoadJIT(void *, int) {
  LaunchScope *s = acting();
  return s ? s->model.module() : nullptr;
}
void mgpuModuleUnload(void *) {}

void *mgpuModuleGetFunction(void *, const char *name) {
  LaunchScope *s = acting();
  if (!s || !name)
    return nullptr;
  std::string error;
  CUfunction f = s->model.function(name, error);
  if (!f)
    s->fail(std::move(error));
  return f;
}

void mgpuLaunchKernel(void *function, intptr_t gridX, intptr_t gridY,
                      intptr_t gridZ, intptr_t blockX, intptr_t blockY,
                      intptr_t blockZ, int32_t smem, void *stream,
                      void **params, void **extra, size_t) {
  LaunchScope *s = acting();
  if (!s || !function)
    return;
  // The host code launches the forms of a GEMM side by side, the ones that
  // get no rows with an empty grid: no work, and no launch (the driver
  // would reject it, and each launch costs microseconds).
  if (gridX == 0 || gridY == 0 || gridZ == 0)
    return;
  auto f = static_cast<CUfunction>(function);
  // For messages only: the name is a search of the model's functions.
  auto kernel = [&] {
    return "'" + s->model.functionName(f) + "' (grid " + std::to_string(gridX) +
           "x" + std::to_string(gridY) + "x" + std::to_string(gridZ) +
           ", block " + std::to_string(blockX) + "x" + std::to_string(blockY) +
           "x" + std::to_string(blockZ) + ", " + std::to_string(smem) +
           " bytes shared)";
  };
  if (!s->check(s->model.allowDynamicShared(f, smem), [&] {
        return "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) of " +
               kernel();
      }))
    return;
  auto start = s->profile ? std::chrono::steady_clock::now()
                          : std::chrono::steady_clock::time_point();
  if (s->model.isResidentLoopKernel(f)) {
    // A resident loop kernel waits at grid barriers for all its blocks: all
    // must run at once. A cooperative launch guarantees that (the driver
    // refuses one that cannot, rather than let it hang), with the grid
    // lowered to the blocks that fit.
    const Device &device = s->device();
    if (!device.canLaunchCooperatively())
      return s->fail("the resident loop kernel " + kernel() +
                     " needs a cooperative launch, which " + device.describe() +
                     " does not support (compile with --resident-loops=false)");
    int perMultiprocessor = 0;
    if (!s->check(s->driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(
                      &perMultiprocessor, f, int(blockX * blockY * blockZ),
                      size_t(smem)),
                  [&] {
                    return "cuOccupancyMaxActiveBlocksPerMultiprocessor of " +
                           kernel();
                  }))
      return;
    if (perMultiprocessor <= 0)
      return s->fail("the resident loop kernel " + kernel() +
                     " does not fit on one multiprocessor of " +
                     device.describe() +
                     " (its block needs more registers or shared memory)");
    if (device.multiprocessorCount() > 0)
      gridX = std::min<intptr_t>(gridX, intptr_t(perMultiprocessor) *
                                            device.multiprocessorCount());
    if (!s->check(s->driver().cuLaunchCooperativeKernel(
                      f, unsigned(gridX), unsigned(gridY), unsigned(gridZ),
                      unsigned(blockX), unsigned(blockY), unsigned(blockZ),
                      unsigned(smem), static_cast<CUstream>(stream), params),
                  [&] { return "cuLaunchCooperativeKernel of " + kernel(); }))
      return;
  } else if (!s->check(s->driver().cuLaunchKernel(
                           f, unsigned(gridX), unsigned(gridY), unsigned(gridZ),
                           unsigned(blockX), unsigned(blockY), unsigned(blockZ),
                           unsigned(smem), static_cast<CUstream>(stream),
                           params, extra),
                       [&] { return "cuLaunchKernel of " + kernel(); })) {
    return;
  }
  if (!s->syncEachLaunch)
    return;
  bool completed = s->check(
      s->driver().cuStreamSynchronize(static_cast<CUstream>(stream)), [&] {
        return "kernel " + kernel() +
               ", synchronised after its launch "
               "(MOERT_CUDA_SYNC_EACH_LAUNCH),";
      });
  if (completed && s->profile)
    s->model.addToProfile(f, std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - start)
                                 .count());
}

// The tensor map through which TMA loads tiles of a bf16 weight tensor
// (lib/Conversion/MoEToGPU/WarpgroupMma.h): dims innermost first, boxes of
// box0 x box1 elements.
void *moert_cuda_tensor_map_bf16_3d(void *base, int64_t dim0, int64_t dim1,
                                    int64_t dim2, int64_t box0, int64_t box1) {
  LaunchScope *s = acting();
  if (!s)
    return nullptr;
  const uint64_t dims[3] = {uint64_t(dim0), uint64_t(dim1), uint64_t(dim2)};
  const uint32_t box[2] = {uint32_t(box0), uint32_t(box1)};
  std::string error;
  void *map = s->model.tensorMap(base, dims, box, error);
  if (!map)
    s->fail(std::move(error));
  return map;
}
} // extern "C"

llvm::ArrayRef<RuntimeSymbol> moert::cuda::gpuRuntimeSymbols() {
#define MOERT_SYMBOL(f)                                                        \
  { #f, reinterpret_cast < void *>(&f) }
  static const RuntimeSymbol symbols[] = {
      MOERT_SYMBOL(mgpuStreamCreate),
      MOERT_SYMBOL(mgpuStreamDestroy),
      MOERT_SYMBOL(mgpuStreamSynchronize),
      MOERT_SYMBOL(mgpuStreamWaitEvent),
      MOERT_SYMBOL(mgpuEventCreate),
      MOERT_SYMBOL(mgpuEventDestroy),
      MOERT_SYMBOL(mgpuEventSynchronize),
      MOERT_SYMBOL(mgpuEventRecord),
      MOERT_SYMBOL(mgpuMemAlloc),
      MOERT_SYMBOL(mgpuMemFree),
      MOERT_SYMBOL(mgpuMemcpy),
      MOERT_SYMBOL(mgpuMemset32),
      MOERT_SYMBOL(mgpuMemset16),
      MOERT_SYMBOL(mgpuModuleLoad),
      MOERT_SYMBOL(mgpuModuleLoadJIT),
      MOERT_SYMBOL(mgpuModuleUnload),
      MOERT_SYMBOL(mgpuModuleGetFunction),
      MOERT_SYMBOL(mgpuLaunchKernel),
      MOERT_SYMBOL(moert_cuda_tensor_map_bf16_3d),
  };
#undef MOERT_SYMBOL
  return symbols;
}
