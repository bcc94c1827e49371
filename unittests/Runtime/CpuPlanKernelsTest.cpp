//===- CpuPlanKernelsTest.cpp - Tests of the routing-plan kernels ---------===//
//
// Checks the plan against a hand-computed example and a naive reference, each
// step of the chain against naive loops, and the chain and the fused kernel
// against moert_experts, whose own tests compare it with the model contract:
// all three must give the same bits, for any thread count.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuPlanKernels.h"
#include "KernelTestUtils.h"

#include "gtest/gtest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
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

void expectNear(float actual, double expected, const char *what, int64_t i) {
  ASSERT_NEAR(actual, expected, kTolerance + kTolerance * std::fabs(expected))
      << what << " at " << i;
}

bool allEqual(const std::vector<int32_t> &v, int32_t value) {
  return std::all_of(v.begin(), v.end(), [&](int32_t x) { return x == value; });
}

struct Plan {
  std::vector<int32_t> offsets, rowToken, slotRow;
};

/// The plan by its definition: experts in turn, each taking its (token, slot)
/// pairs in order, then padding up to the next multiple of the tile.
Plan planReference(const std::vector<int32_t> &ids, const MoEShape &s,
                   int64_t tile) {
  Plan p{std::vector<int32_t>(s.numExperts + 1),
         std::vector<int32_t>(planRows(s, tile), -1),
         std::vector<int32_t>(ids.size(), -1)};
  int32_t row = 0;
  for (int32_t e = 0; e < s.numExperts; ++e) {
    p.offsets[e] = row;
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == e) {
        p.slotRow[i] = row;
        p.rowToken[row++] = static_cast<int32_t>(i / s.topK);
      }
    row = (row + tile - 1) / tile * tile;
  }
  p.offsets[s.numExperts] = row;
  return p;
}

/// The expert weights and a routing of one expert-group call, and the ways
/// to run it through the C interface.
struct PlanCase {
  MoEShape s;
  int64_t tile;
  std::vector<float> x, gates, gate, up, down;
  std::vector<int32_t> ids;

  /// Random data; ids are a random choice of k distinct experts per token.
  PlanCase(int64_t numTokens, int64_t hidden, int64_t ffn, int64_t numExperts,
           int64_t topK, int64_t tile, unsigned seed)
      : s{numTokens, hidden, ffn, numExperts, topK}, tile(tile),
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

  int64_t numRows() const { return planRows(s, tile); }

  Plan plan() {
    Plan p{std::vector<int32_t>(s.numExperts + 1, 7),
           std::vector<int32_t>(numRows(), 7),
           std::vector<int32_t>(s.numTokens * s.topK, 7)};
    auto idsM = memref<int32_t, 2>(ids, {s.numTokens, s.topK});
    auto offsetsM = memref<int32_t, 1>(p.offsets, {s.numExperts + 1});
    auto rowTokenM = memref<int32_t, 1>(p.rowToken, {numRows()});
    auto slotRowM = memref<int32_t, 2>(p.slotRow, {s.numTokens, s.topK});
    _mlir_ciface_moert_plan(&idsM, &offsetsM, &rowTokenM, &slotRowM, tile);
    return p;
  }

  std::vector<float> experts(Activation activation) {
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

  /// `kernel` (moert_fused_experts or its bf16 form) on expert weights of
  /// element type TW.
  template <typename TW, typename Kernel>
  std::vector<float> fusedOn(Plan &p, Activation activation,
                             std::vector<TW> &gateW, std::vector<TW> &upW,
                             std::vector<TW> &downW, Kernel kernel) {
    std::vector<float> out(s.numTokens * s.hidden, 7.0f);
    auto xM = memref<float, 2>(x, {s.numTokens, s.hidden});
    auto rowTokenM = memref<int32_t, 1>(p.rowToken, {numRows()});
    auto offsetsM = memref<int32_t, 1>(p.offsets, {s.numExperts + 1});
    auto slotRowM = memref<int32_t, 2>(p.slotRow, {s.numTokens, s.topK});
    auto gatesM = memref<float, 2>(gates, {s.numTokens, s.topK});
    auto gateM = memref<TW, 3>(gateW, {s.numExperts, s.ffn, s.hidden});
    auto upM = memref<TW, 3>(upW, {s.numExperts, s.ffn, s.hidden});
    auto downM = memref<TW, 3>(downW, {s.numExperts, s.hidden, s.ffn});
    auto outM = memref<float, 2>(out, {s.numTokens, s.hidden});
    kernel(&xM, &rowTokenM, &offsetsM, &slotRowM, &gatesM, &gateM, &upM, &downM,
           &outM, static_cast<int32_t>(activation));
    return out;
  }

  std::vector<float> fused(Plan &p, Activation activation) {
    return fusedOn(p, activation, gate, up, down,
                   _mlir_ciface_moert_fused_experts);
  }

  /// Rounds the expert weights to bf16 (so that they are the widening of
  /// their bits) and runs moert_fused_experts_bf16 on the bits.
  std::vector<float> fusedBF16(Plan &p, Activation activation) {
    std::vector<uint16_t> gateBits = roundToBF16(gate),
                          upBits = roundToBF16(up),
                          downBits = roundToBF16(down);
    return fusedOn(p, activation, gateBits, upBits, downBits,
                   _mlir_ciface_moert_fused_experts_bf16);
  }

  /// dispatch, grouped matmul (gate, up), glu, grouped matmul (down),
  /// combine.
  std::vector<float> chain(Plan &p, Activation activation) {
    const int64_t rows = numRows(), d = s.hidden, f = s.ffn;
    std::vector<float> a(rows * d, 7.0f), g(rows * f, 7.0f), u(rows * f, 7.0f),
        h(rows * f, 7.0f), y(rows * d, 7.0f), out(s.numTokens * d, 7.0f);
    auto xM = memref<float, 2>(x, {s.numTokens, d});
    auto rowTokenM = memref<int32_t, 1>(p.rowToken, {rows});
    auto offsetsM = memref<int32_t, 1>(p.offsets, {s.numExperts + 1});
    auto slotRowM = memref<int32_t, 2>(p.slotRow, {s.numTokens, s.topK});
    auto gatesM = memref<float, 2>(gates, {s.numTokens, s.topK});
    auto gateM = memref<float, 3>(gate, {s.numExperts, f, d});
    auto upM = memref<float, 3>(up, {s.numExperts, f, d});
    auto downM = memref<float, 3>(down, {s.numExperts, d, f});
    auto aM = memref<float, 2>(a, {rows, d});
    auto gM = memref<float, 2>(g, {rows, f});
    auto uM = memref<float, 2>(u, {rows, f});
    auto hM = memref<float, 2>(h, {rows, f});
    auto yM = memref<float, 2>(y, {rows, d});
    auto outM = memref<float, 2>(out, {s.numTokens, d});
    _mlir_ciface_moert_dispatch(&xM, &rowTokenM, &offsetsM, &aM);
    _mlir_ciface_moert_grouped_matmul(&aM, &offsetsM, &gateM, &gM);
    _mlir_ciface_moert_grouped_matmul(&aM, &offsetsM, &upM, &uM);
    _mlir_ciface_moert_glu(&gM, &uM, &hM, static_cast<int32_t>(activation));
    _mlir_ciface_moert_grouped_matmul(&hM, &offsetsM, &downM, &yM);
    _mlir_ciface_moert_combine(&yM, &slotRowM, &gatesM, &outM);
    return out;
  }

  std::vector<float> fusedWithThreads(const Plan &p, unsigned numThreads) {
    std::vector<float> out(s.numTokens * s.hidden);
    EXPECT_TRUE(fusedExperts(x.data(), p.rowToken.data(), p.offsets.data(),
                             p.slotRow.data(), gates.data(), gate.data(),
                             up.data(), down.data(), out.data(), s, numRows(),
                             Activation::Silu, numThreads));
    return out;
  }
};

//===----------------------------------------------------------------------===//
// Plan
//===----------------------------------------------------------------------===//

TEST(CpuPlanKernels, PlanHandComputed) {
  PlanCase c(4, 1, 1, 3, 2, 4, 1);
  c.ids = {0, 2, 2, 0, 0, 1, 2, 0};
  Plan p = c.plan();
  // Expert 0 has 4 slots, expert 1 one, expert 2 three: segments of 4 rows.
  EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 4, 8, 12}));
  // R = T*k + E*(tile-1) = 17; rows from offsets[E] = 12 on are -1.
  EXPECT_EQ(p.rowToken, (std::vector<int32_t>{0, 1, 2, 3, 2, -1, -1, -1, 0, 1,
                                              3, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(p.slotRow, (std::vector<int32_t>{0, 8, 9, 1, 2, 4, 10, 3}));
}

TEST(CpuPlanKernels, PlanSkipsIdsOutsideExperts) {
  PlanCase c(4, 1, 1, 3, 2, 2, 1);
  c.ids = {-1, 1, 3, 1, 1, -7, 100, 0};
  Plan p = c.plan();
  EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 2, 6, 6}));
  EXPECT_EQ(p.rowToken,
            (std::vector<int32_t>{3, -1, 0, 1, 2, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(p.slotRow, (std::vector<int32_t>{-1, 2, -1, 3, 4, -1, -1, 0}));
}

TEST(CpuPlanKernels, PlanMatchesReference) {
  for (int64_t tile : {1, 3, 16}) {
    PlanCase c(37, 1, 1, 5, 2, tile, 2);
    Plan p = c.plan();
    Plan ref = planReference(c.ids, c.s, tile);
    EXPECT_EQ(p.offsets, ref.offsets) << "tile " << tile;
    EXPECT_EQ(p.rowToken, ref.rowToken) << "tile " << tile;
    EXPECT_EQ(p.slotRow, ref.slotRow) << "tile " << tile;
  }
}

TEST(CpuPlanKernels, PlanTileOneHasNoPadding) {
  PlanCase c(37, 1, 1, 5, 3, 1, 3);
  Plan p = c.plan();
  EXPECT_EQ(p.offsets.back(), 37 * 3);
  EXPECT_TRUE(std::none_of(p.rowToken.begin(), p.rowToken.end(),
                           [](int32_t t) { return t < 0; }));
}

TEST(CpuPlanKernels, PlanRejectsBadTileAndRows) {
  PlanCase c(4, 1, 1, 3, 2, 0, 4);
  Plan p = c.plan();
  EXPECT_TRUE(allEqual(p.offsets, -1));
  EXPECT_TRUE(allEqual(p.rowToken, -1));
  EXPECT_TRUE(allEqual(p.slotRow, -1));

  // rowToken one row short of T*k + E*(tile-1).
  c.tile = 2;
  std::vector<int32_t> offsets(4), rowToken(c.numRows() - 1), slotRow(8);
  auto idsM = memref<int32_t, 2>(c.ids, {4, 2});
  auto offsetsM = memref<int32_t, 1>(offsets, {4});
  auto rowTokenM = memref<int32_t, 1>(rowToken, {c.numRows() - 1});
  auto slotRowM = memref<int32_t, 2>(slotRow, {4, 2});
  _mlir_ciface_moert_plan(&idsM, &offsetsM, &rowTokenM, &slotRowM, c.tile);
  EXPECT_TRUE(allEqual(offsets, -1));
  EXPECT_TRUE(allEqual(rowToken, -1));
  EXPECT_TRUE(allEqual(slotRow, -1));
}

//===----------------------------------------------------------------------===//
// Steps
//===----------------------------------------------------------------------===//

TEST(CpuPlanKernels, DispatchGathersRows) {
  PlanCase c(37, 20, 1, 5, 2, 4, 5);
  Plan p = c.plan();
  const int64_t rows = c.numRows(), d = c.s.hidden;
  std::vector<float> out(rows * d, 7.0f);
  auto xM = memref<float, 2>(c.x, {c.s.numTokens, d});
  auto rowTokenM = memref<int32_t, 1>(p.rowToken, {rows});
  auto offsetsM = memref<int32_t, 1>(p.offsets, {c.s.numExperts + 1});
  auto outM = memref<float, 2>(out, {rows, d});
  _mlir_ciface_moert_dispatch(&xM, &rowTokenM, &offsetsM, &outM);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < d; ++i) {
      int32_t t = p.rowToken[r];
      ASSERT_EQ(out[r * d + i], t < 0 ? 0.0f : c.x[t * d + i]) << r;
    }
}

TEST(CpuPlanKernels, GroupedMatmulPerSegment) {
  // Odd sizes; segments of 0 to 300 rows, several row tiles each.
  const int64_t numExperts = 4, n = 36, k = 20;
  std::vector<int32_t> offsets = {0, 5, 5, 305, 310};
  const int64_t rows = 313;
  std::vector<float> a = randomVector(rows * k, 1.0f, 6);
  std::vector<float> w = randomVector(numExperts * n * k, 1.0f, 7);
  std::vector<float> out(rows * n, 7.0f);
  auto aM = memref<float, 2>(a, {rows, k});
  auto offsetsM = memref<int32_t, 1>(offsets, {numExperts + 1});
  auto wM = memref<float, 3>(w, {numExperts, n, k});
  auto outM = memref<float, 2>(out, {rows, n});
  _mlir_ciface_moert_grouped_matmul(&aM, &offsetsM, &wM, &outM);
  for (int64_t e = 0; e < numExperts; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double ref = 0.0;
        for (int64_t i = 0; i < k; ++i)
          ref += double(a[r * k + i]) * w[(e * n + j) * k + i];
        expectNear(out[r * n + j], ref, "row", r);
      }
  EXPECT_TRUE(std::all_of(out.begin() + offsets[numExperts] * n, out.end(),
                          [](float v) { return v == 0.0f; }));
}

TEST(CpuPlanKernels, GluMatchesReference) {
  const int64_t rows = 37, cols = 36;
  std::vector<float> g = randomVector(rows * cols, 4.0f, 8);
  std::vector<float> u = randomVector(rows * cols, 1.0f, 9);
  for (Activation activation : {Activation::Silu, Activation::Gelu}) {
    std::vector<float> out(rows * cols, 7.0f);
    auto gM = memref<float, 2>(g, {rows, cols});
    auto uM = memref<float, 2>(u, {rows, cols});
    auto outM = memref<float, 2>(out, {rows, cols});
    _mlir_ciface_moert_glu(&gM, &uM, &outM, static_cast<int32_t>(activation));
    for (int64_t i = 0; i < rows * cols; ++i) {
      double x = g[i];
      double act =
          activation == Activation::Silu
              ? x / (1.0 + std::exp(-x))
              : 0.5 * x *
                    (1.0 + std::tanh(std::sqrt(2.0 / 3.141592653589793) *
                                     (x + 0.044715 * x * x * x)));
      expectNear(out[i], act * u[i], "element", i);
    }
    // In place, as a buffer-reusing caller may run it.
    std::vector<float> inPlace = g;
    glu(inPlace.data(), u.data(), inPlace.data(), rows, cols, activation, 2);
    expectBitwiseEqual(inPlace, out);
  }
}

TEST(CpuPlanKernels, CombineMatchesReference) {
  PlanCase c(37, 20, 1, 5, 3, 2, 10);
  c.ids[4] = -1; // a skipped slot
  Plan p = c.plan();
  const int64_t rows = c.numRows(), d = c.s.hidden, k = c.s.topK;
  std::vector<float> y = randomVector(rows * d, 1.0f, 11);
  std::vector<float> out(c.s.numTokens * d, 7.0f);
  auto yM = memref<float, 2>(y, {rows, d});
  auto slotRowM = memref<int32_t, 2>(p.slotRow, {c.s.numTokens, k});
  auto gatesM = memref<float, 2>(c.gates, {c.s.numTokens, k});
  auto outM = memref<float, 2>(out, {c.s.numTokens, d});
  _mlir_ciface_moert_combine(&yM, &slotRowM, &gatesM, &outM);
  for (int64_t t = 0; t < c.s.numTokens; ++t)
    for (int64_t i = 0; i < d; ++i) {
      double ref = 0.0;
      for (int64_t j = 0; j < k; ++j)
        if (int32_t row = p.slotRow[t * k + j]; row >= 0)
          ref += double(c.gates[t * k + j]) * y[row * d + i];
      expectNear(out[t * d + i], ref, "token", t);
    }
}

//===----------------------------------------------------------------------===//
// Chain and fused kernel against moert_experts
//===----------------------------------------------------------------------===//

struct ExpertParam {
  int64_t numTokens, numExperts, topK, tile;
  Activation activation;
};

class PlanExpertsTest : public testing::TestWithParam<ExpertParam> {};

TEST_P(PlanExpertsTest, ChainAndFusedMatchExpertsBitwise) {
  const ExpertParam &param = GetParam();
  PlanCase c(param.numTokens, 20, 36, param.numExperts, param.topK, param.tile,
             12);
  Plan p = c.plan();
  std::vector<float> expected = c.experts(param.activation);
  expectBitwiseEqual(c.fused(p, param.activation), expected);
  expectBitwiseEqual(c.chain(p, param.activation), expected);
}

// bf16 weights read as bits give exactly what their f32 widening gives (odd
// sizes: the K tails of both GEMMs are bf16 tails too).
TEST_P(PlanExpertsTest, BF16WeightsMatchTheirWideningBitwise) {
  const ExpertParam &param = GetParam();
  PlanCase c(param.numTokens, 20, 36, param.numExperts, param.topK, param.tile,
             12);
  Plan p = c.plan();
  std::vector<float> fromBits = c.fusedBF16(p, param.activation);
  // c's weights are now the widened bits.
  expectBitwiseEqual(fromBits, c.experts(param.activation));
  expectBitwiseEqual(fromBits, c.fused(p, param.activation));
}

INSTANTIATE_TEST_SUITE_P(
    CpuPlanKernels, PlanExpertsTest,
    testing::Values(ExpertParam{1, 5, 2, 4, Activation::Silu},
                    ExpertParam{1, 5, 5, 1, Activation::Gelu},
                    ExpertParam{37, 5, 1, 4, Activation::Silu},
                    ExpertParam{37, 5, 5, 3, Activation::Gelu},
                    ExpertParam{37, 5, 2, 1, Activation::Silu},
                    ExpertParam{300, 5, 2, 8, Activation::Silu},
                    ExpertParam{300, 4, 4, 16, Activation::Gelu},
                    ExpertParam{300, 3, 1, 1, Activation::Gelu}));

TEST(CpuPlanKernels, SkewedRoutingAndEmptyExperts) {
  for (int64_t tile : {1, 4}) {
    PlanCase c(300, 20, 36, 5, 2, tile, 13);
    // Every token's first slot goes to expert 2, expert 4 gets nothing, and
    // some slots are skipped with -1 or an out-of-range id.
    for (int64_t t = 0; t < c.s.numTokens; ++t) {
      c.ids[t * 2] = 2;
      c.ids[t * 2 + 1] = t % 3 == 0 ? -1 : (t % 7 == 0 ? 5 : int32_t(t % 2));
    }
    Plan p = c.plan();
    EXPECT_EQ(p.offsets[4], p.offsets[5]);
    std::vector<float> expected = c.experts(Activation::Silu);
    expectBitwiseEqual(c.fused(p, Activation::Silu), expected);
    expectBitwiseEqual(c.chain(p, Activation::Silu), expected);
  }
}

TEST(CpuPlanKernels, NoTokens) {
  PlanCase c(0, 20, 36, 5, 2, 4, 17);
  Plan p = c.plan();
  EXPECT_TRUE(allEqual(p.offsets, 0));
  EXPECT_TRUE(allEqual(p.rowToken, -1));
  EXPECT_TRUE(c.fusedWithThreads(p, 2).empty());
  // Every row is beyond offsets[E]: zero.
  std::vector<float> a(c.numRows() * c.s.hidden, 1.0f);
  std::vector<float> g(c.numRows() * c.s.ffn, 7.0f);
  EXPECT_TRUE(groupedMatmul(a.data(), p.offsets.data(), c.gate.data(), g.data(),
                            c.s.numExperts, c.numRows(), c.s.ffn, c.s.hidden));
  EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float v) { return v == 0; }));
}

TEST(CpuPlanKernels, FusedBitwiseDeterministicAcrossThreads) {
  PlanCase c(97, 72, 136, 8, 2, 4, 14);
  Plan p = c.plan();
  std::vector<float> expected = c.fusedWithThreads(p, 1);
  for (unsigned numThreads : {2u, 3u, 4u, 2u})
    expectBitwiseEqual(c.fusedWithThreads(p, numThreads), expected);
}

//===----------------------------------------------------------------------===//
// Inconsistent arguments
//===----------------------------------------------------------------------===//

TEST(CpuPlanKernels, InconsistentSizesGiveNaN) {
  PlanCase c(3, 8, 16, 2, 1, 2, 15);
  Plan p = c.plan();
  const int64_t rows = c.numRows();
  std::vector<float> a(rows * 8), g(rows * 16), out3x8(3 * 8);
  auto xM = memref<float, 2>(c.x, {3, 8});
  auto rowTokenM = memref<int32_t, 1>(p.rowToken, {rows});
  auto offsetsM = memref<int32_t, 1>(p.offsets, {3});
  auto slotRowM = memref<int32_t, 2>(p.slotRow, {3, 1});
  auto gatesM = memref<float, 2>(c.gates, {3, 1});
  auto gateM = memref<float, 3>(c.gate, {2, 16, 8});
  auto upM = memref<float, 3>(c.up, {2, 16, 8});
  auto aM = memref<float, 2>(a, {rows, 8});
  auto gM = memref<float, 2>(g, {rows, 16});
  auto out3x8M = memref<float, 2>(out3x8, {3, 8});

  // down claims [2, 16, 8] instead of [2, 8, 16].
  auto badDownM = memref<float, 3>(c.down, {2, 16, 8});
  _mlir_ciface_moert_fused_experts(&xM, &rowTokenM, &offsetsM, &slotRowM,
                                   &gatesM, &gateM, &upM, &badDownM, &out3x8M,
                                   0);
  EXPECT_TRUE(allNaN(out3x8));

  // out has one row fewer than rowToken.
  std::vector<float> shortA((rows - 1) * 8);
  auto shortAM = memref<float, 2>(shortA, {rows - 1, 8});
  _mlir_ciface_moert_dispatch(&xM, &rowTokenM, &offsetsM, &shortAM);
  EXPECT_TRUE(allNaN(shortA));

  // The weights' K (8) is not a's (16).
  std::vector<float> wrongK(rows * 16);
  auto wrongKM = memref<float, 2>(wrongK, {rows, 16});
  _mlir_ciface_moert_grouped_matmul(&gM, &offsetsM, &gateM, &wrongKM);
  EXPECT_TRUE(allNaN(wrongK));

  // u is [rows, 8], g is [rows, 16]; activation 2 does not exist.
  std::vector<float> h(rows * 16);
  auto hM = memref<float, 2>(h, {rows, 16});
  _mlir_ciface_moert_glu(&gM, &aM, &hM, 0);
  EXPECT_TRUE(allNaN(h));
  std::fill(h.begin(), h.end(), 0.0f);
  _mlir_ciface_moert_glu(&gM, &gM, &hM, 2);
  EXPECT_TRUE(allNaN(h));

  // gates are [3, 1] but slotRow claims [1, 3].
  auto wideSlotRowM = memref<int32_t, 2>(p.slotRow, {1, 3});
  std::vector<float> out1x8(8);
  auto out1x8M = memref<float, 2>(out1x8, {1, 8});
  _mlir_ciface_moert_combine(&aM, &wideSlotRowM, &gatesM, &out1x8M);
  EXPECT_TRUE(allNaN(out1x8));

  // slotRow has 3 rows, ids 2.
  std::vector<int32_t> offsets(3), rowToken(rows), slotRow(3);
  auto idsM = memref<int32_t, 2>(c.ids, {3, 1});
  auto offsets2M = memref<int32_t, 1>(offsets, {3});
  auto rowToken2M = memref<int32_t, 1>(rowToken, {rows});
  auto slotRow2M = memref<int32_t, 2>(slotRow, {1, 3});
  _mlir_ciface_moert_plan(&idsM, &offsets2M, &rowToken2M, &slotRow2M, 2);
  EXPECT_TRUE(allEqual(offsets, -1));
  EXPECT_TRUE(allEqual(rowToken, -1));
  EXPECT_TRUE(allEqual(slotRow, -1));
}

TEST(CpuPlanKernels, InconsistentPlansGiveNaN) {
  PlanCase c(37, 20, 36, 5, 2, 4, 16);
  const Plan good = c.plan();
  const int64_t rows = c.numRows(), d = c.s.hidden, f = c.s.ffn;
  std::vector<float> a(rows * d), g(rows * f), out(c.s.numTokens * d);
  auto dispatchFails = [&](Plan &p) {
    return !dispatch(c.x.data(), p.rowToken.data(), p.offsets.data(), a.data(),
                     c.s, rows) &&
           allNaN(a);
  };
  auto groupedMatmulFails = [&](Plan &p) {
    return !groupedMatmul(a.data(), p.offsets.data(), c.gate.data(), g.data(),
                          c.s.numExperts, rows, f, d) &&
           allNaN(g);
  };
  auto combineFails = [&](Plan &p) {
    return !combine(a.data(), p.slotRow.data(), c.gates.data(), out.data(), c.s,
                    rows) &&
           allNaN(out);
  };

  Plan p = good;
  std::swap(p.offsets[1], p.offsets[2]);
  EXPECT_TRUE(dispatchFails(p) && groupedMatmulFails(p));
  EXPECT_TRUE(allNaN(c.fused(p, Activation::Silu)));

  p = good;
  p.offsets.back() = static_cast<int32_t>(rows + 1);
  EXPECT_TRUE(dispatchFails(p) && groupedMatmulFails(p));
  EXPECT_TRUE(allNaN(c.fused(p, Activation::Silu)));

  p = good;
  p.rowToken[0] = static_cast<int32_t>(c.s.numTokens);
  EXPECT_TRUE(dispatchFails(p));
  EXPECT_TRUE(allNaN(c.fused(p, Activation::Silu)));

  p = good;
  p.slotRow[3] = static_cast<int32_t>(rows);
  EXPECT_TRUE(combineFails(p));
  EXPECT_TRUE(allNaN(c.fused(p, Activation::Silu)));

  // Rows in range but of another token: only the fused kernel can tell.
  p = good;
  std::swap(p.slotRow[0], p.slotRow[2]);
  EXPECT_TRUE(allNaN(c.fused(p, Activation::Silu)));
}

} // namespace
