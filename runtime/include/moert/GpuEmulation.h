//===- GpuEmulation.h - what emulated GPU kernels report --------*- C++ -*-===//
//
// A model compiled through the emulated GPU kernels (moe-run --gpu-emulation,
// moe-emulate-gpu) checks every buffer access of its kernels; one outside its
// buffer is skipped and reported here, and the run that made it fails with
// the kernel's name (such an access is a compiler bug: on a GPU it would read
// another allocation or fault).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPUEMULATION_H
#define MOERT_GPUEMULATION_H

extern "C" {
/// Called by an emulated kernel, with its name, instead of an access outside
/// a buffer. Keeps the first name since the last takeEmulatedFault on this
/// thread.
void moert_emulated_out_of_bounds(const char *kernel);
}

namespace moert {
/// The kernel of the first out-of-bounds access on this thread since the
/// last call (null if none), and forgets it.
const char *takeEmulatedFault();
} // namespace moert

#endif // MOERT_GPUEMULATION_H
