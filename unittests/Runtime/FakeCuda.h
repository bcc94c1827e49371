//===- FakeCuda.h - a fake CUDA driver for the runtime's tests --*- C++ -*-===//
//
// libcuda.so.1 built from FakeCuda.cpp implements the driver entry points
// the runtime uses over host memory, so that the runtime's CUDA path runs in
// CI without a GPU (point MOERT_CUDA_DRIVER at it). Device memory is
// malloc'ed, copies are memcpy, streams are synchronous, a "module" is a
// FakeCudaBinary and a kernel is a host function called with the launch's
// parameters. It checks what a real driver would reject: device pointers
// outside live allocations, unknown streams, work without a current context.
//
// Environment (read at each call):
//   MOERT_FAKE_CUDA_FAIL     "cuMemAlloc=2,cuModuleLoadData@1=209": the call
//                            (API name, no _v2) returns the CUresult, on
//                            every call or on its N-th from when the variable
//                            was last changed
//   MOERT_FAKE_CUDA_DEVICES  device count (default 1)
//   MOERT_FAKE_CUDA_SM       compute capability, e.g. 75 (default 90)
//   MOERT_FAKE_CUDA_POOLS    0: no stream-ordered allocator (default 1)
//   MOERT_FAKE_CUDA_SMS      multiprocessors (default 132)
//   MOERT_FAKE_CUDA_BLOCKS_PER_SM  what the occupancy calculator says fits
//                            (default 2)
//   MOERT_FAKE_CUDA_COOPERATIVE    0: no cooperative launches (default 1)
//   MOERT_FAKE_CUDA_IMAGES   "fatbinary": cuModuleLoadData also takes a real
//                            CUDA fatbinary, as a module without kernels
//                            (for tests of which build a model loads)
//
// Launches are refused (CUDA_ERROR_INVALID_VALUE) when they ask for more
// dynamic shared memory than the kernel may take: 48 KiB, or what
// cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) allowed it, at most
// 227 KiB (an H100's opt-in limit).
//
// cuTensorMapEncodeTiled checks what the real one requires of a 128-byte
// swizzled map (16-byte aligned address and strides, an inner box of at most
// 128 bytes) and writes its arguments into the map as FakeCudaTensorMap. Built
// with FAKE_CUDA_WITHOUT_TENSOR_MAPS it is missing, as before CUDA 12.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_UNITTESTS_FAKECUDA_H
#define MOERT_UNITTESTS_FAKECUDA_H

#include <cstddef>
#include <cstring>

struct FakeCudaKernel {
  const char *name;
  void (*run)(void **params);
};

/// What cuModuleLoadData accepts: starts with kFakeCudaMagic.
struct FakeCudaBinary {
  char magic[16];
  const FakeCudaKernel *kernels;
  int count;
};
inline constexpr char kFakeCudaMagic[16] = "moert-fake-cubn";

/// The fake's bookkeeping, for tests (dlsym them from the loaded library).
struct FakeCudaCounters {
  int allocations;         ///< live device allocations
  int streams;             ///< live streams
  int events;              ///< live events
  int modules;             ///< loaded modules
  int primaryRefs;         ///< primary context retains not released
  int launches;            ///< kernels launched so far
  int driverCalls;         ///< entry points called so far
  void *lastStream;        ///< the stream of the last launch
  int contextDepth;        ///< contexts pushed on the calling thread
  int cooperativeLaunches; ///< kernels launched cooperatively so far
  unsigned lastGridX;      ///< the grid's x size of the last launch
  int tensorMapsEncoded;   ///< cuTensorMapEncodeTiled calls that succeeded
  int sharedOptIns;        ///< cuFuncSetAttribute calls that succeeded
  unsigned lastSharedBytes; ///< the dynamic shared memory of the last launch
};
/// What the fake's cuTensorMapEncodeTiled writes into a CUtensorMap.
struct FakeCudaTensorMap {
  unsigned long long address;
  unsigned long long dims[3], strides[2];
  unsigned box[3];
  int dataType, rank, swizzle;
};
static_assert(sizeof(FakeCudaTensorMap) <= 128, "a CUtensorMap's size");
using FakeCudaGetCounters = FakeCudaCounters (*)();
#define FAKE_CUDA_COUNTERS_SYMBOL "fakeCudaCounters"
/// Whether [p, p + bytes) lies in one live device allocation, for kernels
/// that check they were given device pointers.
using FakeCudaIsDeviceMemory = bool (*)(const void *p, size_t bytes);
#define FAKE_CUDA_IS_DEVICE_MEMORY_SYMBOL "fakeCudaIsDeviceMemory"

#endif // MOERT_UNITTESTS_FAKECUDA_H
