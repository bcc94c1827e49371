//===- GpuRuntime.h - MLIR's GPU runtime ABI, defined by libmoert -*- C++ -*-=//
//
// The host code of a model compiled for CUDA calls these (the signatures are
// those `mlir-translate` of MLIR 22 emits for gpu.launch_func, gpu.alloc,
// ...). libmoert implements them on the CUDA driver API, acting in the launch
// scope that moert_model_run (and moert_session_forward, for decoders) sets
// around the model's entry point (with the model's CUDA context current):
//  - mgpuStreamCreate returns the run's stream (the context's or the one set
//    with moert_context_set_cuda_stream); mgpuStreamDestroy does nothing;
//  - functions are looked up by name in the module moert_model_load loaded
//    (the module argument is ignored; mgpuModuleLoad returns that module and
//    mgpuModuleUnload does nothing);
//  - allocations are stream-ordered (cuMemAllocAsync) where the device
//    supports it, copies are cuMemcpyAsync (unified addressing);
//  - the first CUDA error is kept for the run's status, naming the call;
//    after it every call but mgpuMemFree and mgpuEventDestroy does nothing
//    (an allocation returns null, a launch is skipped), so the host code
//    runs to its end without touching bad pointers and without leaking.
// Outside a scope every call does nothing and returns null.
//
// A JIT resolves them through gpuRuntimeSymbols(); an application linking a
// compiled object resolves them through the linker.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPURUNTIME_H
#define MOERT_GPURUNTIME_H

#include "llvm/ADT/ArrayRef.h"

#include <cstddef>
#include <cstdint>

extern "C" {
void *mgpuStreamCreate();
void mgpuStreamDestroy(void *stream);
void mgpuStreamSynchronize(void *stream);
void mgpuStreamWaitEvent(void *stream, void *event);
void *mgpuEventCreate();
void mgpuEventDestroy(void *event);
void mgpuEventSynchronize(void *event);
void mgpuEventRecord(void *event, void *stream);
void *mgpuMemAlloc(uint64_t sizeBytes, void *stream, bool isHostShared);
void mgpuMemFree(void *ptr, void *stream);
void mgpuMemcpy(void *dst, void *src, size_t sizeBytes, void *stream);
void mgpuMemset32(void *dst, unsigned int value, size_t count, void *stream);
void mgpuMemset16(void *dst, unsigned short value, size_t count, void *stream);
void *mgpuModuleLoad(void *data, size_t gpuBlobSize);
void *mgpuModuleLoadJIT(void *data, int optLevel);
void mgpuModuleUnload(void *module);
void *mgpuModuleGetFunction(void *module, const char *name);
void mgpuLaunchKernel(void *function, intptr_t gridX, intptr_t gridY,
                      intptr_t gridZ, intptr_t blockX, intptr_t blockY,
                      intptr_t blockZ, int32_t smem, void *stream,
                      void **params, void **extra, size_t paramsCount);

/// Not MLIR's: the tensor map through which TMA loads tiles of a bf16
/// tensor at device address `base` (kernels compiled with --wgmma). Dims
/// innermost first, contiguous, boxes of box0 x box1 elements with the
/// 128-byte swizzle. Encoded with cuTensorMapEncodeTiled and copied to
/// device memory on first use, then kept for the model's life; returns that
/// device copy.
void *moert_cuda_tensor_map_bf16_3d(void *base, int64_t dim0, int64_t dim1,
                                    int64_t dim2, int64_t box0, int64_t box1);
}

namespace moert::cuda {
/// Kernels whose names start with this run every pass of a resident loop,
/// with barriers across the grid (convert-moe-to-gpu): mgpuLaunchKernel
/// launches them cooperatively, with at most as many blocks as fit on the
/// device at once, and an error if not one fits.
inline constexpr const char *kResidentKernelPrefix = "resident_loop_";

struct RuntimeSymbol {
  const char *name;
  void *address;
};
/// Every mgpu* function above, for a JIT's symbol map.
llvm::ArrayRef<RuntimeSymbol> gpuRuntimeSymbols();
} // namespace moert::cuda

#endif // MOERT_GPURUNTIME_H
