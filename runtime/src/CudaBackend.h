//===- CudaBackend.h - device "cuda": contexts, models, runs ----*- C++ -*-===//
//
// A CUDA model's host code (compiled by moe-compile --target cuda) calls
// MLIR's GPU runtime ABI (mgpuLaunchKernel, mgpuMemAlloc, ...), which libmoert
// defines in CudaBackend.cpp on the driver API. Those calls act in a
// thread-local launch scope that DeviceModel::run sets around the entry
// point (for moert_model_run and moert_session_forward alike): the model's
// module, the stream to launch on, and the first CUDA error, which the run
// then returns as its status.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDABACKEND_H
#define MOERT_CUDABACKEND_H

#include "CudaDriver.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/Error.h"

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace moert::cuda {
/// The CUDA side of a "cuda" context: device 0's primary context and a
/// non-blocking stream of its own.
class Device {
public:
  /// Creates it, or returns null and says exactly what is missing.
  static std::unique_ptr<Device> create(std::string &problem);
  ~Device();
  Device(const Device &) = delete;
  Device &operator=(const Device &) = delete;

  const Driver &driver() const { return *drv; }
  CUcontext context() const { return ctx; }
  /// The stream runs launch on: the user's, else the device's own.
  CUstream stream() const {
    CUstream user = userStream.load();
    return user ? user : ownStream;
  }
  void setStream(CUstream user) { userStream.store(user); }
  bool hasAsyncAllocator() const { return asyncAllocator; }
  /// e.g. "sm_90, NVIDIA H200".
  std::string describe() const;
  int computeCapability() const { return capability; }
  int multiprocessorCount() const { return multiprocessors; }
  /// Whether kernels can be launched cooperatively (all blocks at once).
  bool canLaunchCooperatively() const { return cooperativeLaunch; }

private:
  Device() = default;
  const Driver *drv = nullptr;
  CUdevice device = 0;
  CUcontext ctx = nullptr;
  CUstream ownStream = nullptr;
  std::atomic<CUstream> userStream{nullptr};
  std::string name;
  int capability = 0;
  int multiprocessors = 0;
  bool cooperativeLaunch = false;
  bool asyncAllocator = false;
};

/// Makes a device's context current on this thread while it lives.
class CurrentContext {
public:
  explicit CurrentContext(const Device &device);
  ~CurrentContext();
  /// Why the context could not be made current; empty if it is.
  const std::string &problem() const { return error; }

private:
  const Device &device;
  bool pushed = false;
  std::string error;
};

/// The builds of a model for `chips` ("sm_XY" or "sm_XYa") that can run on
/// a GPU of compute capability `capability` (10 * major + minor), best
/// first: those with a cubin for it, the newest chip first (sm_XYa is
/// arch-specific and runs on XY alone, sm_XY on every minor version from
/// XY), then those whose PTX the driver compiles for it (sm_XY below it),
/// the newest first. Chips not spelt sm_<digits>[a] come last, to be tried.
std::vector<size_t> rankBuilds(int capability,
                               llvm::ArrayRef<std::string> chips);

/// One chip's kernels of a model (a fatbinary, cubin or PTX).
struct KernelBuild {
  std::string chip;
  const void *binary;
};

/// A model's device side: its kernels' module, its weights in device memory
/// and the functions looked up so far.
class DeviceModel {
public:
  /// Loads the module of the build that fits the device best (rankBuilds),
  /// going on to the next if the driver finds nothing in one for this GPU.
  /// The error says what the builds were for when none fits.
  static llvm::Expected<std::unique_ptr<DeviceModel>>
  load(Device &device, llvm::ArrayRef<KernelBuild> builds);
  ~DeviceModel();
  DeviceModel(const DeviceModel &) = delete;
  DeviceModel &operator=(const DeviceModel &) = delete;

  /// Copies one weight (in manifest order) to device memory: its elements'
  /// bytes as they are (f32, or bf16 for a BF16 device_dtype).
  llvm::Error addWeight(const std::string &name, llvm::ArrayRef<uint8_t> bytes);
  /// Waits for the weight copies: a copy from pageable memory may still be
  /// in flight when it returns, and runs use streams that do not wait for it.
  llvm::Error finishLoading();
  llvm::ArrayRef<void *> weights() const { return weightPointers; }

  /// A host buffer of one run, mirrored in device memory for the run.
  struct Buffer {
    void *host;
    size_t bytes;
    bool copyIn, copyOut;
    void *device = nullptr; ///< set by run() before it calls `entry`
  };
  /// Allocates `buffers` on the device, copies the inputs in, calls `entry`
  /// in a launch scope on the device's stream, synchronises, copies the
  /// outputs back and frees the buffers. The error names the failing call,
  /// after "<caller> on cuda (<device>): ".
  llvm::Error run(llvm::MutableArrayRef<Buffer> buffers,
                  llvm::function_ref<void()> entry,
                  llvm::StringRef caller = "moert_model_run");

  /// Device memory that outlives runs (a session's KV caches): cuMemAlloc
  /// with the context current, left uninitialised; null for 0 bytes. The
  /// error names `what`, the call and the CUDA error.
  llvm::Expected<void *> allocatePersistent(size_t bytes,
                                            const llvm::Twine &what);
  /// Frees memory from allocatePersistent (null entries are skipped) with
  /// the context current. The caller has synchronised the runs using it.
  void freePersistent(llvm::ArrayRef<void *> pointers);

  /// The function `name` of the module (cached); null with `error` set.
  CUfunction function(const char *name, std::string &error);
  /// The name of a function returned by function(), for messages.
  std::string functionName(CUfunction function);
  /// Whether function() returned `function` for a resident loop kernel
  /// (named kResidentKernelPrefix...): decided once per function, not per
  /// launch.
  bool isResidentLoopKernel(CUfunction function);
  /// Lets `function` (from function()) be launched with `bytes` of dynamic
  /// shared memory: past the 48 KiB every kernel may take, the function
  /// must opt in first (once; later launches asking no more find it done).
  /// Returns the driver's cuFuncSetAttribute result.
  CUresult allowDynamicShared(CUfunction function, int32_t bytes);
  /// Adds one timed launch of `function` to the profile that
  /// MOERT_CUDA_PROFILE=1 prints when the model is freed.
  void addToProfile(CUfunction function, double seconds);
  /// A device copy of the tensor map of a bf16 tensor at `base` with
  /// `dims` (innermost first, contiguous) and boxes of `box` elements in its
  /// two inner dimensions, 128-byte swizzle: encoded and copied on first
  /// use, then kept for the model's life (its weights do not move, so later
  /// runs find it without encoding again). Null with `error` set on
  /// failure.
  void *tensorMap(void *base, const uint64_t (&dims)[3],
                  const uint32_t (&box)[2], std::string &error);
  Device &device() const { return dev; }
  CUmodule module() const { return mod; }
  /// Which of load()'s builds this is.
  size_t buildIndex() const { return build; }

private:
  explicit DeviceModel(Device &device) : dev(device) {}
  Device &dev;
  CUmodule mod = nullptr;
  size_t build = 0;
  std::vector<void *> weightPointers;
  std::mutex functionsMutex;
  llvm::StringMap<CUfunction> functions;
  llvm::DenseSet<CUfunction> residentLoopKernels;
  /// allowDynamicShared()'s opt-ins, by function (under functionsMutex).
  llvm::DenseMap<CUfunction, int32_t> dynamicSharedAllowed;
  /// tensorMap()'s device copies, by its arguments: base, dims and box
  /// (under functionsMutex).
  std::map<std::array<uint64_t, 6>, CUdeviceptr> tensorMaps;
  /// MOERT_CUDA_PROFILE: per kernel, launches and seconds (under
  /// functionsMutex).
  llvm::StringMap<std::pair<int64_t, double>> profile;
};
} // namespace moert::cuda

#endif // MOERT_CUDABACKEND_H
