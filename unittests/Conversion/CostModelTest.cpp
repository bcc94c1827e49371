//===- CostModelTest.cpp - the expert GEMM form choices -------------------===//
#include "moe/Conversion/GPUCostModel.h"

#include "gtest/gtest.h"

#include <cmath>
#include <string>

using namespace mlir::moe::gpu_lowering;

namespace {
struct LayerShape {
  const char *name;
  int64_t d, f, experts, topK;
};
// PERFORMANCE.md's shapes.
const LayerShape kShapes[] = {{"mixtral-8x7b", 4096, 14336, 8, 2},
                              {"qwen3-30b-a3b", 2048, 768, 128, 8},
                              {"olmoe-1b-7b", 2048, 1024, 64, 8},
                              {"looped-moe-scaled", 1024, 2752, 8, 2},
                              {"cpu-small", 512, 1024, 8, 2}};

ExpertGemmShape gateUp(const LayerShape &s, bool bf16 = true) {
  return {s.experts, s.topK, s.f, s.d, 2, bf16};
}
ExpertGemmShape down(const LayerShape &s, bool bf16 = true) {
  return {s.experts, s.topK, s.d, s.f, 1, bf16};
}

ChipLimits chip(const char *name) {
  std::optional<ChipLimits> limits = lookupChipLimits(name);
  EXPECT_TRUE(limits.has_value()) << name;
  return *limits;
}

const char *const kChips[] = {"sm_90a", "sm_80"};

TEST(CostModelTest, KnowsTheChipsItModels) {
  EXPECT_EQ(chip("sm_90a").multiprocessors, 132);
  EXPECT_EQ(chip("sm_90").multiprocessors, 132);
  EXPECT_EQ(chip("sm_80").multiprocessors, 108);
  // A generation's other chips get its limits.
  EXPECT_EQ(chip("sm_100a").multiprocessors, 132);
  EXPECT_EQ(chip("sm_89").multiprocessors, 108);
  // Before sm_80: no bf16 mma.sync.
  EXPECT_EQ(chip("sm_75").tensorFlops, 0);
  EXPECT_EQ(
      chooseExpertGemmForms(chip("sm_75"), true, {8, 2, 1024, 1024, 2, true})
          .mmaSubtiles,
      0);
  for (const char *bad : {"", "sm_", "sm_9x", "gfx90a", "90"})
    EXPECT_FALSE(lookupChipLimits(bad).has_value()) << bad;
}

// Decode (one token: top-k rows) is weight bound: every shape keeps the
// warp-per-output form there, and a prefill of 8192 tokens goes to the
// tensor cores with the widest warp tile whose accumulators fit: 8 subtiles
// for one matrix (down), 4 for two that share the rows (gate and up).
TEST(CostModelTest, DecodeSplitsPrefillUsesTensorCores) {
  for (const char *name : kChips) {
    for (const LayerShape &s : kShapes) {
      for (const ExpertGemmShape &g : {gateUp(s), down(s)}) {
        ExpertGemmForms forms = chooseExpertGemmForms(chip(name), true, g);
        EXPECT_GE(forms.splitMaxRows, s.topK) << name << " " << s.name;
        int64_t widest = g.matrices == 2 ? 4 : 8;
        EXPECT_EQ(forms.mmaSubtiles, widest) << name << " " << s.name;
        int64_t prefill = 8192 * s.topK;
        double mma = modelMmaSeconds(chip(name), g, prefill, widest);
        EXPECT_LT(mma, modelSplitSeconds(chip(name), g, prefill)) << s.name;
        EXPECT_LT(mma, modelThreadSeconds(chip(name), g, prefill)) << s.name;
      }
    }
  }
}

// The hand-over row count is where the other form first gets faster.
TEST(CostModelTest, HandsOverWhereTheOtherFormGetsFaster) {
  for (const char *name : kChips) {
    ChipLimits c = chip(name);
    for (const LayerShape &s : kShapes) {
      for (bool bf16 : {true, false}) {
        ExpertGemmShape g = gateUp(s, bf16);
        ExpertGemmForms forms = chooseExpertGemmForms(c, true, g);
        auto other = [&](int64_t rows) {
          return forms.mmaSubtiles
                     ? modelMmaSeconds(c, g, rows, forms.mmaSubtiles)
                     : modelThreadSeconds(c, g, rows);
        };
        for (int64_t rows = 1; rows <= forms.splitMaxRows; ++rows)
          EXPECT_LE(modelSplitSeconds(c, g, rows), other(rows))
              << name << " " << s.name << " rows " << rows;
        if (forms.splitMaxRows < 256)
          EXPECT_LT(other(forms.splitMaxRows + 1),
                    modelSplitSeconds(c, g, forms.splitMaxRows + 1))
              << name << " " << s.name;
      }
    }
  }
}

// Many experts spread the rows thin (padding each expert's rows to a tile of
// 16 costs more): the hand-over comes later than with few experts.
TEST(CostModelTest, ManyExpertsHandOverLater) {
  ChipLimits c = chip("sm_90a");
  ExpertGemmForms few =
      chooseExpertGemmForms(c, true, {8, 2, 2048, 2048, 2, true});
  ExpertGemmForms many =
      chooseExpertGemmForms(c, true, {128, 2, 2048, 2048, 2, true});
  EXPECT_LT(few.splitMaxRows, many.splitMaxRows);
}

// Tensor cores need bf16 weights, whole k-steps and whole subtiles, and to
// be asked for; the warp tile is the widest that divides the columns.
TEST(CostModelTest, TensorCoresOnlyWhereTheyApply) {
  ChipLimits c = chip("sm_90a");
  auto subtiles = [&](bool tensorCores, ExpertGemmShape g) {
    return chooseExpertGemmForms(c, tensorCores, g).mmaSubtiles;
  };
  ExpertGemmShape base{8, 2, 1024, 1024, 2, true};
  EXPECT_EQ(subtiles(true, base), 4);
  EXPECT_EQ(subtiles(false, base), 0);
  ExpertGemmShape f32 = base;
  f32.bf16Weights = false;
  EXPECT_EQ(subtiles(true, f32), 0);
  ExpertGemmShape oddDepth = base;
  oddDepth.depth = 1000;
  EXPECT_EQ(subtiles(true, oddDepth), 0);
  ExpertGemmShape oddCols = base;
  oddCols.cols = 1020;
  EXPECT_EQ(subtiles(true, oddCols), 0);
  ExpertGemmShape cols16 = base;
  cols16.cols = 1040; // 130 subtiles of 8: pairs, not fours
  EXPECT_EQ(subtiles(true, cols16), 2);
  ExpertGemmShape cols8 = base;
  cols8.cols = 1032; // 129 subtiles
  EXPECT_EQ(subtiles(true, cols8), 1);
  // One matrix leaves room for 8 subtiles' accumulators.
  ExpertGemmShape single = base;
  single.matrices = 1;
  EXPECT_EQ(subtiles(true, single), 8);
  single.cols = 1056; // 132 subtiles: fours, not eights
  EXPECT_EQ(subtiles(true, single), 4);
}
} // namespace

// The warpgroup form (wgmma, asked for) takes over from mma.sync at the
// first power of two past the split form's rows where the model says it is
// faster, and every shape of PERFORMANCE.md gets it for a prefill of 8192
// tokens. It needs depth and columns in multiples of 64, and mma.sync.
TEST(CostModelTest, WarpgroupsTakeOverForLargePrefills) {
  ChipLimits c = chip("sm_90a");
  for (const LayerShape &s : kShapes) {
    for (const ExpertGemmShape &g : {gateUp(s), down(s)}) {
      ExpertGemmForms forms = chooseExpertGemmForms(c, true, g, true);
      int64_t from = forms.warpgroupMinRows;
      ASSERT_GT(from, forms.splitMaxRows) << s.name;
      EXPECT_LE(from, 8192 * s.topK) << s.name;
      int64_t cols = forms.warpgroupCols;
      EXPECT_LT(modelWarpgroupSeconds(c, g, from, cols),
                modelMmaSeconds(c, g, from, forms.mmaSubtiles))
          << s.name;
      if (from / 2 > forms.splitMaxRows)
        EXPECT_GE(modelWarpgroupSeconds(c, g, from / 2, cols),
                  modelMmaSeconds(c, g, from / 2, forms.mmaSubtiles))
            << s.name;
      EXPECT_EQ(chooseExpertGemmForms(c, true, g).warpgroupMinRows, 0);
      EXPECT_EQ(chooseExpertGemmForms(c, false, g, true).warpgroupMinRows, 0);
    }
  }
  ExpertGemmShape oddCols{8, 2, 1040, 1024, 2, true};
  EXPECT_EQ(chooseExpertGemmForms(c, true, oddCols, true).warpgroupMinRows, 0);
  ExpertGemmShape oddDepth{8, 2, 1024, 1040, 2, true};
  EXPECT_EQ(chooseExpertGemmForms(c, true, oddDepth, true).warpgroupMinRows, 0);
  ExpertGemmShape f32{8, 2, 1024, 1024, 2, false};
  EXPECT_EQ(chooseExpertGemmForms(c, true, f32, true).warpgroupMinRows, 0);
}

// The warpgroup tiles are 128 columns wide where that divides the columns,
// keeps a thread's accumulators within kMaxWarpgroupAccumulators (one
// matrix: 64; gate and up together would hold 128) and models no slower on
// a prefill (the rows staged once for twice the columns); else 64.
TEST(CostModelTest, WarpgroupTilesAreWideWhereTheyFit) {
  ChipLimits c = chip("sm_90a");
  for (const LayerShape &s : kShapes) {
    ExpertGemmForms up = chooseExpertGemmForms(c, true, gateUp(s), true);
    EXPECT_EQ(up.warpgroupCols, kWgmmaNarrowCols) << s.name;
    ExpertGemmShape g = down(s);
    ExpertGemmForms forms = chooseExpertGemmForms(c, true, g, true);
    ASSERT_GT(forms.warpgroupMinRows, 0) << s.name;
    EXPECT_EQ(forms.warpgroupCols, kWgmmaWideCols) << s.name;
    EXPECT_LE(modelWarpgroupSeconds(c, g, 4096, kWgmmaWideCols),
              modelWarpgroupSeconds(c, g, 4096, kWgmmaNarrowCols))
        << s.name;
    // Columns in odd multiples of 64 keep narrow tiles.
    g.cols = 64 * 21;
    EXPECT_EQ(chooseExpertGemmForms(c, true, g, true).warpgroupCols,
              kWgmmaNarrowCols)
        << s.name;
  }
  // Without the form, no width.
  EXPECT_EQ(chooseExpertGemmForms(c, true, down(kShapes[0])).warpgroupCols, 0);
}

// A decode batch of 16 tokens gives each of 8 experts 4 of its 32 rows on
// average: the split form takes them in chunks of kSplitChunkRows rows of an
// expert, so it keeps them instead of handing them to the tensor cores'
// tiles, and on an H100 its modelled time is the touched experts' weights
// read once from DRAM at the form's bandwidth (on an A100 the SIMT FMAs of
// 32 rows bind first).
TEST(CostModelTest, DecodeBatchesReadEachExpertsWeightsOnce) {
  for (const char *name : kChips) {
    ChipLimits c = chip(name);
    for (const LayerShape &s : kShapes) {
      if (s.experts != 8)
        continue;
      int64_t rows = 16 * s.topK;
      for (const ExpertGemmShape &g : {gateUp(s), down(s)}) {
        ExpertGemmForms forms = chooseExpertGemmForms(c, true, g);
        EXPECT_GE(forms.splitMaxRows, rows) << name << " " << s.name;
        double touched = 8 * (1 - std::pow(7.0 / 8, rows));
        double weights = double(g.matrices * g.cols * g.depth) * 2;
        if (std::string(name) != "sm_90a")
          continue;
        EXPECT_NEAR(modelSplitSeconds(c, g, rows),
                    touched * weights / (c.hbmBytesPerSecond * 0.7), 1e-9)
            << name << " " << s.name;
      }
    }
  }
}
