//===- CpuGemm.h - Serial vector kernels (private) --------------*- C++ -*-===//
//
// The single-threaded building blocks of the CPU kernels. Every output element
// of gemmABtSerial is computed with the same arithmetic as dot() on its two
// rows, whatever the matrix sizes and the block it falls in, so callers may
// split a product into blocks freely (across threads, across experts) without
// changing a bit of the result.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CPUGEMM_H
#define MOERT_CPUGEMM_H

#include "moert/CpuKernels.h"

#include <cstdint>
#include <string>

namespace moert::cpu::detail {

/// C[m,n] = A[m,k] @ B[n,k]^T on the calling thread; lda, ldb, ldc are row
/// strides. B is f32 or bf16 (uint16_t bits), which gives the bits of the
/// f32 B it widens to.
template <typename TB>
void gemmABtSerial(const float *a, int64_t lda, const TB *b, int64_t ldb,
                   float *c, int64_t ldc, int64_t m, int64_t n, int64_t k);
extern template void gemmABtSerial(const float *, int64_t, const float *,
                                   int64_t, float *, int64_t, int64_t, int64_t,
                                   int64_t);
extern template void gemmABtSerial(const float *, int64_t, const uint16_t *,
                                   int64_t, float *, int64_t, int64_t, int64_t,
                                   int64_t);

/// Whether gemmABtSerial runs its tiles of more than one row on AVX-512
/// (CpuGemmAvx512.cpp; the same bits as the 8-lane tiles): on CPUs with
/// AVX-512F and DQ unless the environment says MOERT_CPU_ISA=avx2.
/// Decided on first use.
bool avx512Gemm();
/// What is wrong with MOERT_CPU_ISA, or "".
std::string cpuIsaProblem();
/// Turns the AVX-512 tiles on or off (for tests and benchmarks); returns
/// false, changing nothing, when asked for them on a CPU without them.
bool setAvx512Gemm(bool on);
/// The longest K block gemmABtSerial hands to its tiles.
constexpr int64_t kMaxBlockK = 512;
/// C[m, n] (+)= A[m, kc] @ B[n, kc]^T for n a multiple of 8 and one K block
/// (kc <= kMaxBlockK elements) on AVX-512; call only where avx512Gemm().
void gemmBlockAvx512(const float *a, int64_t lda, const float *b, int64_t ldb,
                     float *c, int64_t ldc, int64_t m, int64_t n, int64_t kc,
                     bool accumulate);

/// sum_i a[i] * b[i], bitwise equal to the corresponding gemmABtSerial
/// element.
float dot(const float *a, const float *b, int64_t n);

/// sum_i (a[i] - b[i])^2.
float squaredDistance(const float *a, const float *b, int64_t n);

/// g = act(g) * u over a [rows, cols] block with row stride ld.
void swiglu(float *g, const float *u, int64_t rows, int64_t cols, int64_t ld,
            Activation activation);

} // namespace moert::cpu::detail

#endif // MOERT_CPUGEMM_H
