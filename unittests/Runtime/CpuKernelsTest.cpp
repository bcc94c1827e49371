//===- CpuKernelsTest.cpp - Tests of the CPU kernels ----------------------===//
//
// Checks the `_mlir_ciface_moert_*` kernels against naive double-precision
// loops written straight from the model contract, and checks that the expert
// group's bits do not depend on the thread count, repetition or batch.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuKernels.h"
#include "CpuGemm.h"
#include "KernelTestUtils.h"

#include "gtest/gtest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

using namespace moert::cpu;
using moert::testing::allNaN;
using moert::testing::expectBitwiseEqual;
using moert::testing::memref;
using moert::testing::randomVector;
using moert::testing::roundToBF16;

namespace {

constexpr double kTolerance = 1e-4;

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

void expectClose(const std::vector<float> &actual,
                 const std::vector<double> &expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i)
    ASSERT_NEAR(actual[i], expected[i],
                kTolerance + kTolerance * std::fabs(expected[i]))
        << "at element " << i;
}

double dotRef(const float *a, const float *b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i)
    sum += double(a[i]) * double(b[i]);
  return sum;
}

//===----------------------------------------------------------------------===//
// References
//===----------------------------------------------------------------------===//

std::vector<double> rmsNormRef(const std::vector<float> &x,
                               const std::vector<float> &w, int64_t hidden,
                               double eps) {
  std::vector<double> out(x.size());
  for (size_t t = 0; t < x.size() / hidden; ++t) {
    const float *row = x.data() + t * hidden;
    double rms = std::sqrt(dotRef(row, row, hidden) / hidden + eps);
    for (int64_t i = 0; i < hidden; ++i)
      out[t * hidden + i] = row[i] / rms * w[i];
  }
  return out;
}

struct RouteRef {
  std::vector<int32_t> ids;
  std::vector<double> gates;
};

RouteRef routeRef(const std::vector<float> &x, const std::vector<float> &w,
                  const MoEShape &s, Scoring scoring, bool normalize,
                  double scaling) {
  RouteRef ref;
  for (int64_t t = 0; t < s.numTokens; ++t) {
    std::vector<double> p(s.numExperts);
    for (int64_t e = 0; e < s.numExperts; ++e)
      p[e] = dotRef(x.data() + t * s.hidden, w.data() + e * s.hidden, s.hidden);
    if (scoring == Scoring::Sigmoid) {
      for (double &v : p)
        v = 1.0 / (1.0 + std::exp(-v));
    } else {
      double maxLogit = *std::max_element(p.begin(), p.end()), sum = 0.0;
      for (double &v : p)
        sum += v = std::exp(v - maxLogit);
      for (double &v : p)
        v /= sum;
    }
    std::vector<int32_t> order(s.numExperts);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t l, int32_t r) {
      return p[l] > p[r] || (p[l] == p[r] && l < r);
    });
    double sum = 0.0;
    for (int64_t j = 0; j < s.topK; ++j)
      sum += p[order[j]];
    for (int64_t j = 0; j < s.topK; ++j) {
      ref.ids.push_back(order[j]);
      ref.gates.push_back((normalize ? p[order[j]] / sum : p[order[j]]) *
                          scaling);
    }
  }
  return ref;
}

double activationRef(double x, Activation activation) {
  if (activation == Activation::Silu)
    return x / (1.0 + std::exp(-x));
  return 0.5 * x *
         (1.0 + std::tanh(std::sqrt(2.0 / 3.141592653589793) *
                          (x + 0.044715 * x * x * x)));
}

/// The expert weights and a routing of one expert-group call.
struct ExpertCase {
  MoEShape s;
  std::vector<float> x, gates, gate, up, down;
  std::vector<int32_t> ids;

  /// Random data; ids are a random choice of k distinct experts per token.
  ExpertCase(int64_t numTokens, int64_t hidden, int64_t ffn, int64_t numExperts,
             int64_t topK, unsigned seed)
      : s{numTokens, hidden, ffn, numExperts, topK},
        x(randomVector(numTokens * hidden, 1.0f, seed)),
        gates(randomVector(numTokens * topK, 1.0f, seed + 1)),
        gate(randomVector(numExperts * ffn * hidden, 0.5f, seed + 2)),
        up(randomVector(numExperts * ffn * hidden, 0.5f, seed + 3)),
        down(randomVector(numExperts * hidden * ffn, 0.5f, seed + 4)) {
    std::mt19937 rng(seed + 5);
    std::vector<int32_t> experts(numExperts);
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t t = 0; t < numTokens; ++t) {
      std::shuffle(experts.begin(), experts.end(), rng);
      ids.insert(ids.end(), experts.begin(), experts.begin() + topK);
    }
  }

  std::vector<double> reference(Activation activation) const {
    std::vector<double> out(s.numTokens * s.hidden, 0.0);
    std::vector<double> h(s.ffn);
    for (int64_t t = 0; t < s.numTokens; ++t) {
      const float *row = x.data() + t * s.hidden;
      for (int64_t j = 0; j < s.topK; ++j) {
        int32_t e = ids[t * s.topK + j];
        if (e < 0 || e >= s.numExperts)
          continue;
        for (int64_t i = 0; i < s.ffn; ++i) {
          const float *gateRow = gate.data() + (e * s.ffn + i) * s.hidden;
          const float *upRow = up.data() + (e * s.ffn + i) * s.hidden;
          h[i] = activationRef(dotRef(gateRow, row, s.hidden), activation) *
                 dotRef(upRow, row, s.hidden);
        }
        for (int64_t o = 0; o < s.hidden; ++o) {
          const float *downRow = down.data() + (e * s.hidden + o) * s.ffn;
          double y = 0.0;
          for (int64_t i = 0; i < s.ffn; ++i)
            y += double(downRow[i]) * h[i];
          out[t * s.hidden + o] += gates[t * s.topK + j] * y;
        }
      }
    }
    return out;
  }

  /// Runs the kernel through its C interface.
  std::vector<float> run(Activation activation) {
    std::vector<float> out(s.numTokens * s.hidden, 7.0f);
    auto xM = memref<float, 2>(x, {s.numTokens, s.hidden});
    auto idsM = memref<int32_t, 2>(ids, {s.numTokens, s.topK});
    auto gatesM = memref<float, 2>(gates, {s.numTokens, s.topK});
    auto gateM = memref<float, 3>(gate, {s.numExperts, s.ffn, s.hidden});
    auto upM = memref<float, 3>(up, {s.numExperts, s.ffn, s.hidden});
    auto downM = memref<float, 3>(down, {s.numExperts, s.hidden, s.ffn});
    auto outM = memref<float, 2>(out, {s.numTokens, s.hidden});
    _mlir_ciface_moert_experts(&xM, &idsM, &gatesM, &gateM, &upM, &downM, &outM,
                               static_cast<int32_t>(activation));
    return out;
  }

  /// Runs the C++ API on `numThreads` threads.
  std::vector<float> runWithThreads(unsigned numThreads) const {
    std::vector<float> out(s.numTokens * s.hidden);
    EXPECT_TRUE(experts(x.data(), ids.data(), gates.data(), gate.data(),
                        up.data(), down.data(), out.data(), s, Activation::Silu,
                        numThreads));
    return out;
  }
};

//===----------------------------------------------------------------------===//
// GEMM and rmsnorm
//===----------------------------------------------------------------------===//

TEST(CpuKernels, GemmWithStridesAndKBlocks) {
  // K above one K block and not a multiple of 8; M and N with every tail.
  const int64_t m = 11, n = 71, k = 1037, lda = k + 3, ldb = k + 5, ldc = n + 2;
  std::vector<float> a = randomVector(m * lda, 1.0f, 1);
  std::vector<float> b = randomVector(n * ldb, 1.0f, 2);
  std::vector<float> c(m * ldc, -1.0f);
  gemmABt(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k, 2);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double ref = dotRef(a.data() + i * lda, b.data() + j * ldb, k);
      ASSERT_NEAR(c[i * ldc + j], ref, kTolerance + kTolerance * std::fabs(ref))
          << i << ", " << j;
    }
  for (int64_t i = 0; i < m; ++i)
    EXPECT_EQ(c[i * ldc + n], -1.0f) << "wrote past the row";

  std::vector<float> serial(c.size(), -1.0f);
  gemmABt(a.data(), lda, b.data(), ldb, serial.data(), ldc, m, n, k, 1);
  EXPECT_EQ(std::memcmp(serial.data(), c.data(), c.size() * sizeof(float)), 0);
}

// On CPUs with AVX-512 the GEMM's tiles of more than one row use 16-lane
// vectors (two output columns per register); they must give the 8-lane
// tiles' bits, for f32 and bf16 weights, over every tail of rows, columns
// and K, and more than one K block.
TEST(CpuKernels, Avx512TilesGiveTheEightLaneBits) {
  bool initial = detail::avx512Gemm();
  if (!detail::setAvx512Gemm(true))
    GTEST_SKIP() << "this CPU has no AVX-512F and DQ";
  for (int64_t m : {2, 5, 6, 7, 13, 97})
    for (int64_t n : {8, 13, 16, 71})
      for (int64_t k : {7, 64, 1037}) {
        const int64_t lda = k + 3, ldb = k + 5, ldc = n + 2;
        std::vector<float> a = randomVector(m * lda, 1.0f, 3);
        std::vector<float> b = randomVector(n * ldb, 1.0f, 4);
        std::vector<uint16_t> bBits = roundToBF16(b);
        for (bool bf16 : {false, true}) {
          std::vector<float> c[2];
          for (bool wide : {false, true}) {
            ASSERT_TRUE(detail::setAvx512Gemm(wide));
            c[wide].assign(m * ldc, -1.0f);
            if (bf16)
              detail::gemmABtSerial(a.data(), lda, bBits.data(), ldb,
                                    c[wide].data(), ldc, m, n, k);
            else
              detail::gemmABtSerial(a.data(), lda, b.data(), ldb,
                                    c[wide].data(), ldc, m, n, k);
          }
          ASSERT_EQ(std::memcmp(c[0].data(), c[1].data(),
                                c[0].size() * sizeof(float)),
                    0)
              << m << " x " << n << " x " << k << (bf16 ? " bf16" : "");
          // The bf16 weights are exactly the rounded f32 ones.
          double ref =
              dotRef(a.data() + (m - 1) * lda, b.data() + (n - 1) * ldb, k);
          EXPECT_NEAR(c[1][(m - 1) * ldc + n - 1], ref,
                      kTolerance + kTolerance * std::fabs(ref));
        }
      }
  detail::setAvx512Gemm(initial);
}

TEST(CpuKernels, RmsNorm) {
  for (int64_t hidden : {20, 512}) {
    const int64_t numTokens = 5;
    std::vector<float> x = randomVector(numTokens * hidden, 3.0f, 3);
    std::vector<float> w = randomVector(hidden, 1.0f, 4);
    std::vector<float> out(x.size());
    auto xM = memref<float, 2>(x, {numTokens, hidden});
    auto wM = memref<float, 1>(w, {hidden});
    auto outM = memref<float, 2>(out, {numTokens, hidden});
    _mlir_ciface_moert_rms_norm(&xM, &wM, &outM, 1e-6f);
    expectClose(out, rmsNormRef(x, w, hidden, 1e-6));
  }
}

//===----------------------------------------------------------------------===//
// Router
//===----------------------------------------------------------------------===//

struct RouteRun {
  std::vector<int32_t> ids;
  std::vector<float> gates;
};

RouteRun runRoute(std::vector<float> &x, std::vector<float> &w,
                  const MoEShape &s, Scoring scoring, bool normalize,
                  float scaling) {
  RouteRun run{std::vector<int32_t>(s.numTokens * s.topK, -7),
               std::vector<float>(s.numTokens * s.topK)};
  auto xM = memref<float, 2>(x, {s.numTokens, s.hidden});
  auto wM = memref<float, 2>(w, {s.numExperts, s.hidden});
  auto idsM = memref<int32_t, 2>(run.ids, {s.numTokens, s.topK});
  auto gatesM = memref<float, 2>(run.gates, {s.numTokens, s.topK});
  _mlir_ciface_moert_route(&xM, &wM, &idsM, &gatesM,
                           static_cast<int32_t>(scoring), normalize, scaling);
  return run;
}

struct RouteParam {
  Scoring scoring;
  bool normalize;
  float scaling;
  int64_t numTokens, topK;
};

class RouteTest : public testing::TestWithParam<RouteParam> {};

TEST_P(RouteTest, MatchesReference) {
  const RouteParam &p = GetParam();
  MoEShape s{p.numTokens, 20, 0, 6, p.topK};
  std::vector<float> x = randomVector(s.numTokens * s.hidden, 1.0f, 5);
  std::vector<float> w = randomVector(s.numExperts * s.hidden, 1.0f, 6);
  RouteRun run = runRoute(x, w, s, p.scoring, p.normalize, p.scaling);
  RouteRef ref = routeRef(x, w, s, p.scoring, p.normalize, p.scaling);
  EXPECT_EQ(run.ids, ref.ids);
  expectClose(run.gates, ref.gates);
}

INSTANTIATE_TEST_SUITE_P(
    CpuKernels, RouteTest,
    testing::Values(RouteParam{Scoring::Softmax, false, 1.0f, 37, 2},
                    RouteParam{Scoring::Softmax, true, 1.0f, 37, 2},
                    RouteParam{Scoring::Softmax, true, 2.5f, 37, 3},
                    RouteParam{Scoring::Sigmoid, false, 1.0f, 37, 2},
                    RouteParam{Scoring::Sigmoid, true, 2.5f, 37, 2},
                    RouteParam{Scoring::Sigmoid, false, 0.5f, 37, 1},
                    RouteParam{Scoring::Softmax, false, 1.0f, 37, 1},
                    RouteParam{Scoring::Softmax, true, 1.0f, 37, 6},
                    RouteParam{Scoring::Sigmoid, false, 1.5f, 37, 6},
                    RouteParam{Scoring::Softmax, true, 1.0f, 1, 2},
                    RouteParam{Scoring::Sigmoid, false, 1.0f, 1, 2}));

TEST(CpuKernels, RouteTiesPickLowerIndexFirst) {
  MoEShape s{1, 20, 0, 5, 5};
  std::vector<float> x = randomVector(s.hidden, 1.0f, 7);
  std::vector<float> w(s.numExperts * s.hidden, 0.0f);
  // Experts 1 and 3 have equal rows aligned with x; 0, 2 and 4 score 0.
  for (int64_t i = 0; i < s.hidden; ++i)
    w[1 * s.hidden + i] = w[3 * s.hidden + i] = x[i];
  for (Scoring scoring : {Scoring::Softmax, Scoring::Sigmoid}) {
    RouteRun run = runRoute(x, w, s, scoring, false, 1.0f);
    EXPECT_EQ(run.ids, (std::vector<int32_t>{1, 3, 0, 2, 4}));
    EXPECT_EQ(run.gates[0], run.gates[1]);
    EXPECT_EQ(run.gates[2], run.gates[4]);
  }
}

TEST(CpuKernels, RouteEqualRowsScoreEqually) {
  // Logit 4 is a column tail of the GEMM and logit 1 is not; equal router
  // rows must still give bitwise equal scores, so ties stay ties.
  MoEShape s{64, 72, 0, 5, 5};
  std::vector<float> x = randomVector(s.numTokens * s.hidden, 1.0f, 8);
  std::vector<float> w = randomVector(s.numExperts * s.hidden, 1.0f, 9);
  std::copy(w.begin() + 1 * s.hidden, w.begin() + 2 * s.hidden,
            w.begin() + 4 * s.hidden);
  RouteRun run = runRoute(x, w, s, Scoring::Sigmoid, false, 1.0f);
  for (int64_t t = 0; t < s.numTokens; ++t) {
    const int32_t *ids = run.ids.data() + t * s.numExperts;
    int64_t j = std::find(ids, ids + s.numExperts, 1) - ids;
    ASSERT_LT(j + 1, s.numExperts) << "token " << t;
    EXPECT_EQ(ids[j + 1], 4) << "token " << t;
    EXPECT_EQ(run.gates[t * s.numExperts + j],
              run.gates[t * s.numExperts + j + 1])
        << "token " << t;
  }
}

TEST(CpuKernels, RouteRejectsTopKAboveExperts) {
  MoEShape s{2, 4, 0, 3, 4};
  std::vector<float> x(s.numTokens * s.hidden, 1.0f);
  std::vector<float> w(s.numExperts * s.hidden, 1.0f);
  RouteRun run = runRoute(x, w, s, Scoring::Softmax, false, 1.0f);
  for (size_t i = 0; i < run.ids.size(); ++i) {
    EXPECT_EQ(run.ids[i], -1);
    EXPECT_TRUE(std::isnan(run.gates[i]));
  }
}

//===----------------------------------------------------------------------===//
// Expert group
//===----------------------------------------------------------------------===//

struct ExpertParam {
  int64_t numTokens, hidden, ffn, numExperts, topK;
  Activation activation;
};

class ExpertsTest : public testing::TestWithParam<ExpertParam> {};

TEST_P(ExpertsTest, MatchesReference) {
  const ExpertParam &p = GetParam();
  ExpertCase c(p.numTokens, p.hidden, p.ffn, p.numExperts, p.topK, 11);
  expectClose(c.run(p.activation), c.reference(p.activation));
}

INSTANTIATE_TEST_SUITE_P(
    CpuKernels, ExpertsTest,
    testing::Values(ExpertParam{37, 20, 36, 5, 2, Activation::Silu},
                    ExpertParam{37, 20, 36, 5, 2, Activation::Gelu},
                    ExpertParam{37, 20, 36, 5, 1, Activation::Silu},
                    ExpertParam{37, 20, 36, 5, 5, Activation::Gelu},
                    ExpertParam{1, 20, 36, 5, 2, Activation::Silu},
                    ExpertParam{1, 64, 96, 4, 2, Activation::Gelu},
                    // f above one K block of the down projection.
                    ExpertParam{9, 40, 600, 3, 2, Activation::Silu},
                    // Many rows per expert: several row tiles each.
                    ExpertParam{300, 16, 24, 2, 2, Activation::Silu}));

TEST(CpuKernels, ExpertsSkewedEmptyAndSkipped) {
  ExpertCase c(37, 20, 36, 5, 2, 13);
  // Every token's first slot goes to expert 2, expert 4 gets nothing, and
  // some slots are skipped with -1 or an out-of-range id.
  for (int64_t t = 0; t < c.s.numTokens; ++t) {
    c.ids[t * 2] = 2;
    c.ids[t * 2 + 1] = t % 3 == 0 ? -1 : (t % 7 == 0 ? 5 : int32_t(t % 2));
  }
  expectClose(c.run(Activation::Silu), c.reference(Activation::Silu));

  for (int32_t &id : c.ids)
    id = -1;
  std::vector<float> out = c.run(Activation::Gelu);
  EXPECT_TRUE(
      std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; }));
}

TEST(CpuKernels, ExpertsAllTokensOnOneExpert) {
  ExpertCase c(50, 24, 40, 4, 1, 17);
  std::fill(c.ids.begin(), c.ids.end(), 3);
  expectClose(c.run(Activation::Gelu), c.reference(Activation::Gelu));
}

TEST(CpuKernels, ExpertsBitwiseDeterministic) {
  ExpertCase c(97, 72, 136, 8, 2, 19);
  std::vector<float> expected = c.runWithThreads(1);
  for (unsigned numThreads : {1u, 2u, 3u, 2u, 3u}) {
    std::vector<float> out = c.runWithThreads(numThreads);
    EXPECT_EQ(
        std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)), 0)
        << numThreads << " threads";
  }
}

TEST(CpuKernels, ExpertsBatchInvariant) {
  // A token's output does not depend on the other tokens of the call, so
  // early exits that shrink the batch do not change anyone's result.
  ExpertCase batch(20, 40, 56, 4, 2, 23);
  std::vector<float> batchOut = batch.runWithThreads(2);
  for (int64_t t : {0, 7, 19}) {
    ExpertCase single = batch;
    single.s.numTokens = 1;
    single.x.assign(batch.x.begin() + t * 40, batch.x.begin() + (t + 1) * 40);
    single.ids.assign(batch.ids.begin() + t * 2, batch.ids.begin() + t * 2 + 2);
    single.gates.assign(batch.gates.begin() + t * 2,
                        batch.gates.begin() + t * 2 + 2);
    std::vector<float> out = single.runWithThreads(1);
    EXPECT_EQ(
        std::memcmp(out.data(), batchOut.data() + t * 40, 40 * sizeof(float)),
        0)
        << "token " << t;
  }
}

TEST(CpuKernels, ExpertsInconsistentShapesGiveNaN) {
  ExpertCase c(3, 8, 16, 2, 1, 29);
  std::vector<float> out(c.s.numTokens * c.s.hidden);
  auto xM = memref<float, 2>(c.x, {3, 8});
  auto idsM = memref<int32_t, 2>(c.ids, {3, 1});
  auto gatesM = memref<float, 2>(c.gates, {3, 1});
  auto gateM = memref<float, 3>(c.gate, {2, 16, 8});
  auto upM = memref<float, 3>(c.up, {2, 16, 8});
  // down claims [2, 16, 8] instead of [2, 8, 16].
  auto downM = memref<float, 3>(c.down, {2, 16, 8});
  auto outM = memref<float, 2>(out, {3, 8});
  _mlir_ciface_moert_experts(&xM, &idsM, &gatesM, &gateM, &upM, &downM, &outM,
                             0);
  EXPECT_TRUE(std::all_of(out.begin(), out.end(),
                          [](float v) { return std::isnan(v); }));
}

//===----------------------------------------------------------------------===//
// Exit test
//===----------------------------------------------------------------------===//

std::vector<int8_t> runExitTest(std::vector<float> &h, std::vector<float> &p,
                                int64_t hidden, ExitCriterion criterion,
                                float tau) {
  int64_t numTokens = h.size() / hidden;
  std::vector<int8_t> exits(numTokens, 7);
  auto hM = memref<float, 2>(h, {numTokens, hidden});
  auto pM = memref<float, 2>(p, {numTokens, hidden});
  auto exitsM = memref<int8_t, 1>(exits, {numTokens});
  _mlir_ciface_moert_exit_test(&hM, &pM, &exitsM,
                               static_cast<int32_t>(criterion), tau);
  return exits;
}

TEST(CpuKernels, ExitTestMatchesReference) {
  const int64_t hidden = 20, numTokens = 40;
  std::vector<float> h = randomVector(numTokens * hidden, 1.0f, 31);
  std::vector<float> p(h.size());
  // Token t is h plus noise of a size growing with t, so both criteria cut
  // the tokens somewhere in the middle, far from any threshold.
  std::vector<float> noise = randomVector(h.size(), 1.0f, 32);
  for (int64_t t = 0; t < numTokens; ++t)
    for (int64_t i = 0; i < hidden; ++i)
      p[t * hidden + i] = h[t * hidden + i] + 0.05f * t * noise[t * hidden + i];
  for (ExitCriterion criterion :
       {ExitCriterion::Cosine, ExitCriterion::RelativeL2}) {
    float tau = criterion == ExitCriterion::Cosine ? 0.9f : 0.5f;
    std::vector<int8_t> exits = runExitTest(h, p, hidden, criterion, tau);
    int numExits = 0;
    for (int64_t t = 0; t < numTokens; ++t) {
      const float *hRow = h.data() + t * hidden, *pRow = p.data() + t * hidden;
      double hh = dotRef(hRow, hRow, hidden);
      bool expected;
      if (criterion == ExitCriterion::Cosine) {
        double cosine = dotRef(hRow, pRow, hidden) /
                        std::sqrt(hh * dotRef(pRow, pRow, hidden));
        expected = cosine >= tau;
      } else {
        double dd = 0.0;
        for (int64_t i = 0; i < hidden; ++i)
          dd += (double(hRow[i]) - pRow[i]) * (double(hRow[i]) - pRow[i]);
        expected = std::sqrt(dd / hh) <= tau;
      }
      EXPECT_EQ(exits[t], expected ? 1 : 0) << "token " << t;
      numExits += expected;
    }
    EXPECT_GT(numExits, 0);
    EXPECT_LT(numExits, numTokens);
  }
}

TEST(CpuKernels, ExitTestNonFiniteNeverExits) {
  const int64_t hidden = 8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> h = randomVector(5 * hidden, 1.0f, 37);
  std::vector<float> p = h; // identical: exits unless non-finite
  h[1 * hidden + 3] = nan;
  p[2 * hidden + 5] = nan;
  h[3 * hidden + 0] = p[3 * hidden + 0] = inf;
  std::fill(h.begin() + 4 * hidden, h.end(), 0.0f);
  std::fill(p.begin() + 4 * hidden, p.end(), 0.0f);
  EXPECT_EQ(runExitTest(h, p, hidden, ExitCriterion::Cosine, 0.5f),
            (std::vector<int8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(runExitTest(h, p, hidden, ExitCriterion::RelativeL2, 0.5f),
            (std::vector<int8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(runExitTest(h, p, hidden, ExitCriterion::Cosine, nan),
            (std::vector<int8_t>{0, 0, 0, 0, 0}));
}

} // namespace
