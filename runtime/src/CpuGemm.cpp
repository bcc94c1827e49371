//===- CpuGemm.cpp - Dot-product GEMM and vector SwiGLU -------------------===//
//
// C = A @ B^T where both operands are row-major along the reduction dimension
// (B as nn.Linear stores weights), so every C element is a dot product of two
// contiguous rows and neither operand needs packing. The micro-kernel keeps an
// MR x NR tile of 8-lane accumulators in registers, loading each A and B
// vector once per tile. It is written with GCC/Clang vector extensions: with
// -mavx2 -mfma they become 256-bit FMAs, elsewhere the compiler splits them.
//
// Each element's arithmetic is fixed: 8 lane-wise partial sums over a K block
// (the tail zero-padded), one fixed reduction tree per block, and the block
// sums added to C in K order. Tile shape and blocking only decide which
// elements are computed together, never how, which is what makes the kernels
// deterministic across thread counts and batch compositions. On CPUs with
// AVX-512 the tiles of more than one row go to CpuGemmAvx512.cpp, whose
// 16-lane registers each hold two elements' 8 partial sums: the same
// arithmetic, the same bits.
//
// B may also be bf16 (raw bits, as weights are kept): each vector is widened
// to f32 as it is loaded, which is exact, so a bf16 B gives the same bits as
// the f32 B it widens to, with half the bytes to read.
//
// The SwiGLU activation is here too, on the same vector types, with its own
// vectorised exp.
//
//===----------------------------------------------------------------------===//

#include "CpuGemm.h"
#include "CpuGemmVector.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

using namespace moert::cpu;
using namespace moert::cpu::detail;

namespace {

/// K block: an NR x kBlockK panel of B (16 KiB for NR = 8) stays in L1 while
/// the rows of A stream past it.
constexpr int64_t kBlockK = kMaxBlockK;
/// M block: a kBlockM x kBlockK block of A (192 KiB) stays in L2 while B
/// panels are swept across it.
constexpr int64_t kBlockM = 96;

/// acc[i][j] += A row i * B row j over one 8-wide step; `loadFn` reads it
/// (a generic lambda: A is f32, B f32 or bf16). The MR A vectors stay in
/// registers and each B vector is used once as it is loaded, so a 3 x 4 tile
/// needs exactly the 16 AVX2 registers.
template <int MR, int NR, typename TB, typename LoadFn>
void fmaStep(V8 (&acc)[MR][NR], const float *a, int64_t lda, const TB *b,
             int64_t ldb, LoadFn loadFn) {
  V8 av[MR];
  for (int i = 0; i < MR; ++i)
    av[i] = loadFn(a + i * lda);
  for (int j = 0; j < NR; ++j) {
    V8 bv = loadFn(b + j * ldb);
    for (int i = 0; i < MR; ++i)
      acc[i][j] += av[i] * bv;
  }
}

/// The micro-kernel: C[MR,NR] (+)= A[MR,kc] @ B[NR,kc]^T.
template <int MR, int NR, typename TB>
void tile(const float *a, int64_t lda, const TB *b, int64_t ldb, float *c,
          int64_t ldc, int64_t kc, bool accumulate) {
  V8 acc[MR][NR] = {};
  int64_t k = 0;
  for (; k + kLanes <= kc; k += kLanes)
    fmaStep(acc, a + k, lda, b + k, ldb, [](const auto *p) { return load(p); });
  if (k < kc) {
    int64_t rest = kc - k;
    fmaStep(acc, a + k, lda, b + k, ldb,
            [rest](const auto *p) { return loadTail(p, rest); });
  }
  for (int i = 0; i < MR; ++i)
    storeRow(acc[i], c + i * ldc, accumulate);
}

/// All rows of A against NR rows of B, three rows at a time.
template <int NR, typename TB>
void sweepRows(const float *a, int64_t lda, const TB *b, int64_t ldb, float *c,
               int64_t ldc, int64_t m, int64_t kc, bool accumulate) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3)
    tile<3, NR>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, kc, accumulate);
  if (m - i == 2)
    tile<2, NR>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, kc, accumulate);
  else if (m - i == 1)
    tile<1, NR>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, kc, accumulate);
}

/// One row of A (a GEMV, memory bound on B): eight B rows per step keep
/// enough loads in flight to stream B at full bandwidth.
template <typename TB>
void gemvBlock(const float *a, const TB *b, int64_t ldb, float *c, int64_t n,
               int64_t kc, bool accumulate) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    tile<1, 8>(a, 0, b + j * ldb, ldb, c + j, 0, kc, accumulate);
  for (; j + 4 <= n; j += 4)
    tile<1, 4>(a, 0, b + j * ldb, ldb, c + j, 0, kc, accumulate);
  for (; j < n; ++j)
    tile<1, 1>(a, 0, b + j * ldb, ldb, c + j, 0, kc, accumulate);
}

/// dst[r, 0..kc) = the f32 values of bf16 rows src[r, 0..kc), r < rows;
/// dst's rows are kBlockK apart.
void widenRows(const uint16_t *src, int64_t ldSrc, int64_t rows, int64_t kc,
               float *dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t *from = src + r * ldSrc;
    float *to = dst + r * kBlockK;
    int64_t k = 0;
    for (; k + kLanes <= kc; k += kLanes) {
      V8 v = load(from + k);
      std::memcpy(to + k, &v, sizeof(v));
    }
    if (k < kc)
      storeTail(to + k, loadTail(from + k, kc - k), kc - k);
  }
}

/// C[m,n] (+)= A[m,kc] @ B[n,kc]^T for one K block and one M block.
template <typename TB>
void gemmBlock(const float *a, int64_t lda, const TB *b, int64_t ldb, float *c,
               int64_t ldc, int64_t m, int64_t n, int64_t kc, bool accumulate) {
  if (m == 1)
    return gemvBlock(a, b, ldb, c, n, kc, accumulate);
  if constexpr (!std::is_same_v<TB, float>) {
    // Every B row serves all m rows: widen each panel of eight once, not in
    // every tile that reads it.
    alignas(32) float panel[8 * kBlockK];
    for (int64_t j = 0; j < n; j += 8) {
      int64_t rows = std::min<int64_t>(8, n - j);
      widenRows(b + j * ldb, ldb, rows, kc, panel);
      prefetchRows(b + (j + 8) * ldb, ldb, std::min<int64_t>(8, n - j - 8), kc);
      gemmBlock<float>(a, lda, panel, kBlockK, c + j, ldc, m, rows, kc,
                       accumulate);
    }
    return;
  }
  int64_t j = 0;
  if constexpr (std::is_same_v<TB, float>) {
    if (avx512Gemm()) {
      j = n / 8 * 8;
      gemmBlockAvx512(a, lda, b, ldb, c, ldc, m, j, kc, accumulate);
    }
  }
  for (; j + 4 <= n; j += 4) {
    prefetchRows(b + (j + 4) * ldb, ldb, std::min<int64_t>(4, n - j - 4), kc);
    sweepRows<4>(a, lda, b + j * ldb, ldb, c + j, ldc, m, kc, accumulate);
  }
  const TB *bTail = b + j * ldb;
  switch (n - j) {
  case 3:
    return sweepRows<3>(a, lda, bTail, ldb, c + j, ldc, m, kc, accumulate);
  case 2:
    return sweepRows<2>(a, lda, bTail, ldb, c + j, ldc, m, kc, accumulate);
  case 1:
    return sweepRows<1>(a, lda, bTail, ldb, c + j, ldc, m, kc, accumulate);
  default:
    return;
  }
}

/// e^x to a few ulp, for x clamped to [-87, 88] (NaN stays NaN): x = n ln2 + r
/// with |r| <= ln2/2 (Cody-Waite), e^r from the Cephes expf polynomial, and
/// 2^n built in the exponent bits. libm's expf is not vectorised; at T*k*f
/// calls per layer it cost a fifth of the GEMM time.
V8 exp8(V8 x) {
  constexpr float kRoundMagic = 12582912.0f; // 1.5 * 2^23
  x = x < -87.0f ? splat(-87.0f) : x;
  x = x > 88.0f ? splat(88.0f) : x;
  // t's low mantissa bits hold n = round(x / ln2) as an integer.
  V8 t = x * 1.44269504088896341f + kRoundMagic;
  V8 n = t - kRoundMagic;
  V8i pow2n = ((V8i)t - (V8i)splat(kRoundMagic) + 127) << 23;
  V8 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V8 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * (V8)pow2n;
}

/// act(g) * u. Both activations are x * sigmoid(z): SiLU with z = x, and the
/// tanh GELU 0.5 x (1 + tanh(y)) with z = 2y, the same function without
/// tanh's cancellation near 0.
V8 swigluStep(V8 g, V8 u, Activation activation) {
  V8 z = g;
  if (activation == Activation::Gelu) {
    constexpr float kTwoSqrt2OverPi = 1.5957691216057308f;
    z = kTwoSqrt2OverPi * (g + 0.044715f * g * g * g);
  }
  return g / (1.0f + exp8(-z)) * u;
}

} // namespace

namespace {
/// avx512Gemm()'s answer: -1 until first asked.
std::atomic<int> avx512Tiles{-1};

bool cpuHasAvx512() {
#if defined(__x86_64__) && defined(MOERT_HAVE_AVX512_GEMM)
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

/// MOERT_CPU_ISA: unset or empty (what the CPU has), avx2, avx512, or
/// something else.
enum class IsaRequest { Default, Avx2, Avx512, Unknown };
IsaRequest isaRequest() {
  const char *isa = std::getenv("MOERT_CPU_ISA");
  if (!isa || !*isa)
    return IsaRequest::Default;
  if (!std::strcmp(isa, "avx2"))
    return IsaRequest::Avx2;
  return std::strcmp(isa, "avx512") ? IsaRequest::Unknown : IsaRequest::Avx512;
}
} // namespace

std::string detail::cpuIsaProblem() {
  switch (isaRequest()) {
  case IsaRequest::Unknown:
    return "MOERT_CPU_ISA='" + std::string(std::getenv("MOERT_CPU_ISA")) +
           "' is not avx2 or avx512";
  case IsaRequest::Avx512:
    return cpuHasAvx512() ? ""
                          : "MOERT_CPU_ISA=avx512, but this build or CPU has "
                            "no AVX-512F and AVX-512DQ";
  default:
    return "";
  }
}

bool detail::avx512Gemm() {
  int state = avx512Tiles.load(std::memory_order_relaxed);
  if (state < 0) {
    state = cpuHasAvx512() && isaRequest() != IsaRequest::Avx2;
    avx512Tiles.store(state, std::memory_order_relaxed);
  }
  return state;
}

bool detail::setAvx512Gemm(bool on) {
  if (on && !cpuHasAvx512())
    return false;
  avx512Tiles.store(on, std::memory_order_relaxed);
  return true;
}

template <typename TB>
void detail::gemmABtSerial(const float *a, int64_t lda, const TB *b,
                           int64_t ldb, float *c, int64_t ldc, int64_t m,
                           int64_t n, int64_t k) {
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  for (int64_t k0 = 0; k0 < k; k0 += kBlockK) {
    int64_t kc = std::min(kBlockK, k - k0);
    for (int64_t m0 = 0; m0 < m; m0 += kBlockM)
      gemmBlock(a + m0 * lda + k0, lda, b + k0, ldb, c + m0 * ldc, ldc,
                std::min(kBlockM, m - m0), n, kc, /*accumulate=*/k0 > 0);
  }
}

template void detail::gemmABtSerial(const float *, int64_t, const float *,
                                    int64_t, float *, int64_t, int64_t, int64_t,
                                    int64_t);
template void detail::gemmABtSerial(const float *, int64_t, const uint16_t *,
                                    int64_t, float *, int64_t, int64_t, int64_t,
                                    int64_t);

float detail::dot(const float *a, const float *b, int64_t n) {
  float result;
  gemmABtSerial(a, 0, b, 0, &result, 0, 1, 1, n);
  return result;
}

float detail::squaredDistance(const float *a, const float *b, int64_t n) {
  V8 acc = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V8 diff = load(a + i) - load(b + i);
    acc += diff * diff;
  }
  if (i < n) {
    V8 diff = loadTail(a + i, n - i) - loadTail(b + i, n - i);
    acc += diff * diff;
  }
  return reduce1(acc);
}

void detail::swiglu(float *g, const float *u, int64_t rows, int64_t cols,
                    int64_t ld, Activation activation) {
  for (int64_t r = 0; r < rows; ++r) {
    float *gRow = g + r * ld;
    const float *uRow = u + r * ld;
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) {
      V8 h = swigluStep(load(gRow + c), load(uRow + c), activation);
      std::memcpy(gRow + c, &h, sizeof(h));
    }
    if (c < cols)
      storeTail(gRow + c,
                swigluStep(loadTail(gRow + c, cols - c),
                           loadTail(uRow + c, cols - c), activation),
                cols - c);
  }
}
