//===- CpuGemmVector.h - The GEMM's vector helpers (private) ----*- C++ -*-===//
//
// The 8-lane vectors of the CPU GEMM and the arithmetic every output element
// goes through (loads that widen bf16, the lane reduction tree, the store),
// shared by the 8-lane kernels (CpuGemm.cpp) and the 16-lane ones
// (CpuGemmAvx512.cpp), so that both give the same bits. Its functions have
// internal linkage on purpose (an anonymous namespace): each file compiles
// them for its own instruction set, and a definition shared at link time
// could hand AVX-512 code to a CPU without it. They are `inline` only so
// that a file that leaves some unused compiles without warnings.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPUGEMMVECTOR_H
#define MOERT_CPUGEMMVECTOR_H

#include <cstdint>
#include <cstring>

namespace moert::cpu::detail {
namespace {

using V8 = float __attribute__((vector_size(32)));
using V8i = int32_t __attribute__((vector_size(32)));
using V4 = float __attribute__((vector_size(16)));
using V8u16 = uint16_t __attribute__((vector_size(16)));

constexpr int64_t kLanes = 8;
inline V8 splat(float value) { return V8{} + value; }

inline V8 load(const float *p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

/// Eight bf16 values as f32: the bits shifted into the high half.
inline V8 load(const uint16_t *p) {
  V8u16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return (V8)(__builtin_convertvector(bits, V8i) << 16);
}

/// The first `n` < 8 floats at `p`, zero-padded.
inline V8 loadTail(const float *p, int64_t n) {
  V8 v = {};
  for (int64_t i = 0; i < n; ++i)
    v[i] = p[i];
  return v;
}

inline V8 loadTail(const uint16_t *p, int64_t n) {
  V8u16 bits = {};
  for (int64_t i = 0; i < n; ++i)
    bits[i] = p[i];
  return (V8)(__builtin_convertvector(bits, V8i) << 16);
}

inline void storeTail(float *p, V8 v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    p[i] = v[i];
}

/// Sum of the lanes of `v` as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): the same
/// tree as each lane of reduce4.
inline float reduce1(V8 v) {
  V4 p = __builtin_shufflevector(v, v, 0, 1, 2, 3) +
         __builtin_shufflevector(v, v, 4, 5, 6, 7);
  return (p[0] + p[2]) + (p[1] + p[3]);
}

/// {reduce1(a), reduce1(b), reduce1(c), reduce1(d)} with 8-wide operations.
inline V4 reduce4(V8 a, V8 b, V8 c, V8 d) {
  // Lanes [a0+a4 .. a3+a7 | b0+b4 .. b3+b7], and the same for c, d.
  V8 ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
          __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
  V8 cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 8, 9, 10, 11) +
          __builtin_shufflevector(c, d, 4, 5, 6, 7, 12, 13, 14, 15);
  // Lanes [p0+p2, p1+p3] of a, c | of b, d.
  V8 q = __builtin_shufflevector(ab, cd, 0, 1, 8, 9, 4, 5, 12, 13) +
         __builtin_shufflevector(ab, cd, 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(q, q, 0, 4, 2, 6) +
         __builtin_shufflevector(q, q, 1, 5, 3, 7);
}

/// Reduces one row of accumulators into c[0, NR), overwriting or adding.
template <int NR>
inline void storeRow(const V8 (&acc)[NR], float *c, bool accumulate) {
  int j = 0;
  for (; j + 4 <= NR; j += 4) {
    V4 r = reduce4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
    if (accumulate) {
      V4 old;
      std::memcpy(&old, c + j, sizeof(old));
      r += old;
    }
    std::memcpy(c + j, &r, sizeof(r));
  }
  for (; j < NR; ++j) {
    float r = reduce1(acc[j]);
    c[j] = accumulate ? c[j] + r : r;
  }
}

/// Asks for rows [0, rows) of B, kc elements each, to be fetched into L2
/// while the current panel is computed (a prefetch per 64-byte line).
template <typename TB>
inline void prefetchRows(const TB *b, int64_t ldb, int64_t rows, int64_t kc) {
  constexpr int64_t kPerLine = 64 / sizeof(TB);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < kc; k += kPerLine)
      __builtin_prefetch(b + r * ldb + k, 0, 2);
}

} // namespace
} // namespace moert::cpu::detail

#endif // MOERT_CPUGEMMVECTOR_H
