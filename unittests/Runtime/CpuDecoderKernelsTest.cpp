//===- CpuDecoderKernelsTest.cpp - Tests of the dense decoder kernels -----===//
//
// Checks embed, unembed and attention against naive double-precision loops
// written straight from the formulas of CpuDecoderKernels.h, the KV cache by
// decoding token by token and in chunks, causality, the rejection of bad
// positions and sizes, and that the bits do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuDecoderKernels.h"
#include "KernelTestUtils.h"
#include "moert/CpuKernels.h"

#include "gtest/gtest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace moert::cpu;
using moert::testing::allNaN;
using moert::testing::expectBitwiseEqual;
using moert::testing::memref;
using moert::testing::randomVector;
using moert::testing::roundToBF16;

namespace {

constexpr double kTolerance = 1e-4;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

std::vector<float> randomVector(size_t n, float scale, unsigned seed,
                                float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(offset - scale, offset + scale);
  std::vector<float> v(n);
  for (float &value : v)
    value = dist(rng);
  return v;
}

void expectClose(const float *actual, const double *expected, size_t n,
                 double tolerance = kTolerance) {
  for (size_t i = 0; i < n; ++i)
    ASSERT_NEAR(actual[i], expected[i],
                tolerance + tolerance * std::fabs(expected[i]))
        << "at element " << i;
}

double dotRef(const float *a, const float *b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i)
    sum += double(a[i]) * double(b[i]);
  return sum;
}

//===----------------------------------------------------------------------===//
// Embed and unembed
//===----------------------------------------------------------------------===//

TEST(CpuDecoderKernels, Embed) {
  const int64_t vocab = 10, hidden = 12;
  std::vector<float> table = randomVector(vocab * hidden, 1.0f, 1);
  std::vector<int32_t> tokens = {3, 0, 9, -1, 10, 3};
  const int64_t n = tokens.size();
  std::vector<float> out(n * hidden, 7.0f);
  auto tokensM = memref<int32_t, 1>(tokens, {n});
  auto tableM = memref<float, 2>(table, {vocab, hidden});
  auto outM = memref<float, 2>(out, {n, hidden});
  _mlir_ciface_moert_embed(&tokensM, &tableM, &outM);
  for (int64_t t = 0; t < n; ++t) {
    const float *row = out.data() + t * hidden;
    if (tokens[t] < 0 || tokens[t] >= vocab) {
      EXPECT_TRUE(
          std::all_of(row, row + hidden, [](float v) { return std::isnan(v); }))
          << "token " << t;
      continue;
    }
    EXPECT_EQ(std::memcmp(row, table.data() + tokens[t] * hidden,
                          hidden * sizeof(float)),
              0)
        << "token " << t;
  }

  // out claims the wrong width.
  auto narrowM = memref<float, 2>(out, {n * 2, hidden / 2});
  _mlir_ciface_moert_embed(&tokensM, &tableM, &narrowM);
  EXPECT_TRUE(allNaN(out));
}

TEST(CpuDecoderKernels, Unembed) {
  // Vocab and hidden with GEMM tails; one token (decode) and several.
  const int64_t vocab = 71, hidden = 43;
  std::vector<float> w = randomVector(vocab * hidden, 1.0f, 2);
  for (int64_t n : {1, 5}) {
    std::vector<float> x = randomVector(n * hidden, 1.0f, 3);
    std::vector<float> out(n * vocab);
    auto xM = memref<float, 2>(x, {n, hidden});
    auto wM = memref<float, 2>(w, {vocab, hidden});
    auto outM = memref<float, 2>(out, {n, vocab});
    _mlir_ciface_moert_unembed(&xM, &wM, &outM);
    std::vector<double> ref(n * vocab);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t v = 0; v < vocab; ++v)
        ref[t * vocab + v] =
            dotRef(x.data() + t * hidden, w.data() + v * hidden, hidden);
    expectClose(out.data(), ref.data(), ref.size());

    // w's rows are not hidden long.
    auto badWM = memref<float, 2>(w, {hidden, vocab});
    _mlir_ciface_moert_unembed(&xM, &badWM, &outM);
    EXPECT_TRUE(allNaN(out));
  }
}

// The bf16 forms read a bf16 table / LM head and give bitwise what the f32
// forms give on its widening (decode and prefill rows, GEMM tails); an
// out-of-range token still gives a NaN row.
TEST(CpuDecoderKernels, EmbedAndUnembedFromBF16) {
  const int64_t vocab = 71, hidden = 43;
  std::vector<float> w = randomVector(vocab * hidden, 1.0f, 4);
  std::vector<uint16_t> bits = roundToBF16(w);
  auto wM = memref<float, 2>(w, {vocab, hidden});
  auto bitsM = memref<uint16_t, 2>(bits, {vocab, hidden});
  std::vector<int32_t> tokens = {3, 70, -1, 71, 0};
  const int64_t numTokens = tokens.size();
  std::vector<float> rows(numTokens * hidden), rowsBF16(numTokens * hidden);
  auto tokensM = memref<int32_t, 1>(tokens, {numTokens});
  auto rowsM = memref<float, 2>(rows, {numTokens, hidden});
  auto rowsBF16M = memref<float, 2>(rowsBF16, {numTokens, hidden});
  _mlir_ciface_moert_embed(&tokensM, &wM, &rowsM);
  _mlir_ciface_moert_embed_bf16(&tokensM, &bitsM, &rowsBF16M);
  EXPECT_EQ(
      std::memcmp(rows.data(), rowsBF16.data(), rows.size() * sizeof(float)),
      0);
  EXPECT_TRUE(std::isnan(rowsBF16[2 * hidden]) &&
              std::isnan(rowsBF16[3 * hidden]));
  for (int64_t n : {1, 5}) {
    std::vector<float> x = randomVector(n * hidden, 1.0f, 5);
    std::vector<float> out(n * vocab), outBF16(n * vocab);
    auto xM = memref<float, 2>(x, {n, hidden});
    auto outM = memref<float, 2>(out, {n, vocab});
    auto outBF16M = memref<float, 2>(outBF16, {n, vocab});
    _mlir_ciface_moert_unembed(&xM, &wM, &outM);
    _mlir_ciface_moert_unembed_bf16(&xM, &bitsM, &outBF16M);
    EXPECT_EQ(
        std::memcmp(out.data(), outBF16.data(), out.size() * sizeof(float)), 0)
        << n << " rows";
  }
}

// The dense MLP against its formula in double, SiLU and tanh GELU, one
// token and several (GEMM tails); its bf16 form bitwise against the f32 one
// on the widened weights; mismatched shapes give NaN.
TEST(CpuDecoderKernels, DenseMlp) {
  const int64_t hidden = 21, ffn = 37;
  std::vector<float> gate = randomVector(ffn * hidden, 0.5f, 6);
  std::vector<float> up = randomVector(ffn * hidden, 0.5f, 7);
  std::vector<float> down = randomVector(hidden * ffn, 0.5f, 8);
  for (int32_t activation : {0, 1}) {
    for (int64_t n : {1, 6}) {
      std::vector<float> x = randomVector(n * hidden, 1.0f, 9);
      std::vector<float> out(n * hidden, 7.0f);
      auto xM = memref<float, 2>(x, {n, hidden});
      auto gateM = memref<float, 2>(gate, {ffn, hidden});
      auto upM = memref<float, 2>(up, {ffn, hidden});
      auto downM = memref<float, 2>(down, {hidden, ffn});
      auto outM = memref<float, 2>(out, {n, hidden});
      _mlir_ciface_moert_mlp(&xM, &gateM, &upM, &downM, &outM, activation);
      std::vector<double> ref(n * hidden, 0.0), h(ffn);
      for (int64_t t = 0; t < n; ++t) {
        const float *row = x.data() + t * hidden;
        for (int64_t j = 0; j < ffn; ++j) {
          double g = dotRef(row, gate.data() + j * hidden, hidden);
          double u = dotRef(row, up.data() + j * hidden, hidden);
          double z = activation == 0 ? g
                                     : 2.0 * std::sqrt(2.0 / M_PI) *
                                           (g + 0.044715 * g * g * g);
          h[j] = g / (1.0 + std::exp(-z)) * u;
        }
        for (int64_t o = 0; o < hidden; ++o)
          for (int64_t j = 0; j < ffn; ++j)
            ref[t * hidden + o] += h[j] * down[o * ffn + j];
      }
      expectClose(out.data(), ref.data(), ref.size());

      std::vector<float> gateW = gate, upW = up, downW = down;
      std::vector<uint16_t> gateB = roundToBF16(gateW), upB = roundToBF16(upW),
                            downB = roundToBF16(downW);
      std::vector<float> wide(n * hidden), bits(n * hidden);
      auto gateWM = memref<float, 2>(gateW, {ffn, hidden});
      auto upWM = memref<float, 2>(upW, {ffn, hidden});
      auto downWM = memref<float, 2>(downW, {hidden, ffn});
      auto gateBM = memref<uint16_t, 2>(gateB, {ffn, hidden});
      auto upBM = memref<uint16_t, 2>(upB, {ffn, hidden});
      auto downBM = memref<uint16_t, 2>(downB, {hidden, ffn});
      auto wideM = memref<float, 2>(wide, {n, hidden});
      auto bitsM = memref<float, 2>(bits, {n, hidden});
      _mlir_ciface_moert_mlp(&xM, &gateWM, &upWM, &downWM, &wideM, activation);
      _mlir_ciface_moert_mlp_bf16(&xM, &gateBM, &upBM, &downBM, &bitsM,
                                  activation);
      expectBitwiseEqual(bits, wide);

      // down's rows are not hidden long.
      auto badDownM = memref<float, 2>(down, {ffn, hidden});
      _mlir_ciface_moert_mlp(&xM, &gateM, &upM, &badDownM, &outM, activation);
      EXPECT_TRUE(allNaN(out));
    }
  }
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

struct AttentionParam {
  int64_t numHeads, numKvHeads;
  int32_t normKind;
  float clip;
};

/// The weights, inputs and KV cache of a sequence of `numTokens` tokens.
struct AttentionCase {
  int64_t numTokens, hidden, numHeads, numKvHeads, headDim, maxPositions;
  float ropeTheta = 10000.0f, clip;
  int32_t normKind;
  float normEps = 1e-6f;
  float scale = 0.0f;       ///< 0: 1/sqrt(head_dim)
  bool interleaved = false; ///< RoPE on pairs (2i, 2i+1), as LoopLM
  /// RoPE scaling (#moe.rope_scaling); the defaults scale nothing.
  float ropeFactor = 1.0f, rampLow = 0.0f, rampHigh = 0.0f,
        ropeAttention = 1.0f;
  int64_t window = 0; ///< sliding window; 0: none
  /// Projection biases; empty: none (withBiases fills them).
  std::vector<float> qBias, kBias, vBias, oBias;
  void withBiases(unsigned seed) {
    qBias = randomVector(qWidth(), 0.5f, seed);
    kBias = randomVector(kvWidth(), 0.5f, seed + 1);
    vBias = randomVector(kvWidth(), 0.5f, seed + 2);
    oBias = randomVector(hidden, 0.5f, seed + 3);
  }
  std::vector<float> x, wq, wk, wv, wo, qNorm, kNorm, kCache, vCache;
  /// With roundProjections: the projections' bf16 bits, which runAt passes
  /// to moert_attention_bf16.
  std::vector<uint16_t> wqBits, wkBits, wvBits, woBits;
  bool bf16 = false;

  /// Rounds the projections to bf16 (wq..wo become the widening of the bits)
  /// and runs the bf16 kernel from then on if `useBits`.
  void roundProjections(bool useBits) {
    wqBits = roundToBF16(wq);
    wkBits = roundToBF16(wk);
    wvBits = roundToBF16(wv);
    woBits = roundToBF16(wo);
    bf16 = useBits;
  }

  int64_t qWidth() const { return numHeads * headDim; }
  int64_t kvWidth() const { return numKvHeads * headDim; }

  /// Random data; the caches start as NaN, so any read of a row that this
  /// sequence has not written shows in the output.
  AttentionCase(const AttentionParam &p, int64_t numTokens, int64_t hidden,
                int64_t headDim, int64_t maxPositions, unsigned seed)
      : numTokens(numTokens), hidden(hidden), numHeads(p.numHeads),
        numKvHeads(p.numKvHeads), headDim(headDim), maxPositions(maxPositions),
        clip(p.clip), normKind(p.normKind),
        x(randomVector(numTokens * hidden, 1.0f, seed)),
        wq(randomVector(qWidth() * hidden, 0.5f, seed + 1)),
        wk(randomVector(kvWidth() * hidden, 0.5f, seed + 2)),
        wv(randomVector(kvWidth() * hidden, 0.5f, seed + 3)),
        wo(randomVector(hidden * qWidth(), 0.5f, seed + 4)),
        qNorm(randomVector(normWidth(qWidth()), 0.5f, seed + 5, 1.0f)),
        kNorm(randomVector(normWidth(kvWidth()), 0.5f, seed + 6, 1.0f)) {
    resetCache();
  }

  int64_t normWidth(int64_t fullWidth) const {
    return normKind == 1 ? fullWidth : normKind == 2 ? headDim : 1;
  }

  void resetCache() {
    kCache.assign(maxPositions * kvWidth(), kNaN);
    vCache.assign(maxPositions * kvWidth(), kNaN);
  }

  /// Runs tokens [first, first + count) at positions first.. through the C
  /// interface.
  std::vector<float> run(int64_t first, int64_t count) {
    std::vector<int32_t> positions(count);
    for (int64_t i = 0; i < count; ++i)
      positions[i] = static_cast<int32_t>(first + i);
    return runAt(first, positions);
  }

  /// Runs `positions.size()` tokens from token `first` at `positions`.
  std::vector<float> runAt(int64_t first, std::vector<int32_t> positions) {
    const int64_t n = positions.size();
    std::vector<float> chunk(x.begin() + first * hidden,
                             x.begin() + (first + n) * hidden);
    std::vector<float> out(n * hidden, 7.0f);
    auto xM = memref<float, 2>(chunk, {n, hidden});
    auto positionsM = memref<int32_t, 1>(positions, {n});
    // The weights' sizes come from the data, so that a test can make the
    // scalar arguments disagree with them.
    auto rowsOf = [&](const std::vector<float> &w) {
      return static_cast<int64_t>(w.size()) / hidden;
    };
    auto wqM = memref<float, 2>(wq, {rowsOf(wq), hidden});
    auto wkM = memref<float, 2>(wk, {rowsOf(wk), hidden});
    auto wvM = memref<float, 2>(wv, {rowsOf(wv), hidden});
    auto woM = memref<float, 2>(wo, {hidden, rowsOf(wo)});
    auto qNormM = memref<float, 1>(qNorm, {int64_t(qNorm.size())});
    auto kNormM = memref<float, 1>(kNorm, {int64_t(kNorm.size())});
    int64_t cacheWidth = static_cast<int64_t>(kCache.size()) / maxPositions;
    auto kCacheM = memref<float, 2>(kCache, {maxPositions, cacheWidth});
    auto vCacheM = memref<float, 2>(vCache, {maxPositions, cacheWidth});
    auto outM = memref<float, 2>(out, {n, hidden});
    auto biasM = [](std::vector<float> &b) {
      return memref<float, 1>(b, {int64_t(b.size())});
    };
    auto qBiasM = biasM(qBias), kBiasM = biasM(kBias), vBiasM = biasM(vBias),
         oBiasM = biasM(oBias);
    if (bf16) {
      auto wqB = memref<uint16_t, 2>(wqBits, {rowsOf(wq), hidden});
      auto wkB = memref<uint16_t, 2>(wkBits, {rowsOf(wk), hidden});
      auto wvB = memref<uint16_t, 2>(wvBits, {rowsOf(wv), hidden});
      auto woB = memref<uint16_t, 2>(woBits, {hidden, rowsOf(wo)});
      _mlir_ciface_moert_attention_bf16(
          &xM, &positionsM, &wqB, &wkB, &wvB, &woB, &qNormM, &kNormM, &kCacheM,
          &vCacheM, &outM, numHeads, numKvHeads, headDim, ropeTheta, clip,
          normKind, normEps, scale, interleaved, ropeFactor, rampLow, rampHigh,
          ropeAttention, window, &qBiasM, &kBiasM, &vBiasM, &oBiasM);
      return out;
    }
    _mlir_ciface_moert_attention(
        &xM, &positionsM, &wqM, &wkM, &wvM, &woM, &qNormM, &kNormM, &kCacheM,
        &vCacheM, &outM, numHeads, numKvHeads, headDim, ropeTheta, clip,
        normKind, normEps, scale, interleaved, ropeFactor, rampLow, rampHigh,
        ropeAttention, window, &qBiasM, &kBiasM, &vBiasM, &oBiasM);
    return out;
  }

  /// Runs all tokens at positions 0.. through the C++ API.
  std::vector<float> runWithThreads(unsigned numThreads) {
    resetCache();
    std::vector<int32_t> positions(numTokens);
    for (int64_t i = 0; i < numTokens; ++i)
      positions[i] = static_cast<int32_t>(i);
    std::vector<float> out(numTokens * hidden);
    EXPECT_TRUE(attention(
        x.data(), positions.data(), wq.data(), wk.data(), wv.data(), wo.data(),
        qNorm.data(), kNorm.data(), kCache.data(), vCache.data(), out.data(),
        {numTokens, hidden, numHeads, numKvHeads, headDim, maxPositions},
        {ropeTheta, clip, static_cast<QkNorm>(normKind), normEps, scale,
         interleaved, ropeFactor, rampLow, rampHigh, ropeAttention, window},
        numThreads));
    return out;
  }

  struct Reference {
    std::vector<double> out, k, v; ///< [n, d], [n, KV*hd], [n, KV*hd]
  };

  /// All tokens at positions 0.., from the formulas.
  Reference reference() const {
    const int64_t half = headDim / 2;
    Reference ref{std::vector<double>(numTokens * hidden),
                  std::vector<double>(numTokens * kvWidth()),
                  std::vector<double>(numTokens * kvWidth())};
    std::vector<double> q(numTokens * qWidth());
    auto project = [&](const std::vector<float> &w, int64_t width,
                       double *result) {
      for (int64_t t = 0; t < numTokens; ++t)
        for (int64_t o = 0; o < width; ++o) {
          double y =
              dotRef(x.data() + t * hidden, w.data() + o * hidden, hidden);
          result[t * width + o] = y;
        }
    };
    project(wq, qWidth(), q.data());
    project(wk, kvWidth(), ref.k.data());
    project(wv, kvWidth(), ref.v.data());
    auto addBias = [&](double *rows, const std::vector<float> &bias,
                       int64_t width) {
      for (int64_t t = 0; t < numTokens && !bias.empty(); ++t)
        for (int64_t j = 0; j < width; ++j)
          rows[t * width + j] += bias[j];
    };
    addBias(q.data(), qBias, qWidth());
    addBias(ref.k.data(), kBias, kvWidth());
    addBias(ref.v.data(), vBias, kvWidth());

    // Normalises groups of `size` values of `row` with weights w.
    auto rmsNorm = [&](double *row, int64_t width, int64_t size,
                       const std::vector<float> &w) {
      for (int64_t g = 0; g < width; g += size) {
        double sum = 0.0;
        for (int64_t i = 0; i < size; ++i)
          sum += row[g + i] * row[g + i];
        double rms = std::sqrt(sum / size + normEps);
        for (int64_t i = 0; i < size; ++i)
          row[g + i] = row[g + i] / rms * w[i];
      }
    };
    // Scaled frequencies as transformers writes them: linear scaling
    // (ramp [0, 0]) divides them all by the factor; YaRN blends the
    // extrapolated (unscaled) and interpolated (divided) ones, weighted by a
    // clamped linear ramp over the pairs.
    auto inverseFrequency = [&](int64_t i) {
      double extrapolated = std::pow(double(ropeTheta), -2.0 * i / headDim);
      double interpolated = extrapolated / ropeFactor;
      if (rampLow == 0.0f && rampHigh == 0.0f)
        return interpolated;
      double low = rampLow, high = rampHigh;
      double extrapolation =
          1.0 - std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
      return interpolated * (1.0 - extrapolation) +
             extrapolated * extrapolation;
    };
    auto rope = [&](double *row, int64_t width, int64_t position) {
      for (int64_t h = 0; h < width; h += headDim)
        for (int64_t i = 0; i < half; ++i) {
          double angle = position * inverseFrequency(i);
          double cos = std::cos(angle) * ropeAttention,
                 sin = std::sin(angle) * ropeAttention;
          int64_t u = interleaved ? 2 * i : i;
          int64_t v = interleaved ? 2 * i + 1 : i + half;
          double a = row[h + u], b = row[h + v];
          row[h + u] = a * cos - b * sin;
          row[h + v] = b * cos + a * sin;
        }
    };
    for (int64_t t = 0; t < numTokens; ++t) {
      double *qRow = q.data() + t * qWidth();
      double *kRow = ref.k.data() + t * kvWidth();
      if (normKind != 0) {
        int64_t qSize = normKind == 1 ? qWidth() : headDim;
        int64_t kSize = normKind == 1 ? kvWidth() : headDim;
        rmsNorm(qRow, qWidth(), qSize, qNorm);
        rmsNorm(kRow, kvWidth(), kSize, kNorm);
      }
      // OLMoE clamps after the q/k norms.
      if (clip > 0) {
        auto clamp = [&](double *row, int64_t width) {
          for (int64_t i = 0; i < width; ++i)
            row[i] = std::clamp<double>(row[i], -clip, clip);
        };
        clamp(qRow, qWidth());
        clamp(kRow, kvWidth());
        clamp(ref.v.data() + t * kvWidth(), kvWidth());
      }
      rope(qRow, qWidth(), t);
      rope(kRow, kvWidth(), t);
    }

    std::vector<double> heads(qWidth()), p(numTokens);
    for (int64_t t = 0; t < numTokens; ++t) {
      for (int64_t h = 0; h < numHeads; ++h) {
        int64_t g = h / (numHeads / numKvHeads);
        const double *qHead = q.data() + t * qWidth() + h * headDim;
        double maxScore = -std::numeric_limits<double>::infinity();
        double sum = 0.0;
        // Keys before the window get no weight.
        auto seen = [&](int64_t j) { return window == 0 || t - j < window; };
        for (int64_t j = 0; j <= t; ++j) {
          p[j] = 0.0;
          if (!seen(j))
            continue;
          for (int64_t c = 0; c < headDim; ++c)
            p[j] += qHead[c] * ref.k[j * kvWidth() + g * headDim + c];
          p[j] *=
              scale > 0.0f ? double(scale) : 1.0 / std::sqrt(double(headDim));
          maxScore = std::max(maxScore, p[j]);
        }
        for (int64_t j = 0; j <= t; ++j)
          sum += p[j] = seen(j) ? std::exp(p[j] - maxScore) : 0.0;
        for (int64_t c = 0; c < headDim; ++c) {
          double o = 0.0;
          for (int64_t j = 0; j <= t; ++j)
            o += p[j] / sum * ref.v[j * kvWidth() + g * headDim + c];
          heads[h * headDim + c] = o;
        }
      }
      for (int64_t o = 0; o < hidden; ++o) {
        double y = 0.0;
        for (int64_t i = 0; i < qWidth(); ++i)
          y += heads[i] * wo[o * qWidth() + i];
        ref.out[t * hidden + o] = y + (oBias.empty() ? 0.0 : oBias[o]);
      }
    }
    return ref;
  }

  /// Runs the tokens in calls of `counts` tokens each (a prefill, then
  /// decode steps or further chunks), each against the reference.
  void runInChunksAndCheck(std::initializer_list<int64_t> counts) {
    Reference ref = reference();
    int64_t first = 0;
    for (int64_t count : counts) {
      std::vector<float> out = run(first, count);
      expectMatches(ref, out, first, count);
      first += count;
    }
  }

  /// Checks out [count, d] of tokens [first, first + count) and the cache
  /// rows [0, first + count) against `ref`.
  void expectMatches(const Reference &ref, const std::vector<float> &out,
                     int64_t first, int64_t count) const {
    expectClose(out.data(), ref.out.data() + first * hidden, count * hidden);
    int64_t rows = (first + count) * kvWidth();
    expectClose(kCache.data(), ref.k.data(), rows);
    expectClose(vCache.data(), ref.v.data(), rows);
  }
};

class AttentionTest : public testing::TestWithParam<AttentionParam> {};

TEST_P(AttentionTest, PrefillMatchesReference) {
  AttentionCase c(GetParam(), 5, 24, 8, 7, 41);
  std::vector<float> out = c.run(0, 5);
  c.expectMatches(c.reference(), out, 0, 5);
}

TEST_P(AttentionTest, PrefillEqualsDecode) {
  // The KV cache check: five decode steps give what one prefill gives, to the
  // bit, since no element's arithmetic depends on the other tokens of a call.
  AttentionCase c(GetParam(), 5, 24, 8, 7, 43);
  std::vector<float> prefill = c.run(0, 5);
  std::vector<float> prefillK = c.kCache, prefillV = c.vCache;
  c.resetCache();
  std::vector<float> decode;
  for (int64_t t = 0; t < 5; ++t) {
    std::vector<float> out = c.run(t, 1);
    decode.insert(decode.end(), out.begin(), out.end());
  }
  expectBitwiseEqual(decode, prefill);
  expectBitwiseEqual(c.kCache, prefillK);
  expectBitwiseEqual(c.vCache, prefillV);
}

TEST_P(AttentionTest, BF16ProjectionsMatchTheirWideningBitwise) {
  AttentionCase widened(GetParam(), 5, 24, 8, 7, 45);
  widened.roundProjections(/*useBits=*/false);
  AttentionCase bits(GetParam(), 5, 24, 8, 7, 45);
  bits.roundProjections(/*useBits=*/true);
  expectBitwiseEqual(bits.run(0, 5), widened.run(0, 5));
  expectBitwiseEqual(bits.kCache, widened.kCache);
  expectBitwiseEqual(bits.vCache, widened.vCache);
  // A decode step on the caches.
  expectBitwiseEqual(bits.run(4, 1), widened.run(4, 1));
}

INSTANTIATE_TEST_SUITE_P(
    CpuDecoderKernels, AttentionTest,
    testing::Values(
        // GQA (two query heads per kv head), each norm, clip off and on.
        AttentionParam{4, 2, 0, 0.0f}, AttentionParam{4, 2, 1, 0.0f},
        AttentionParam{4, 2, 2, 0.0f}, AttentionParam{4, 2, 0, 0.5f},
        AttentionParam{4, 2, 1, 0.5f}, AttentionParam{4, 2, 2, 0.5f},
        // MHA and MQA.
        AttentionParam{4, 4, 0, 0.0f}, AttentionParam{4, 4, 1, 0.5f},
        AttentionParam{4, 4, 2, 0.0f}, AttentionParam{4, 1, 2, 0.5f}),
    [](const testing::TestParamInfo<AttentionParam> &info) {
      const AttentionParam &p = info.param;
      return "H" + std::to_string(p.numHeads) + "KV" +
             std::to_string(p.numKvHeads) + "Norm" +
             std::to_string(p.normKind) + (p.clip > 0 ? "Clip" : "");
    });

TEST(CpuDecoderKernels, AttentionChunkedPrefill) {
  // Chunks across the 16-query blocks, a decode step between them, and
  // Qwen3's theta so that the later positions turn the rotations far.
  AttentionCase c({8, 2, 2, 0.0f}, 40, 32, 16, 48, 47);
  c.ropeTheta = 1e6f;
  c.runInChunksAndCheck({17, 1, 22});
}

TEST(CpuDecoderKernels, AttentionLoopLM) {
  // LoopLM's muP attention: scores scaled by 1/head_dim, RoPE on interleaved
  // pairs; prefill, then decode steps through the C interface.
  AttentionCase c({4, 4, 0, 0.0f}, 20, 32, 8, 24, 53);
  c.scale = 1.0f / 8.0f;
  c.interleaved = true;
  c.runInChunksAndCheck({17, 1, 2});
}

TEST(CpuDecoderKernels, AttentionRopeScaling) {
  // YaRN: pairs 0-2 keep their frequency, 3-4 ramp, 5-7 are divided by 4,
  // and cos and sin are scaled; then linear scaling, every pair divided.
  // Prefill and decode steps, bf16 projections too.
  for (bool linear : {false, true}) {
    for (bool bf16 : {false, true}) {
      SCOPED_TRACE(std::string(linear ? "linear" : "yarn") +
                   (bf16 ? ", bf16" : ""));
      AttentionCase c({4, 2, 2, 0.0f}, 30, 32, 16, 32, 71);
      c.ropeFactor = linear ? 2.5f : 4.0f;
      c.rampLow = linear ? 0.0f : 2.0f;
      c.rampHigh = linear ? 0.0f : 5.0f;
      c.ropeAttention = linear ? 1.0f : 1.1386f;
      if (bf16)
        c.roundProjections(/*useBits=*/true);
      c.runInChunksAndCheck({21, 1, 8});
    }
  }
  // The scaling changes the output (the test above would pass unscaled
  // otherwise): tokens past position 0 differ.
  AttentionCase plain({4, 2, 2, 0.0f}, 4, 32, 16, 8, 73);
  AttentionCase scaled = plain;
  scaled.ropeFactor = 4.0f;
  std::vector<float> a = plain.run(0, 4), b = scaled.run(0, 4);
  EXPECT_NE(std::memcmp(a.data() + 32, b.data() + 32, 3 * 32 * sizeof(float)),
            0);
}

TEST(CpuDecoderKernels, AttentionSlidingWindow) {
  // Windows of 1, 5 and 16 keys over 40 positions: prefill chunks across the
  // 16-query blocks (whose first and last tokens see different key ranges),
  // then decode steps; GQA with its query rows per kv head.
  for (int64_t window : {1, 5, 16}) {
    SCOPED_TRACE("window " + std::to_string(window));
    AttentionCase c({8, 2, 2, 0.0f}, 40, 32, 16, 48, 79);
    c.window = window;
    c.runInChunksAndCheck({19, 1, 17, 1, 2});
  }
  // A window at least as long as the sequence masks nothing: the same bits
  // as none.
  AttentionCase plain({4, 2, 0, 0.0f}, 12, 24, 8, 16, 83);
  AttentionCase longWindow = plain;
  longWindow.window = 12;
  expectBitwiseEqual(longWindow.run(0, 12), plain.run(0, 12));
  // The window changes what a later token sees: the reference above would
  // not pass without it.
  AttentionCase windowed = plain;
  windowed.resetCache();
  plain.resetCache();
  windowed.window = 3;
  std::vector<float> a = plain.run(0, 12), b = windowed.run(0, 12);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 3 * 24 * sizeof(float)), 0);
  EXPECT_NE(
      std::memcmp(a.data() + 11 * 24, b.data() + 11 * 24, 24 * sizeof(float)),
      0);
}

TEST(CpuDecoderKernels, AttentionBiases) {
  // OLMoE's and Qwen3-MoE's attention_bias: q, k and v biased before the
  // norms (each norm kind), o after; prefill then decode steps, bf16 too.
  for (int32_t normKind : {0, 1, 2}) {
    for (bool bf16 : {false, true}) {
      SCOPED_TRACE("norm " + std::to_string(normKind) + (bf16 ? ", bf16" : ""));
      AttentionCase c({4, 2, normKind, 0.0f}, 20, 24, 8, 24, 89);
      c.withBiases(91);
      if (bf16)
        c.roundProjections(/*useBits=*/true);
      c.runInChunksAndCheck({17, 1, 2});
    }
  }
  // A bias of another width is rejected.
  AttentionCase bad({4, 2, 0, 0.0f}, 2, 24, 8, 4, 93);
  bad.withBiases(95);
  bad.kBias.pop_back();
  EXPECT_TRUE(allNaN(bad.run(0, 2)));
}

TEST(CpuDecoderKernels, AttentionIsCausal) {
  AttentionCase c({4, 2, 1, 0.0f}, 5, 24, 8, 5, 53);
  std::vector<float> before = c.run(0, 5);
  for (int64_t i = 0; i < c.hidden; ++i)
    c.x[4 * c.hidden + i] += 1.0f;
  c.resetCache();
  std::vector<float> after = c.run(0, 5);
  // Tokens 0..3 keep their bits; token 4 changes.
  std::vector<float> firstBefore(before.begin(), before.begin() + 4 * c.hidden);
  std::vector<float> firstAfter(after.begin(), after.begin() + 4 * c.hidden);
  expectBitwiseEqual(firstAfter, firstBefore);
  EXPECT_NE(std::memcmp(after.data() + 4 * c.hidden,
                        before.data() + 4 * c.hidden, c.hidden * sizeof(float)),
            0);
}

TEST(CpuDecoderKernels, AttentionRejectsBadPositions) {
  AttentionCase c({4, 2, 0, 0.0f}, 5, 24, 8, 4, 59);
  std::vector<float> ok = c.run(0, 3);
  EXPECT_FALSE(
      std::any_of(ok.begin(), ok.end(), [](float v) { return std::isnan(v); }));
  const std::vector<float> kCache = c.kCache, vCache = c.vCache;
  for (std::vector<int32_t> positions : std::vector<std::vector<int32_t>>{
           {3, 4}, {4}, {-1, 0}, {0, 2}, {1, 0}}) {
    EXPECT_TRUE(allNaN(c.runAt(0, positions))) << positions[0];
    // Nothing written: bitwise equal caches, NaNs included.
    EXPECT_EQ(std::memcmp(c.kCache.data(), kCache.data(),
                          kCache.size() * sizeof(float)),
              0);
    EXPECT_EQ(std::memcmp(c.vCache.data(), vCache.data(),
                          vCache.size() * sizeof(float)),
              0);
  }
}

TEST(CpuDecoderKernels, AttentionRejectsBadShapes) {
  auto expectRejected = [](AttentionCase c) {
    EXPECT_TRUE(allNaN(c.run(0, 2)));
  };
  // Heads not a multiple of kv heads (wq, wk stay consistent: 3*8, 2*8).
  expectRejected(AttentionCase({3, 2, 0, 0.0f}, 2, 16, 8, 4, 61));
  // An odd head_dim, which RoPE cannot split.
  expectRejected(AttentionCase({2, 1, 0, 0.0f}, 2, 16, 7, 4, 61));
  // An unknown norm kind.
  AttentionCase badNorm({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badNorm.normKind = 3;
  expectRejected(badNorm);
  // A per-head norm weight of the full width.
  AttentionCase badNormSize({2, 1, 1, 0.0f}, 2, 16, 8, 4, 61);
  badNormSize.normKind = 2;
  expectRejected(badNormSize);
  // wq and wo have two heads, numHeads says one.
  AttentionCase badHeads({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badHeads.numHeads = 1;
  expectRejected(badHeads);
  // A non-positive theta.
  AttentionCase badTheta({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badTheta.ropeTheta = 0.0f;
  expectRejected(badTheta);
  // RoPE scaling: a factor or attention factor that is not positive, and a
  // ramp that ends before it starts.
  AttentionCase badFactor({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badFactor.ropeFactor = 0.0f;
  expectRejected(badFactor);
  AttentionCase badAttention({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badAttention.ropeAttention = -1.0f;
  expectRejected(badAttention);
  AttentionCase badRamp({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badRamp.rampLow = 3.0f;
  badRamp.rampHigh = 2.0f;
  expectRejected(badRamp);
  AttentionCase badWindow({2, 1, 0, 0.0f}, 2, 16, 8, 4, 61);
  badWindow.window = -1;
  expectRejected(badWindow);
}

TEST(CpuDecoderKernels, AttentionBitwiseDeterministic) {
  // 37 tokens: three query blocks, the last partial.
  AttentionCase c({8, 2, 2, 0.0f}, 37, 64, 32, 40, 67);
  std::vector<float> expected = c.runWithThreads(1);
  std::vector<float> expectedK = c.kCache, expectedV = c.vCache;
  for (unsigned numThreads : {2u, 3u, 2u, 3u}) {
    expectBitwiseEqual(c.runWithThreads(numThreads), expected);
    expectBitwiseEqual(c.kCache, expectedK);
    expectBitwiseEqual(c.vCache, expectedV);
  }
}

} // namespace
