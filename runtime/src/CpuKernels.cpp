//===- CpuKernels.cpp - CPU kernels of the MoE runtime --------------------===//
//
// The expert group runs as grouped GEMMs: a counting sort of the (token, slot)
// pairs by expert gives each expert a packed block of input rows; per expert,
// G = A gate^T and U = A up^T are computed tile by tile with the SwiGLU
// product applied while the tile is in cache, then Y = H down^T, and each
// token sums its slots' rows of Y in ascending slot order. Work is split into
// output tiles claimed by threads; a tile's bits do not depend on who runs it.
//
// Scratch memory: the expert group's large buffers live in a per-thread
// workspace that grows to the largest call and is kept until the thread ends;
// the small ones (routing plan, router scores) are allocated per call.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuKernels.h"

#include "CpuGemm.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <vector>

using namespace moert::cpu;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Output tile of one parallel work item. Rows: enough to amortise a pass over
/// the weight tile; columns: small enough that decode (one row) still yields
/// many items for the threads.
constexpr int64_t kTileRows = 192;
constexpr int64_t kTileCols = 64;
/// Tokens per work item of the final combine.
constexpr int64_t kCombineTokens = 32;

template <typename T> std::unique_ptr<T[]> allocate(int64_t n) {
  return std::unique_ptr<T[]>(new (std::nothrow) T[std::max<int64_t>(n, 1)]);
}

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned resolveThreads(unsigned numThreads) {
  return numThreads ? numThreads : defaultNumThreads();
}

/// Runs body(i) for every i in [0, n) on up to `numThreads` threads including
/// the caller. Items are claimed dynamically; callers make every item write
/// its own outputs, so the claim order never shows in the results. If a thread
/// cannot be started the others, and at least the caller, do its share.
template <typename Fn>
void parallelFor(int64_t n, unsigned numThreads, Fn body) {
  int64_t numWorkers = std::min<int64_t>(resolveThreads(numThreads), n);
  if (numWorkers <= 1) {
    for (int64_t i = 0; i < n; ++i)
      body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next++; i < n; i = next++)
      body(i);
  };
  std::vector<std::thread> helpers;
  try {
    helpers.reserve(numWorkers - 1);
    for (int64_t w = 1; w < numWorkers; ++w)
      helpers.emplace_back(work);
  } catch (...) {
    // Fewer helpers: the work is shared among those that started.
  }
  work();
  for (std::thread &helper : helpers)
    helper.join();
}

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

//===----------------------------------------------------------------------===//
// Expert group
//===----------------------------------------------------------------------===//

/// The (token, slot) pairs grouped by expert with a counting sort, so each
/// expert's rows are in ascending token order and the plan is deterministic.
struct RoutingPlan {
  /// Packed rows of expert e are [offsets[e], offsets[e + 1]).
  std::unique_ptr<int64_t[]> offsets;
  /// The token each packed row comes from.
  std::unique_ptr<int64_t[]> rowToken;
  /// The packed row of slot j of token t at t * k + j, or -1 if skipped.
  std::unique_ptr<int64_t[]> slotRow;

  bool build(const int32_t *ids, const MoEShape &s);
  int64_t numRows(int64_t numExperts) const { return offsets[numExperts]; }
};

bool RoutingPlan::build(const int32_t *ids, const MoEShape &s) {
  int64_t numSlots = s.numTokens * s.topK;
  offsets = allocate<int64_t>(s.numExperts + 1);
  slotRow = allocate<int64_t>(numSlots);
  if (!offsets || !slotRow)
    return false;
  std::fill(offsets.get(), offsets.get() + s.numExperts + 1, 0);
  for (int64_t i = 0; i < numSlots; ++i)
    if (ids[i] >= 0 && ids[i] < s.numExperts)
      ++offsets[ids[i] + 1];
  for (int64_t e = 0; e < s.numExperts; ++e)
    offsets[e + 1] += offsets[e];
  rowToken = allocate<int64_t>(numRows(s.numExperts));
  std::unique_ptr<int64_t[]> cursor = allocate<int64_t>(s.numExperts);
  if (!rowToken || !cursor)
    return false;
  std::copy(offsets.get(), offsets.get() + s.numExperts, cursor.get());
  for (int64_t i = 0; i < numSlots; ++i) {
    bool valid = ids[i] >= 0 && ids[i] < s.numExperts;
    slotRow[i] = valid ? cursor[ids[i]]++ : -1;
    if (valid)
      rowToken[slotRow[i]] = i / s.topK;
  }
  return true;
}

/// One work item: rows [row, row + numRows) of an expert's packed block (row
/// is global) by columns [col, col + numCols) of its output.
struct Tile {
  int64_t expert, row, numRows, col, numCols;
};

/// Numbers the kTileRows x kTileCols tiles of every expert's [n_e, cols]
/// output, expert by expert.
class TileGrid {
public:
  bool build(const RoutingPlan &plan, int64_t numExperts, int64_t cols) {
    this->plan = &plan;
    this->numExperts = numExperts;
    this->cols = cols;
    firstTile = allocate<int64_t>(numExperts + 1);
    if (!firstTile)
      return false;
    firstTile[0] = 0;
    int64_t colTiles = ceilDiv(cols, kTileCols);
    for (int64_t e = 0; e < numExperts; ++e) {
      int64_t rows = plan.offsets[e + 1] - plan.offsets[e];
      firstTile[e + 1] = firstTile[e] + ceilDiv(rows, kTileRows) * colTiles;
    }
    return true;
  }

  int64_t size() const { return firstTile[numExperts]; }

  Tile operator[](int64_t i) const {
    int64_t e =
        std::upper_bound(firstTile.get(), firstTile.get() + numExperts, i) -
        firstTile.get() - 1;
    int64_t local = i - firstTile[e];
    int64_t colTiles = ceilDiv(cols, kTileCols);
    int64_t row = (local / colTiles) * kTileRows;
    int64_t col = (local % colTiles) * kTileCols;
    int64_t rows = plan->offsets[e + 1] - plan->offsets[e];
    return {e, plan->offsets[e] + row, std::min(kTileRows, rows - row), col,
            std::min(kTileCols, cols - col)};
  }

private:
  const RoutingPlan *plan = nullptr;
  int64_t numExperts = 0;
  int64_t cols = 0;
  std::unique_ptr<int64_t[]> firstTile;
};

/// Row stride of a scratch matrix: rows a power of two apart, such as 4 KiB,
/// map to the same L1 sets and evict each other in the GEMM micro-kernel.
int64_t paddedStride(int64_t cols) { return (cols + 15) / 16 * 16 + 16; }

/// Float scratch kept from call to call by each calling thread. The expert
/// group needs T*k*(2d+2f) floats (12 MiB for T=512 on cpu-small); fresh
/// memory of that size comes from mmap and costs page faults worth about 8%
/// of the layer, on every call.
class Workspace {
public:
  /// `n` floats of unspecified contents, or nullptr if they cannot be had.
  float *get(int64_t n) {
    if (n > size) {
      data = allocate<float>(n);
      size = data ? n : 0;
    }
    return data.get();
  }

private:
  std::unique_ptr<float[]> data;
  int64_t size = 0;
};

thread_local Workspace expertWorkspace;

/// Scratch of the expert group, in packed-row order, in expertWorkspace.
struct ExpertBuffers {
  int64_t inputStride, hiddenStride;
  float *input;  ///< [rows, d], gathered token rows
  float *hidden; ///< [rows, f], G, then act(G) * U
  float *up;     ///< [rows, f], U
  float *output; ///< [rows, d], Y, packed

  bool allocate(int64_t rows, const MoEShape &s) {
    inputStride = paddedStride(s.hidden);
    hiddenStride = paddedStride(s.ffn);
    int64_t inputSize = rows * inputStride, hiddenSize = rows * hiddenStride;
    input = expertWorkspace.get(inputSize + 2 * hiddenSize + rows * s.hidden);
    if (!input)
      return false;
    hidden = input + inputSize;
    up = hidden + hiddenSize;
    output = up + hiddenSize;
    return true;
  }
};

/// Fills combine's output rows [token0, token0 + kCombineTokens).
void combineTokens(const RoutingPlan &plan, const float *gates, const float *y,
                   float *out, const MoEShape &s, int64_t token0) {
  int64_t end = std::min(token0 + kCombineTokens, s.numTokens);
  for (int64_t t = token0; t < end; ++t) {
    float *outRow = out + t * s.hidden;
    std::fill(outRow, outRow + s.hidden, 0.0f);
    for (int64_t j = 0; j < s.topK; ++j) {
      int64_t row = plan.slotRow[t * s.topK + j];
      if (row < 0)
        continue;
      float gate = gates[t * s.topK + j];
      const float *yRow = y + row * s.hidden;
      for (int64_t i = 0; i < s.hidden; ++i)
        outRow[i] += gate * yRow[i];
    }
  }
}

bool failExperts(float *out, const MoEShape &s) {
  std::fill(out, out + s.numTokens * s.hidden, kNaN);
  return false;
}

//===----------------------------------------------------------------------===//
// C interface helpers
//===----------------------------------------------------------------------===//

template <typename T, int N> T *dataOf(StridedMemRefType<T, N> *m) {
  assert(m->strides[N - 1] == 1 && "memref rows must be contiguous");
  return m->data + m->offset;
}

template <typename T, int N> void fill(StridedMemRefType<T, N> *m, T value) {
  int64_t n = 1;
  for (int i = 0; i < N; ++i)
    n *= m->sizes[i];
  std::fill(dataOf(m), dataOf(m) + n, value);
}

} // namespace

unsigned moert::cpu::defaultNumThreads() {
  static const unsigned numThreads = [] {
    if (const char *env = std::getenv("MOERT_NUM_THREADS")) {
      char *end = nullptr;
      long value = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && value > 0 && value <= 1024)
        return static_cast<unsigned>(value);
    }
    return std::max(1u, std::thread::hardware_concurrency());
  }();
  return numThreads;
}

void moert::cpu::gemmABt(const float *a, int64_t lda, const float *b,
                         int64_t ldb, float *c, int64_t ldc, int64_t m,
                         int64_t n, int64_t k, unsigned numThreads) noexcept {
  int64_t colTiles = ceilDiv(n, kTileCols);
  parallelFor(ceilDiv(m, kTileRows) * colTiles, numThreads, [&](int64_t i) {
    int64_t row = (i / colTiles) * kTileRows;
    int64_t col = (i % colTiles) * kTileCols;
    detail::gemmABtSerial(
        a + row * lda, lda, b + col * ldb, ldb, c + row * ldc + col, ldc,
        std::min(kTileRows, m - row), std::min(kTileCols, n - col), k);
  });
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
      out[t * hidden + i] = xRow[i] / rms * w[i];
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
  RoutingPlan plan;
  ExpertBuffers buf;
  TileGrid ffnTiles, hiddenTiles;
  if (!plan.build(ids, s) || !buf.allocate(plan.numRows(s.numExperts), s) ||
      !ffnTiles.build(plan, s.numExperts, s.ffn) ||
      !hiddenTiles.build(plan, s.numExperts, s.hidden))
    return failExperts(out, s);

  const int64_t d = s.hidden, f = s.ffn;
  const int64_t ldIn = buf.inputStride, ldHid = buf.hiddenStride;
  for (int64_t r = 0; r < plan.numRows(s.numExperts); ++r)
    std::copy(x + plan.rowToken[r] * d, x + (plan.rowToken[r] + 1) * d,
              buf.input + r * ldIn);

  // Gate and up tiles of the same rows and columns together, so the SwiGLU
  // product reads both while they are in cache.
  parallelFor(ffnTiles.size(), numThreads, [&](int64_t i) {
    Tile t = ffnTiles[i];
    const float *a = buf.input + t.row * ldIn;
    int64_t weightOffset = (t.expert * f + t.col) * d;
    float *g = buf.hidden + t.row * ldHid + t.col;
    float *u = buf.up + t.row * ldHid + t.col;
    detail::gemmABtSerial(a, ldIn, gateProj + weightOffset, d, g, ldHid,
                          t.numRows, t.numCols, d);
    detail::gemmABtSerial(a, ldIn, upProj + weightOffset, d, u, ldHid,
                          t.numRows, t.numCols, d);
    detail::swiglu(g, u, t.numRows, t.numCols, ldHid, activation);
  });

  parallelFor(hiddenTiles.size(), numThreads, [&](int64_t i) {
    Tile t = hiddenTiles[i];
    detail::gemmABtSerial(buf.hidden + t.row * ldHid, ldHid,
                          downProj + (t.expert * d + t.col) * f, f,
                          buf.output + t.row * d + t.col, d, t.numRows,
                          t.numCols, f);
  });

  parallelFor(ceilDiv(s.numTokens, kCombineTokens), numThreads, [&](int64_t i) {
    combineTokens(plan, gates, buf.output, out, s, i * kCombineTokens);
  });
  return true;
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
  if (w->sizes[0] != hidden || out->sizes[0] != numTokens ||
      out->sizes[1] != hidden)
    return fill(out, kNaN);
  rmsNorm(dataOf(x), dataOf(w), dataOf(out), numTokens, hidden, eps);
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
