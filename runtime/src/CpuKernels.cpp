//===- CpuKernels.cpp - CPU kernels of the MoE runtime --------------------===//
//
// The router, rmsnorm, exit test and the parallel GEMM. The expert group is
// the plan-driven fused kernel of CpuPlanKernels.cpp run on a plan with tile
// 1, so there is one implementation of it and its results do not depend on
// which entry point the compiler used.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuKernels.h"
#include "moert/CpuPlanKernels.h"

#include "CpuGemm.h"
#include "CpuKernelsInternal.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <thread>

using namespace moert::cpu;
using namespace moert::cpu::detail;

namespace {

//===----------------------------------------------------------------------===//
// Router
//===----------------------------------------------------------------------===//

void scoreInPlace(float *logits, int64_t numExperts, Scoring scoring) {
  if (scoring == Scoring::Sigmoid) {
    for (int64_t e = 0; e < numExperts; ++e)
      logits[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    return;
  }
  float maxLogit = logits[0];
  for (int64_t e = 1; e < numExperts; ++e)
    maxLogit = std::max(maxLogit, logits[e]);
  float sum = 0.0f;
  for (int64_t e = 0; e < numExperts; ++e) {
    logits[e] = std::exp(logits[e] - maxLogit);
    sum += logits[e];
  }
  for (int64_t e = 0; e < numExperts; ++e)
    logits[e] /= sum;
}

/// Picks the k largest probabilities, largest first, the lower index winning
/// ties. A selection sort: k and E are small, and unlike a comparison sort it
/// stays well defined when a probability is NaN.
void selectTopK(const float *probs, int64_t numExperts, int64_t topK,
                bool *taken, int32_t *ids, float *gates) {
  std::fill(taken, taken + numExperts, false);
  for (int64_t j = 0; j < topK; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < numExperts; ++e)
      if (!taken[e] && (best < 0 || probs[e] > probs[best]))
        best = e;
    taken[best] = true;
    ids[j] = static_cast<int32_t>(best);
    gates[j] = probs[best];
  }
}

void finishGates(float *gates, int64_t topK, bool normalize, float scaling) {
  if (normalize) {
    float sum = 0.0f;
    for (int64_t j = 0; j < topK; ++j)
      sum += gates[j];
    for (int64_t j = 0; j < topK; ++j)
      gates[j] /= sum;
  }
  for (int64_t j = 0; j < topK; ++j)
    gates[j] *= scaling;
}

bool failRoute(int32_t *ids, float *gates, int64_t n) {
  std::fill(ids, ids + n, -1);
  std::fill(gates, gates + n, kNaN);
  return false;
}

} // namespace

namespace {
/// MOERT_NUM_THREADS as a thread count, or 0 if it is unset or not one.
unsigned threadsFromEnvironment() {
  const char *env = std::getenv("MOERT_NUM_THREADS");
  if (!env)
    return 0;
  char *end = nullptr;
  long value = std::strtol(env, &end, 10);
  return end != env && *end == '\0' && value > 0 && value <= 1024
             ? static_cast<unsigned>(value)
             : 0;
}
} // namespace

unsigned moert::cpu::defaultNumThreads() {
  static const unsigned numThreads = [] {
    if (unsigned fromEnvironment = threadsFromEnvironment())
      return fromEnvironment;
    return std::max(1u, std::thread::hardware_concurrency());
  }();
  return numThreads;
}

std::string moert::cpu::environmentProblem() {
  const char *threads = std::getenv("MOERT_NUM_THREADS");
  if (threads && *threads && !threadsFromEnvironment())
    return "MOERT_NUM_THREADS='" + std::string(threads) +
           "' is not a thread count from 1 to 1024";
  return detail::cpuIsaProblem();
}

namespace {
template <typename TB>
void gemmABtOf(const float *a, int64_t lda, const TB *b, int64_t ldb, float *c,
               int64_t ldc, int64_t m, int64_t n, int64_t k,
               unsigned numThreads) {
  int64_t colTiles = ceilDiv(n, kTileCols);
  parallelFor(ceilDiv(m, kTileRows) * colTiles, numThreads, [&](int64_t i) {
    int64_t row = (i / colTiles) * kTileRows;
    int64_t col = (i % colTiles) * kTileCols;
    detail::gemmABtSerial(
        a + row * lda, lda, b + col * ldb, ldb, c + row * ldc + col, ldc,
        std::min(kTileRows, m - row), std::min(kTileCols, n - col), k);
  });
}
} // namespace

void moert::cpu::gemmABt(const float *a, int64_t lda, const float *b,
                         int64_t ldb, float *c, int64_t ldc, int64_t m,
                         int64_t n, int64_t k, unsigned numThreads) noexcept {
  gemmABtOf(a, lda, b, ldb, c, ldc, m, n, k, numThreads);
}

void moert::cpu::gemmABt(const float *a, int64_t lda, const uint16_t *b,
                         int64_t ldb, float *c, int64_t ldc, int64_t m,
                         int64_t n, int64_t k, unsigned numThreads) noexcept {
  gemmABtOf(a, lda, b, ldb, c, ldc, m, n, k, numThreads);
}

void moert::cpu::rmsNorm(const float *x, const float *w, float *out,
                         int64_t numTokens, int64_t hidden,
                         float eps) noexcept {
  for (int64_t t = 0; t < numTokens; ++t) {
    const float *xRow = x + t * hidden;
    float meanSquare =
        detail::dot(xRow, xRow, hidden) / static_cast<float>(hidden);
    float rms = std::sqrt(meanSquare + eps);
    for (int64_t i = 0; i < hidden; ++i)
      out[t * hidden + i] = w ? xRow[i] / rms * w[i] : xRow[i] / rms;
  }
}

bool moert::cpu::route(const float *x, const float *w, int32_t *ids,
                       float *gates, const MoEShape &s, Scoring scoring,
                       bool normalize, float scaling,
                       unsigned numThreads) noexcept {
  int64_t numSlots = s.numTokens * s.topK;
  if (s.numExperts < 1 || s.topK > s.numExperts)
    return failRoute(ids, gates, numSlots);
  std::unique_ptr<float[]> probs = allocate<float>(s.numTokens * s.numExperts);
  std::unique_ptr<bool[]> taken = allocate<bool>(s.numExperts);
  if (!probs || !taken)
    return failRoute(ids, gates, numSlots);
  gemmABt(x, s.hidden, w, s.hidden, probs.get(), s.numExperts, s.numTokens,
          s.numExperts, s.hidden, numThreads);
  for (int64_t t = 0; t < s.numTokens; ++t) {
    float *tokenProbs = probs.get() + t * s.numExperts;
    scoreInPlace(tokenProbs, s.numExperts, scoring);
    selectTopK(tokenProbs, s.numExperts, s.topK, taken.get(), ids + t * s.topK,
               gates + t * s.topK);
    finishGates(gates + t * s.topK, s.topK, normalize, scaling);
  }
  return true;
}

bool moert::cpu::experts(const float *x, const int32_t *ids, const float *gates,
                         const float *gateProj, const float *upProj,
                         const float *downProj, float *out, const MoEShape &s,
                         Activation activation, unsigned numThreads) noexcept {
  const int64_t numRows = planRows(s, /*tile=*/1);
  std::unique_ptr<int32_t[]> offsets = allocate<int32_t>(s.numExperts + 1);
  std::unique_ptr<int32_t[]> rowToken = allocate<int32_t>(numRows);
  std::unique_ptr<int32_t[]> slotRow = allocate<int32_t>(numRows);
  if (!offsets || !rowToken || !slotRow ||
      !plan(ids, offsets.get(), rowToken.get(), slotRow.get(), s, 1, numRows)) {
    std::fill(out, out + s.numTokens * s.hidden, kNaN);
    return false;
  }
  return fusedExperts(x, rowToken.get(), offsets.get(), slotRow.get(), gates,
                      gateProj, upProj, downProj, out, s, numRows, activation,
                      numThreads);
}

void moert::cpu::exitTest(const float *h, const float *prev, int8_t *exits,
                          int64_t numTokens, int64_t hidden,
                          ExitCriterion criterion, float tau) noexcept {
  for (int64_t t = 0; t < numTokens; ++t) {
    const float *hRow = h + t * hidden;
    const float *pRow = prev + t * hidden;
    float hNorm = std::sqrt(detail::dot(hRow, hRow, hidden));
    bool exit;
    if (criterion == ExitCriterion::Cosine) {
      float pNorm = std::sqrt(detail::dot(pRow, pRow, hidden));
      float cosine = detail::dot(hRow, pRow, hidden) / (hNorm * pNorm);
      exit = std::isfinite(cosine) && cosine >= tau;
    } else {
      float relative =
          std::sqrt(detail::squaredDistance(hRow, pRow, hidden)) / hNorm;
      exit = std::isfinite(relative) && relative <= tau;
    }
    exits[t] = exit ? 1 : 0;
  }
}

//===----------------------------------------------------------------------===//
// C interface
//===----------------------------------------------------------------------===//

void _mlir_ciface_moert_rms_norm(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<float, 1> *w,
                                 StridedMemRefType<float, 2> *out, float eps) {
  int64_t numTokens = x->sizes[0], hidden = x->sizes[1];
  // An empty weight is the norm without gain.
  bool unit = w->sizes[0] == 0;
  if ((!unit && w->sizes[0] != hidden) || out->sizes[0] != numTokens ||
      out->sizes[1] != hidden)
    return fill(out, kNaN);
  rmsNorm(dataOf(x), unit ? nullptr : dataOf(w), dataOf(out), numTokens, hidden,
          eps);
}

void _mlir_ciface_moert_route(StridedMemRefType<float, 2> *x,
                              StridedMemRefType<float, 2> *w,
                              StridedMemRefType<int32_t, 2> *ids,
                              StridedMemRefType<float, 2> *gates,
                              int32_t scoring, int32_t normalize,
                              float scaling) {
  MoEShape s{x->sizes[0], x->sizes[1], 0, w->sizes[0], ids->sizes[1]};
  bool consistent = w->sizes[1] == s.hidden && ids->sizes[0] == s.numTokens &&
                    gates->sizes[0] == s.numTokens &&
                    gates->sizes[1] == s.topK && (scoring == 0 || scoring == 1);
  if (!consistent) {
    fill(ids, -1);
    return fill(gates, kNaN);
  }
  route(dataOf(x), dataOf(w), dataOf(ids), dataOf(gates), s,
        static_cast<Scoring>(scoring), normalize != 0, scaling);
}

void _mlir_ciface_moert_experts(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 2> *ids,
    StridedMemRefType<float, 2> *gates, StridedMemRefType<float, 3> *gate,
    StridedMemRefType<float, 3> *up, StridedMemRefType<float, 3> *down,
    StridedMemRefType<float, 2> *out, int32_t activation) {
  MoEShape s{x->sizes[0], x->sizes[1], gate->sizes[1], gate->sizes[0],
             ids->sizes[1]};
  auto isExpertStack = [&](StridedMemRefType<float, 3> *m, int64_t rows,
                           int64_t cols) {
    return m->sizes[0] == s.numExperts && m->sizes[1] == rows &&
           m->sizes[2] == cols;
  };
  bool consistent =
      isExpertStack(gate, s.ffn, s.hidden) &&
      isExpertStack(up, s.ffn, s.hidden) &&
      isExpertStack(down, s.hidden, s.ffn) && ids->sizes[0] == s.numTokens &&
      gates->sizes[0] == s.numTokens && gates->sizes[1] == s.topK &&
      out->sizes[0] == s.numTokens && out->sizes[1] == s.hidden &&
      (activation == 0 || activation == 1);
  if (!consistent)
    return fill(out, kNaN);
  experts(dataOf(x), dataOf(ids), dataOf(gates), dataOf(gate), dataOf(up),
          dataOf(down), dataOf(out), s, static_cast<Activation>(activation));
}

void _mlir_ciface_moert_exit_test(StridedMemRefType<float, 2> *h,
                                  StridedMemRefType<float, 2> *prev,
                                  StridedMemRefType<int8_t, 1> *exits,
                                  int32_t criterion, float tau) {
  int64_t numTokens = h->sizes[0], hidden = h->sizes[1];
  bool consistent = prev->sizes[0] == numTokens && prev->sizes[1] == hidden &&
                    exits->sizes[0] == numTokens &&
                    (criterion == 0 || criterion == 1);
  if (!consistent)
    return fill(exits, int8_t(0));
  exitTest(dataOf(h), dataOf(prev), dataOf(exits), numTokens, hidden,
           static_cast<ExitCriterion>(criterion), tau);
}
