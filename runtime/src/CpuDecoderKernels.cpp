//===- CpuDecoderKernels.cpp - Dense decoder kernels ----------------------===//
//
// Attention runs in four parallel phases: the q, k, v projections (k and v
// straight into their cache rows), the per-token clamp, norms and RoPE, the
// softmax attention, and the output projection. The attention items are a
// block of tokens and one kv head, so that the query heads sharing that kv
// head read each cache row once. Every phase gives each output element to one
// work item with a fixed reduction order, so the bits do not depend on the
// thread count; and since no element's arithmetic depends on the blocking
// either, a chunk of tokens gives the same bits as decoding them one by one.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuDecoderKernels.h"
#include "moert/CpuKernels.h"

#include "CpuGemm.h"
#include "CpuKernelsInternal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

using namespace moert::cpu;
using namespace moert::cpu::detail;

namespace {

/// Query rows (token and head pairs) per attention work item, at least: the
/// item's score GEMM and value sum reuse each cache row they load across them.
constexpr int64_t kQueryRows = 16;

/// Whether value == a * b with a, b positive, without overflowing.
bool isProduct(int64_t value, int64_t a, int64_t b) {
  return a > 0 && b > 0 && value % b == 0 && value / b == a;
}

bool positionsValid(const int32_t *positions, int64_t numTokens,
                    int64_t maxPositions) {
  int64_t first = positions[0];
  if (first < 0 || first > maxPositions - numTokens)
    return false;
  for (int64_t i = 1; i < numTokens; ++i)
    if (positions[i] != first + i)
      return false;
  return true;
}

/// Rotates the pair (i, i + hd/2) of each of the `numHeads` heads in `row` by
/// the angle whose cosine and sine are c and s.
/// Rotates pair i of every head: elements (i, i + hd/2) (rotate_half), or
/// (2i, 2i + 1) when interleaved.
void rotatePair(float *row, int64_t numHeads, int64_t headDim, int64_t i,
                float c, float s, bool interleaved) {
  int64_t first = interleaved ? 2 * i : i;
  int64_t second = interleaved ? 2 * i + 1 : i + headDim / 2;
  for (int64_t h = 0; h < numHeads; ++h) {
    float *u = row + h * headDim;
    float a = u[first], b = u[second];
    u[first] = a * c - b * s;
    u[second] = b * c + a * s;
  }
}

/// Normalises, clamps and rotates one token's q [H*hd] and k, v [KV*hd].
/// The order is OLMoE's: q and k are normalised first, then q, k and v are
/// clamped.
void prepareToken(float *q, float *k, float *v, const float *qNorm,
                  const float *kNorm, int64_t position, const AttentionShape &s,
                  const AttentionOptions &o) {
  const int64_t qWidth = s.numHeads * s.headDim;
  const int64_t kvWidth = s.numKvHeads * s.headDim;
  // rmsNorm is elementwise after its reduction, so it may work in place; a
  // per-head norm is a norm over H (or KV) rows of hd.
  if (o.norm == QkNorm::Full) {
    rmsNorm(q, qNorm, q, 1, qWidth, o.normEps);
    rmsNorm(k, kNorm, k, 1, kvWidth, o.normEps);
  } else if (o.norm == QkNorm::PerHead) {
    rmsNorm(q, qNorm, q, s.numHeads, s.headDim, o.normEps);
    rmsNorm(k, kNorm, k, s.numKvHeads, s.headDim, o.normEps);
  }
  if (o.clip > 0.0f) {
    auto clamp = [&](float *row, int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        row[i] = std::clamp(row[i], -o.clip, o.clip);
    };
    clamp(q, qWidth);
    clamp(k, kvWidth);
    clamp(v, kvWidth);
  }
  // The angles in double: float would lose about position * 2^-24 radians.
  for (int64_t i = 0; i < s.headDim / 2; ++i) {
    double pair = static_cast<double>(i);
    double ramp = pair >= o.ropeRampHigh ? 1.0
                  : pair <= o.ropeRampLow
                      ? 0.0
                      : (pair - o.ropeRampLow) /
                            (double(o.ropeRampHigh) - double(o.ropeRampLow));
    double interpolation = (1.0 - ramp) + ramp / double(o.ropeFactor);
    double angle = static_cast<double>(position) *
                   (std::pow(static_cast<double>(o.ropeTheta),
                             -2.0 * pair / static_cast<double>(s.headDim)) *
                    interpolation);
    double attention = o.ropeAttentionFactor;
    float c = static_cast<float>(std::cos(angle) * attention);
    float sn = static_cast<float>(std::sin(angle) * attention);
    rotatePair(q, s.numHeads, s.headDim, i, c, sn, o.ropeInterleaved);
    rotatePair(k, s.numKvHeads, s.headDim, i, c, sn, o.ropeInterleaved);
  }
}

/// rows [n, width] += bias, unless bias is null.
void addBias(float *rows, const float *bias, int64_t n, int64_t width) {
  if (!bias)
    return;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < width; ++j)
      rows[t * width + j] += bias[j];
}

/// scores[0, n) = softmax(scores * scale), max-subtracted.
void softmaxInPlace(float *scores, int64_t n, float scale) {
  float maxScore = scores[0] * scale;
  for (int64_t j = 1; j < n; ++j)
    maxScore = std::max(maxScore, scores[j] * scale);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] * scale - maxScore);
    sum += scores[j];
  }
  for (int64_t j = 0; j < n; ++j)
    scores[j] /= sum;
}

} // namespace

namespace {
float widen(float v) { return v; }
float widen(uint16_t bits) {
  uint32_t f = uint32_t(bits) << 16;
  float v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
}

template <typename TW>
void embedOf(const int32_t *tokens, const TW *table, float *out,
             int64_t numTokens, int64_t vocab, int64_t hidden) {
  for (int64_t t = 0; t < numTokens; ++t) {
    float *row = out + t * hidden;
    if (tokens[t] < 0 || tokens[t] >= vocab) {
      std::fill(row, row + hidden, kNaN);
      continue;
    }
    const TW *from = table + tokens[t] * hidden;
    for (int64_t c = 0; c < hidden; ++c)
      row[c] = widen(from[c]);
  }
}

template <typename TW>
void embedCall(StridedMemRefType<int32_t, 1> *tokens,
               StridedMemRefType<TW, 2> *table,
               StridedMemRefType<float, 2> *out) {
  int64_t numTokens = tokens->sizes[0], hidden = table->sizes[1];
  if (out->sizes[0] != numTokens || out->sizes[1] != hidden)
    return fill(out, kNaN);
  embed(dataOf(tokens), dataOf(table), dataOf(out), numTokens, table->sizes[0],
        hidden);
}

template <typename TW>
bool mlpOf(const float *x, const TW *gate, const TW *up, const TW *down,
           float *out, int64_t n, int64_t d, int64_t f, Activation activation,
           unsigned numThreads) noexcept {
  std::unique_ptr<float[]> g = allocate<float>(n * f);
  std::unique_ptr<float[]> u = allocate<float>(n * f);
  if (!g || !u ||
      (activation != Activation::Silu && activation != Activation::Gelu)) {
    std::fill(out, out + n * d, kNaN);
    return false;
  }
  gemmABt(x, d, gate, d, g.get(), f, n, f, d, numThreads);
  gemmABt(x, d, up, d, u.get(), f, n, f, d, numThreads);
  detail::swiglu(g.get(), u.get(), n, f, f, activation);
  gemmABt(g.get(), f, down, f, out, d, n, d, f, numThreads);
  return true;
}

template <typename TW>
void mlpCall(StridedMemRefType<float, 2> *x, StridedMemRefType<TW, 2> *gate,
             StridedMemRefType<TW, 2> *up, StridedMemRefType<TW, 2> *down,
             StridedMemRefType<float, 2> *out, int32_t activation) {
  int64_t n = x->sizes[0], d = x->sizes[1], f = gate->sizes[0];
  if (gate->sizes[1] != d || up->sizes[0] != f || up->sizes[1] != d ||
      down->sizes[0] != d || down->sizes[1] != f || out->sizes[0] != n ||
      out->sizes[1] != d)
    return fill(out, kNaN);
  mlpOf(dataOf(x), dataOf(gate), dataOf(up), dataOf(down), dataOf(out), n, d, f,
        static_cast<Activation>(activation), 0);
}

template <typename TW>
void unembedCall(StridedMemRefType<float, 2> *x, StridedMemRefType<TW, 2> *w,
                 StridedMemRefType<float, 2> *out) {
  int64_t numTokens = x->sizes[0], hidden = x->sizes[1], vocab = w->sizes[0];
  if (w->sizes[1] != hidden || out->sizes[0] != numTokens ||
      out->sizes[1] != vocab)
    return fill(out, kNaN);
  gemmABt(dataOf(x), hidden, dataOf(w), hidden, dataOf(out), vocab, numTokens,
          vocab, hidden);
}
} // namespace

void moert::cpu::embed(const int32_t *tokens, const float *table, float *out,
                       int64_t numTokens, int64_t vocab,
                       int64_t hidden) noexcept {
  embedOf(tokens, table, out, numTokens, vocab, hidden);
}

void moert::cpu::embed(const int32_t *tokens, const uint16_t *table, float *out,
                       int64_t numTokens, int64_t vocab,
                       int64_t hidden) noexcept {
  embedOf(tokens, table, out, numTokens, vocab, hidden);
}

namespace {
template <typename TW>
bool attentionOf(const float *x, const int32_t *positions, const TW *wq,
                 const TW *wk, const TW *wv, const TW *wo, const float *qNorm,
                 const float *kNorm, float *kCache, float *vCache, float *out,
                 const AttentionShape &s, const AttentionOptions &o,
                 unsigned numThreads) noexcept {
  const int64_t n = s.numTokens, hd = s.headDim;
  if (n <= 0)
    return n == 0;
  auto fail = [&] {
    std::fill(out, out + n * s.hidden, kNaN);
    return false;
  };
  bool valid = s.numHeads > 0 && s.numKvHeads > 0 &&
               s.numHeads % s.numKvHeads == 0 && hd > 0 && hd % 2 == 0 &&
               o.ropeTheta > 0.0f && o.scale >= 0.0f && o.ropeFactor > 0.0f &&
               std::isfinite(o.ropeFactor) && o.ropeAttentionFactor > 0.0f &&
               std::isfinite(o.ropeAttentionFactor) && o.ropeRampLow >= 0.0f &&
               o.ropeRampHigh >= o.ropeRampLow &&
               std::isfinite(o.ropeRampHigh) && o.slidingWindow >= 0 &&
               std::isfinite(o.scale) &&
               (o.norm == QkNorm::None || o.norm == QkNorm::Full ||
                o.norm == QkNorm::PerHead) &&
               positionsValid(positions, n, s.maxPositions);
  if (!valid)
    return fail();

  const int64_t qWidth = s.numHeads * hd, kvWidth = s.numKvHeads * hd;
  const int64_t groupSize = s.numHeads / s.numKvHeads;
  const int64_t groupWidth = groupSize * hd;
  const int64_t first = positions[0], numKeys = first + n;
  // Without a window every earlier key is seen (a window longer than the
  // cache).
  const int64_t window = o.slidingWindow > 0 ? o.slidingWindow : numKeys + 1;
  const int64_t blockTokens =
      std::min(n, std::max<int64_t>(1, kQueryRows / groupSize));
  const int64_t blockRows = blockTokens * groupSize;
  const int64_t numItems = ceilDiv(n, blockTokens) * s.numKvHeads;
  const int64_t numWorkers = workerCount(numItems, numThreads);
  // Each worker's queries and scores.
  const int64_t workerSize = blockRows * (hd + numKeys);
  std::unique_ptr<float[]> q = allocate<float>(n * qWidth);
  std::unique_ptr<float[]> scratch = allocate<float>(numWorkers * workerSize);
  if (!q || !scratch)
    return fail();

  float *k = kCache + first * kvWidth, *v = vCache + first * kvWidth;
  gemmABt(x, s.hidden, wq, s.hidden, q.get(), qWidth, n, qWidth, s.hidden,
          numThreads);
  gemmABt(x, s.hidden, wk, s.hidden, k, kvWidth, n, kvWidth, s.hidden,
          numThreads);
  gemmABt(x, s.hidden, wv, s.hidden, v, kvWidth, n, kvWidth, s.hidden,
          numThreads);
  addBias(q.get(), o.qBias, n, qWidth);
  addBias(k, o.kBias, n, kvWidth);
  addBias(v, o.vBias, n, kvWidth);
  parallelFor(n, numThreads, [&](int64_t t) {
    prepareToken(q.get() + t * qWidth, k + t * kvWidth, v + t * kvWidth, qNorm,
                 kNorm, first + t, s, o);
  });

  const float scale =
      o.scale > 0.0f ? o.scale : 1.0f / std::sqrt(static_cast<float>(hd));
  parallelForWorkers(numItems, numWorkers, [&](int64_t worker, int64_t item) {
    int64_t kvHead = item % s.numKvHeads;
    int64_t token0 = (item / s.numKvHeads) * blockTokens;
    int64_t tokens = std::min(blockTokens, n - token0);
    int64_t rows = tokens * groupSize;
    // The block's tokens see cache positions [keyStart, blockKeys): the
    // first one from keyStart, the last one up to blockKeys - 1.
    int64_t blockKeys = first + token0 + tokens;
    int64_t keyStart = std::max<int64_t>(0, first + token0 - window + 1);
    int64_t width = blockKeys - keyStart;
    // Row i of the block is head kvHead * groupSize + i % groupSize of token
    // token0 + i / groupSize: the group's heads are adjacent in q.
    float *qGroup = q.get() + token0 * qWidth + kvHead * groupWidth;
    auto qRow = [&](int64_t i) {
      return qGroup + (i / groupSize) * qWidth + (i % groupSize) * hd;
    };
    float *queries = scratch.get() + worker * workerSize;
    float *scores = queries + blockRows * hd;
    for (int64_t t = 0; t < tokens; ++t)
      std::copy_n(qGroup + t * qWidth, groupWidth, queries + t * groupWidth);
    gemmABtSerial(queries, hd, kCache + keyStart * kvWidth + kvHead * hd,
                  kvWidth, scores, width, rows, width, hd);
    for (int64_t i = 0; i < rows; ++i) {
      int64_t position = first + token0 + i / groupSize;
      int64_t lowest = std::max(keyStart, position - window + 1);
      softmaxInPlace(scores + i * width + (lowest - keyStart),
                     position + 1 - lowest, scale);
    }
    // The queries are copied, so the outputs replace them in q. Each output
    // sums its values in ascending key order, as a row-by-row loop would.
    for (int64_t i = 0; i < rows; ++i)
      std::fill(qRow(i), qRow(i) + hd, 0.0f);
    const float *vHead = vCache + kvHead * hd;
    for (int64_t j = keyStart; j < blockKeys; ++j) {
      const float *vRow = vHead + j * kvWidth;
      // Key j is seen by the tokens at positions j .. j + window - 1.
      int64_t firstRow = std::max<int64_t>(0, j - first - token0) * groupSize;
      int64_t endRow =
          std::min<int64_t>(rows, (j + window - first - token0) * groupSize);
      for (int64_t i = firstRow; i < endRow; ++i) {
        float p = scores[i * width + (j - keyStart)];
        float *sum = qRow(i);
        for (int64_t c = 0; c < hd; ++c)
          sum[c] += p * vRow[c];
      }
    }
  });

  gemmABt(q.get(), qWidth, wo, qWidth, out, s.hidden, n, s.hidden, qWidth,
          numThreads);
  addBias(out, o.oBias, n, s.hidden);
  return true;
}
} // namespace

bool moert::cpu::attention(const float *x, const int32_t *positions,
                           const float *wq, const float *wk, const float *wv,
                           const float *wo, const float *qNorm,
                           const float *kNorm, float *kCache, float *vCache,
                           float *out, const AttentionShape &s,
                           const AttentionOptions &o,
                           unsigned numThreads) noexcept {
  return attentionOf(x, positions, wq, wk, wv, wo, qNorm, kNorm, kCache, vCache,
                     out, s, o, numThreads);
}

bool moert::cpu::attention(const float *x, const int32_t *positions,
                           const uint16_t *wq, const uint16_t *wk,
                           const uint16_t *wv, const uint16_t *wo,
                           const float *qNorm, const float *kNorm,
                           float *kCache, float *vCache, float *out,
                           const AttentionShape &s, const AttentionOptions &o,
                           unsigned numThreads) noexcept {
  return attentionOf(x, positions, wq, wk, wv, wo, qNorm, kNorm, kCache, vCache,
                     out, s, o, numThreads);
}

bool moert::cpu::mlp(const float *x, const float *gate, const float *up,
                     const float *down, float *out, int64_t numTokens,
                     int64_t hidden, int64_t ffn, Activation activation,
                     unsigned numThreads) noexcept {
  return mlpOf(x, gate, up, down, out, numTokens, hidden, ffn, activation,
               numThreads);
}

bool moert::cpu::mlp(const float *x, const uint16_t *gate, const uint16_t *up,
                     const uint16_t *down, float *out, int64_t numTokens,
                     int64_t hidden, int64_t ffn, Activation activation,
                     unsigned numThreads) noexcept {
  return mlpOf(x, gate, up, down, out, numTokens, hidden, ffn, activation,
               numThreads);
}

bool moert::cpu::exitTestLmHead(const float *h, const float *norm,
                                float normEps, const float *lmHead,
                                int8_t *exits, int64_t numTokens,
                                int64_t hidden, int64_t vocab,
                                int32_t criterion, float tau,
                                bool unitNorm) noexcept {
  std::fill(exits, exits + numTokens, int8_t(0));
  std::unique_ptr<float[]> normed(new (std::nothrow) float[numTokens * hidden]);
  std::unique_ptr<float[]> logits(new (std::nothrow) float[numTokens * vocab]);
  if (!normed || !logits)
    return false;
  if (norm || unitNorm)
    rmsNorm(h, norm, normed.get(), numTokens, hidden, normEps);
  else
    std::copy(h, h + numTokens * hidden, normed.get());
  gemmABt(normed.get(), hidden, lmHead, hidden, logits.get(), vocab, numTokens,
          vocab, hidden);
  for (int64_t t = 0; t < numTokens; ++t) {
    const float *row = logits.get() + t * vocab;
    double maxLogit = *std::max_element(row, row + vocab), sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v)
      sum += std::exp(double(row[v]) - maxLogit);
    // max p = 1 / sum; entropy = log(sum) - sum_v p_v (x_v - max).
    double weighted = 0.0;
    for (int64_t v = 0; v < vocab; ++v) {
      double shifted = double(row[v]) - maxLogit;
      weighted += std::exp(shifted) / sum * shifted;
    }
    double value = criterion == 2 ? 1.0 / sum : std::log(sum) - weighted;
    if (!std::isfinite(value))
      continue;
    exits[t] = criterion == 2 ? value >= tau : value <= tau;
  }
  return true;
}

//===----------------------------------------------------------------------===//
// C interface
//===----------------------------------------------------------------------===//

void _mlir_ciface_moert_embed(StridedMemRefType<int32_t, 1> *tokens,
                              StridedMemRefType<float, 2> *table,
                              StridedMemRefType<float, 2> *out) {
  embedCall(tokens, table, out);
}

void _mlir_ciface_moert_embed_bf16(StridedMemRefType<int32_t, 1> *tokens,
                                   StridedMemRefType<uint16_t, 2> *table,
                                   StridedMemRefType<float, 2> *out) {
  embedCall(tokens, table, out);
}

void _mlir_ciface_moert_mlp(StridedMemRefType<float, 2> *x,
                            StridedMemRefType<float, 2> *gate,
                            StridedMemRefType<float, 2> *up,
                            StridedMemRefType<float, 2> *down,
                            StridedMemRefType<float, 2> *out,
                            int32_t activation) {
  mlpCall(x, gate, up, down, out, activation);
}

void _mlir_ciface_moert_mlp_bf16(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<uint16_t, 2> *gate,
                                 StridedMemRefType<uint16_t, 2> *up,
                                 StridedMemRefType<uint16_t, 2> *down,
                                 StridedMemRefType<float, 2> *out,
                                 int32_t activation) {
  mlpCall(x, gate, up, down, out, activation);
}

void _mlir_ciface_moert_exit_test_lm(StridedMemRefType<float, 2> *h,
                                     StridedMemRefType<float, 1> *norm,
                                     int32_t hasNorm, float normEps,
                                     StridedMemRefType<float, 2> *lmHead,
                                     StridedMemRefType<int8_t, 1> *exits,
                                     int32_t criterion, float tau) {
  int64_t numTokens = h->sizes[0], hidden = h->sizes[1];
  int64_t vocab = lmHead->sizes[0];
  if (lmHead->sizes[1] != hidden || exits->sizes[0] != numTokens ||
      (hasNorm == 1 && norm->sizes[0] != hidden) || hasNorm < 0 || hasNorm > 2)
    return fill(exits, int8_t(0));
  exitTestLmHead(dataOf(h), hasNorm == 1 ? dataOf(norm) : nullptr, normEps,
                 dataOf(lmHead), dataOf(exits), numTokens, hidden, vocab,
                 criterion, tau, /*unitNorm=*/hasNorm == 2);
}

void _mlir_ciface_moert_unembed(StridedMemRefType<float, 2> *x,
                                StridedMemRefType<float, 2> *w,
                                StridedMemRefType<float, 2> *out) {
  unembedCall(x, w, out);
}

void _mlir_ciface_moert_unembed_bf16(StridedMemRefType<float, 2> *x,
                                     StridedMemRefType<uint16_t, 2> *w,
                                     StridedMemRefType<float, 2> *out) {
  unembedCall(x, w, out);
}

namespace {
template <typename TW>
void attentionCall(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *positions,
    StridedMemRefType<TW, 2> *wq, StridedMemRefType<TW, 2> *wk,
    StridedMemRefType<TW, 2> *wv, StridedMemRefType<TW, 2> *wo,
    StridedMemRefType<float, 1> *qNorm, StridedMemRefType<float, 1> *kNorm,
    StridedMemRefType<float, 2> *kCache, StridedMemRefType<float, 2> *vCache,
    StridedMemRefType<float, 2> *out, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, float ropeTheta, float clip, int32_t normKind,
    float normEps, float scale, int32_t ropeInterleaved, float ropeFactor,
    float ropeRampLow, float ropeRampHigh, float ropeAttentionFactor,
    int64_t slidingWindow, StridedMemRefType<float, 1> *qBias,
    StridedMemRefType<float, 1> *kBias, StridedMemRefType<float, 1> *vBias,
    StridedMemRefType<float, 1> *oBias) {
  AttentionShape s{x->sizes[0], x->sizes[1], numHeads,
                   numKvHeads,  headDim,     kCache->sizes[0]};
  int64_t qWidth = wq->sizes[0], kvWidth = wk->sizes[0];
  auto hasSizes = [](auto *m, int64_t rows, int64_t cols) {
    return m->sizes[0] == rows && m->sizes[1] == cols;
  };
  // normKind 0 ignores the weights; an invalid kind is rejected by attention.
  auto normFits = [&](StridedMemRefType<float, 1> *w, int64_t fullWidth) {
    return (normKind != 1 || w->sizes[0] == fullWidth) &&
           (normKind != 2 || w->sizes[0] == headDim);
  };
  bool consistent =
      isProduct(qWidth, numHeads, headDim) &&
      isProduct(kvWidth, numKvHeads, headDim) && wq->sizes[1] == s.hidden &&
      hasSizes(wk, kvWidth, s.hidden) && hasSizes(wv, kvWidth, s.hidden) &&
      hasSizes(wo, s.hidden, qWidth) && positions->sizes[0] == s.numTokens &&
      hasSizes(kCache, s.maxPositions, kvWidth) &&
      hasSizes(vCache, s.maxPositions, kvWidth) &&
      hasSizes(out, s.numTokens, s.hidden) && normFits(qNorm, qWidth) &&
      normFits(kNorm, kvWidth);
  // A bias is absent (size 0) or as wide as its projection.
  auto bias = [&](StridedMemRefType<float, 1> *b, int64_t width,
                  const float *&data) {
    data = b->sizes[0] == width ? dataOf(b) : nullptr;
    return b->sizes[0] == 0 || b->sizes[0] == width;
  };
  const float *qb, *kb, *vb, *ob;
  consistent &= bias(qBias, qWidth, qb) && bias(kBias, kvWidth, kb) &&
                bias(vBias, kvWidth, vb) && bias(oBias, s.hidden, ob);
  if (!consistent)
    return fill(out, kNaN);
  bool usesNorms = normKind == 1 || normKind == 2;
  attention(dataOf(x), dataOf(positions), dataOf(wq), dataOf(wk), dataOf(wv),
            dataOf(wo), usesNorms ? dataOf(qNorm) : nullptr,
            usesNorms ? dataOf(kNorm) : nullptr, dataOf(kCache), dataOf(vCache),
            dataOf(out), s,
            {ropeTheta, clip, static_cast<QkNorm>(normKind), normEps, scale,
             ropeInterleaved != 0, ropeFactor, ropeRampLow, ropeRampHigh,
             ropeAttentionFactor, slidingWindow, qb, kb, vb, ob});
}
} // namespace

void _mlir_ciface_moert_attention(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *positions,
    StridedMemRefType<float, 2> *wq, StridedMemRefType<float, 2> *wk,
    StridedMemRefType<float, 2> *wv, StridedMemRefType<float, 2> *wo,
    StridedMemRefType<float, 1> *qNorm, StridedMemRefType<float, 1> *kNorm,
    StridedMemRefType<float, 2> *kCache, StridedMemRefType<float, 2> *vCache,
    StridedMemRefType<float, 2> *out, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, float ropeTheta, float clip, int32_t normKind,
    float normEps, float scale, int32_t ropeInterleaved, float ropeFactor,
    float ropeRampLow, float ropeRampHigh, float ropeAttentionFactor,
    int64_t slidingWindow, StridedMemRefType<float, 1> *qBias,
    StridedMemRefType<float, 1> *kBias, StridedMemRefType<float, 1> *vBias,
    StridedMemRefType<float, 1> *oBias) {
  attentionCall(x, positions, wq, wk, wv, wo, qNorm, kNorm, kCache, vCache, out,
                numHeads, numKvHeads, headDim, ropeTheta, clip, normKind,
                normEps, scale, ropeInterleaved, ropeFactor, ropeRampLow,
                ropeRampHigh, ropeAttentionFactor, slidingWindow, qBias, kBias,
                vBias, oBias);
}

void _mlir_ciface_moert_attention_bf16(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *positions,
    StridedMemRefType<uint16_t, 2> *wq, StridedMemRefType<uint16_t, 2> *wk,
    StridedMemRefType<uint16_t, 2> *wv, StridedMemRefType<uint16_t, 2> *wo,
    StridedMemRefType<float, 1> *qNorm, StridedMemRefType<float, 1> *kNorm,
    StridedMemRefType<float, 2> *kCache, StridedMemRefType<float, 2> *vCache,
    StridedMemRefType<float, 2> *out, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, float ropeTheta, float clip, int32_t normKind,
    float normEps, float scale, int32_t ropeInterleaved, float ropeFactor,
    float ropeRampLow, float ropeRampHigh, float ropeAttentionFactor,
    int64_t slidingWindow, StridedMemRefType<float, 1> *qBias,
    StridedMemRefType<float, 1> *kBias, StridedMemRefType<float, 1> *vBias,
    StridedMemRefType<float, 1> *oBias) {
  attentionCall(x, positions, wq, wk, wv, wo, qNorm, kNorm, kCache, vCache, out,
                numHeads, numKvHeads, headDim, ropeTheta, clip, normKind,
                normEps, scale, ropeInterleaved, ropeFactor, ropeRampLow,
                ropeRampHigh, ropeAttentionFactor, slidingWindow, qBias, kBias,
                vBias, oBias);
}
