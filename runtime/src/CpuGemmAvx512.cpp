//===- CpuGemmAvx512.cpp - The GEMM's tiles on 16-lane vectors ------------===//
//
// With AVX-512 one 16-lane register holds the 8 lane-wise partial sums of two
// output elements, columns j and j + 1 of one row: A's 8-element chunk is
// broadcast to both halves, B's two rows' chunks sit side by side (joined as
// they are loaded, or for many rows of A packed so once per panel of 8 B
// rows). Every lane
// does exactly the FMAs of the 8-lane kernel (CpuGemm.cpp) and the halves go
// through the same reduction tree (CpuGemmVector.h), so the results are the
// same bits, with twice the work per instruction. This file is compiled with
// -mavx512f -mavx512dq; CpuGemm.cpp calls it only on CPUs that have them.
//
//===----------------------------------------------------------------------===//

#include "CpuGemm.h"
#include "CpuGemmVector.h"

#include <algorithm>
#include <immintrin.h>

using namespace moert::cpu::detail;

namespace {

using V16 = float __attribute__((vector_size(64)));

/// Rows and column pairs of the tile: 6 x 4 pairs of accumulators, the 6
/// broadcast A chunks and one B pair take 31 of the 32 registers.
constexpr int kRows = 6;
constexpr int kPairs = 4;

V16 broadcast(V8 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5,
                                 6, 7);
}
V8 lowHalf(V16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
}
V8 highHalf(V16 v) {
  return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}
V16 join(V8 low, V8 high) {
  return __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                 11, 12, 13, 14, 15);
}

/// Rows of A from which a panel of B is packed rather than joined at every
/// step (each join is a shuffle beside the FMAs; packing is a pass over the
/// panel): measured on a Xeon with AVX-512, packing lost at 16 rows an
/// expert and won at 128.
constexpr int64_t kPackRows = 4 * kRows;

/// A panel of 8 B rows read in place: each step joins two rows' chunks,
/// read by `loadB` (full or zero-padded).
struct RowPanel {
  const float *b;
  int64_t ldb;
  template <typename LoadFn> V16 step(int64_t k, int p, LoadFn loadB) const {
    const float *row = b + 2 * p * ldb + k;
    return join(loadB(row), loadB(row + ldb));
  }
};

/// A panel of 8 B rows over one K block, packed: for each 8-wide step, the
/// 4 pairs of rows' chunks side by side (the last step zero-padded, as the
/// 8-lane kernel's loadTail pads it).
struct PackedPanel {
  alignas(64) float data[(kMaxBlockK / kLanes + 1) * kPairs * 16];

  void pack(const float *b, int64_t ldb, int64_t kc) {
    float *to = data;
    for (int64_t k = 0; k < kc; k += kLanes) {
      int64_t rest = std::min<int64_t>(kLanes, kc - k);
      for (int row = 0; row < 2 * kPairs; ++row, to += kLanes) {
        V8 v = rest == kLanes ? load(b + row * ldb + k)
                              : loadTail(b + row * ldb + k, rest);
        std::memcpy(to, &v, sizeof(v));
      }
    }
  }
  template <typename LoadFn> V16 step(int64_t k, int p, LoadFn) const {
    V16 v;
    std::memcpy(&v, data + (k / kLanes * kPairs + p) * 16, sizeof(v));
    return v;
  }
};

/// How a step reads its 8-element chunks: whole, or the K block's last
/// `rest` < 8 zero-padded. Whole chunks of A are broadcast as they are
/// loaded (vbroadcastf32x8 from memory: a load, not a shuffle beside the
/// FMAs).
struct WholeChunks {
  V8 operator()(const float *p) const { return load(p); }
  V16 broadcastRow(const float *p) const {
    return (V16)_mm512_broadcast_f32x8(_mm256_loadu_ps(p));
  }
};
struct PaddedChunks {
  int64_t rest;
  V8 operator()(const float *p) const { return loadTail(p, rest); }
  V16 broadcastRow(const float *p) const {
    return broadcast(loadTail(p, rest));
  }
};

/// acc[i][p] += A row i * B rows 2p and 2p + 1 over the 8-wide step at k,
/// the chunks read by `chunks`.
template <int MR, typename Panel, typename Chunks>
void fmaStep(V16 (&acc)[MR][kPairs], const float *a, int64_t lda,
             const Panel &b, int64_t k, Chunks chunks) {
  V16 av[MR];
  for (int i = 0; i < MR; ++i)
    av[i] = chunks.broadcastRow(a + i * lda + k);
  for (int p = 0; p < kPairs; ++p) {
    V16 bv = b.step(k, p, chunks);
    for (int i = 0; i < MR; ++i)
      acc[i][p] += av[i] * bv;
  }
}

/// C[MR, 8] (+)= A[MR, kc] @ B[8, kc]^T.
template <int MR, typename Panel>
void tile(const float *a, int64_t lda, const Panel &b, float *c, int64_t ldc,
          int64_t kc, bool accumulate) {
  V16 acc[MR][kPairs] = {};
  int64_t k = 0;
  for (; k + kLanes <= kc; k += kLanes)
    fmaStep(acc, a, lda, b, k, WholeChunks());
  if (k < kc)
    fmaStep(acc, a, lda, b, k, PaddedChunks{kc - k});
  for (int i = 0; i < MR; ++i) {
    V8 row[2 * kPairs];
    for (int p = 0; p < kPairs; ++p) {
      row[2 * p] = lowHalf(acc[i][p]);
      row[2 * p + 1] = highHalf(acc[i][p]);
    }
    storeRow(row, c + i * ldc, accumulate);
  }
}

/// All m rows of A against one panel of 8 B rows.
template <typename Panel>
void sweepRows(const float *a, int64_t lda, const Panel &b, float *c,
               int64_t ldc, int64_t m, int64_t kc, bool accumulate) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows)
    tile<kRows>(a + i * lda, lda, b, c + i * ldc, ldc, kc, accumulate);
  const float *ai = a + i * lda;
  float *ci = c + i * ldc;
  switch (m - i) {
  case 5:
    return tile<5>(ai, lda, b, ci, ldc, kc, accumulate);
  case 4:
    return tile<4>(ai, lda, b, ci, ldc, kc, accumulate);
  case 3:
    return tile<3>(ai, lda, b, ci, ldc, kc, accumulate);
  case 2:
    return tile<2>(ai, lda, b, ci, ldc, kc, accumulate);
  case 1:
    return tile<1>(ai, lda, b, ci, ldc, kc, accumulate);
  default:
    return;
  }
}
} // namespace

void moert::cpu::detail::gemmBlockAvx512(const float *a, int64_t lda,
                                         const float *b, int64_t ldb, float *c,
                                         int64_t ldc, int64_t m, int64_t n,
                                         int64_t kc, bool accumulate) {
  constexpr int64_t kCols = 2 * kPairs;
  PackedPanel packed;
  for (int64_t j = 0; j + kCols <= n; j += kCols) {
    const float *bj = b + j * ldb;
    prefetchRows(bj + kCols * ldb, ldb, std::min<int64_t>(kCols, n - j - kCols),
                 kc);
    if (m >= kPackRows) {
      packed.pack(bj, ldb, kc);
      sweepRows(a, lda, packed, c + j, ldc, m, kc, accumulate);
    } else {
      sweepRows(a, lda, RowPanel{bj, ldb}, c + j, ldc, m, kc, accumulate);
    }
  }
}
