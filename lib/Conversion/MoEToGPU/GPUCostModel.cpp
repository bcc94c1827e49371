//===- GPUCostModel.cpp - which kernel form each expert GEMM gets ---------===//
//
// A roofline per form: the time is the largest of its DRAM traffic (the
// weights of the experts the rows touch), its L2 traffic (weights and rows
// re-read by each output tile) and its arithmetic, each at the fraction of
// the chip's peak that form reaches. The fractions are estimates for these
// kernels (shared memory and pipelining only in the warpgroup form) until
// measured.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/GPUCostModel.h"

#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/MathExtras.h"

#include <algorithm>
#include <cmath>

using namespace mlir::moe::gpu_lowering;

namespace {
/// L2 bandwidth in multiples of DRAM bandwidth (about right for A100/H100).
constexpr double kL2Factor = 2.5;
/// Fractions of peak each form reaches: DRAM, L2 and arithmetic.
constexpr double kSplitBandwidth = 0.7, kSplitArith = 0.25;
constexpr double kThreadBandwidth = 0.25, kThreadArith = 0.5;
constexpr double kMmaBandwidth = 0.5, kMmaArith = 0.2;
/// The warpgroup form stages its tiles in shared memory (B by TMA) through
/// a pipeline of 2 to 4 stages: better than mma.sync's loads from global
/// memory. Its A tiles still pass through registers, so it is far from peak;
/// kept at the one-stage estimate until a GPU measures it.
constexpr double kWarpgroupBandwidth = 0.6, kWarpgroupArith = 0.35;
/// Warps per SM a tensor-core form needs to reach its fraction; warpgroups
/// (blocks) per SM for the warpgroup form.
constexpr double kMmaWarpsPerSM = 4;
constexpr double kWarpgroupsPerSM = 2;
/// The rows of a prefill, on which the tiles of the tensor-core forms are
/// chosen.
constexpr int64_t kPrefillRows = 4096;
/// The warpgroup form's hand-over is searched over row counts up to this.
constexpr int64_t kWarpgroupSearchRows = 1 << 17;
/// The split form re-reads every expert's weights once per chunk of
/// kSplitChunkRows of its rows; past this many rows it never wins, so the
/// search stops there.
constexpr int64_t kSplitSearchRows = 256;

/// Expected distinct experts `rows` uniformly routed rows touch.
double touchedExperts(const ExpertGemmShape &s, int64_t rows) {
  double e = static_cast<double>(s.experts);
  return e * (1.0 - std::pow(1.0 - 1.0 / e, static_cast<double>(rows)));
}

double weightBytes(const ExpertGemmShape &s) {
  return static_cast<double>(s.matrices * s.cols * s.depth) *
         (s.bf16Weights ? 2.0 : 4.0);
}

double flops(const ExpertGemmShape &s, double rows) {
  return 2.0 * rows * static_cast<double>(s.matrices * s.cols * s.depth);
}
/// A SIMT form: every `chunkRows` rows of an expert re-read its weights
/// (from L2 after the first); it reaches `bandwidth` of the memory peaks
/// and `arith` of the FMA peak.
double simtSeconds(const ChipLimits &chip, const ExpertGemmShape &s,
                   int64_t rows, int64_t chunkRows, double bandwidth,
                   double arith) {
  double r = static_cast<double>(rows), c = static_cast<double>(chunkRows);
  double touched = std::max(touchedExperts(s, rows), 1.0);
  double dram = touchedExperts(s, rows) * weightBytes(s);
  // An expert with n rows takes ceil(n / c) chunks: n / c plus (c - 1) /
  // (2c) on average over its row counts, and at least one (exactly r for
  // c = 1).
  double chunks = std::max(touched, r / c + touched * (c - 1) / (2 * c));
  double l2 = chunks * weightBytes(s);
  return std::max({dram / (chip.hbmBytesPerSecond * bandwidth),
                   l2 / (chip.hbmBytesPerSecond * kL2Factor * bandwidth),
                   flops(s, r) / (chip.simtFlops * arith)});
}
/// A tensor-core form: output tiles of `rows` x `cols`, each computed by one
/// unit (a warp or a warpgroup), reaching `bandwidth` of the memory peaks
/// and `arith` of the tensor peak with `unitsPerSM` units per SM.
struct TiledForm {
  int64_t rows, cols;
  double bandwidth, arith, unitsPerSM;
};

double tiledSeconds(const ChipLimits &chip, const ExpertGemmShape &s,
                    int64_t rows, const TiledForm &form) {
  double touched = std::max(touchedExperts(s, rows), 1.0);
  // Each expert's rows are padded to whole tiles: few rows per expert waste
  // most of a tall tile.
  double tiles =
      touched * std::ceil(static_cast<double>(rows) / touched / form.rows);
  double padded = tiles * static_cast<double>(form.rows);
  double colTiles = static_cast<double>(s.cols / form.cols);
  double dram = touched * weightBytes(s);
  // Each row tile reads its expert's weights once; each column tile reads
  // the rows (f32) once.
  double l2 = tiles * weightBytes(s) +
              colTiles * static_cast<double>(rows * s.depth) * 4;
  double occupancy = std::min(
      1.0, tiles * colTiles /
               (form.unitsPerSM * static_cast<double>(chip.multiprocessors)));
  return std::max(
      {dram / (chip.hbmBytesPerSecond * form.bandwidth),
       l2 / (chip.hbmBytesPerSecond * kL2Factor * form.bandwidth),
       flops(s, padded) / (chip.tensorFlops * form.arith * occupancy)});
}
} // namespace

std::optional<ChipLimits>
mlir::moe::gpu_lowering::lookupChipLimits(llvm::StringRef chip) {
  // sm_<major><minor>[a]: the model knows a chip per generation and takes
  // its limits for the generation's other chips.
  unsigned version;
  if (!chip.consume_front("sm_"))
    return std::nullopt;
  chip.consume_back("a");
  if (chip.getAsInteger(10, version))
    return std::nullopt;
  if (version >= 90)
    return ChipLimits{"H100 SXM", 3.35e12, 67e12, 989e12, 132};
  if (version >= 80)
    return ChipLimits{"A100 SXM", 2.04e12, 19.5e12, 312e12, 108};
  // Before sm_80 there is no bf16 mma.sync.
  return ChipLimits{"V100 SXM", 0.9e12, 15.7e12, 0, 80};
}

double mlir::moe::gpu_lowering::modelSplitSeconds(const ChipLimits &chip,
                                                  const ExpertGemmShape &s,
                                                  int64_t rows,
                                                  int64_t chunkRows) {
  return simtSeconds(chip, s, rows, chunkRows, kSplitBandwidth, kSplitArith);
}

double mlir::moe::gpu_lowering::modelThreadSeconds(const ChipLimits &chip,
                                                   const ExpertGemmShape &s,
                                                   int64_t rows) {
  return simtSeconds(chip, s, rows, 1, kThreadBandwidth, kThreadArith);
}

double mlir::moe::gpu_lowering::modelMmaSeconds(const ChipLimits &chip,
                                                const ExpertGemmShape &s,
                                                int64_t rows,
                                                int64_t subtiles) {
  TiledForm mma{kMmaRows, kMmaCols * subtiles, kMmaBandwidth, kMmaArith,
                kMmaWarpsPerSM};
  return tiledSeconds(chip, s, rows, mma);
}

double mlir::moe::gpu_lowering::modelWarpgroupSeconds(const ChipLimits &chip,
                                                      const ExpertGemmShape &s,
                                                      int64_t rows,
                                                      int64_t cols) {
  TiledForm warpgroups{kWgmmaRows, cols, kWarpgroupBandwidth, kWarpgroupArith,
                       kWarpgroupsPerSM};
  return tiledSeconds(chip, s, rows, warpgroups);
}

ExpertGemmForms mlir::moe::gpu_lowering::chooseExpertGemmForms(
    const ChipLimits &chip, bool tensorCores, const ExpertGemmShape &s,
    bool warpgroups, int64_t splitChunkRows) {
  ExpertGemmForms forms{kSplitSearchRows, splitChunkRows, 0};
  bool mmaShape = s.bf16Weights && s.depth % kMmaDepth == 0 &&
                  s.cols % kMmaCols == 0 && tensorCores && chip.tensorFlops > 0;
  if (mmaShape) {
    // The warp tile that divides the columns and is fastest on a
    // prefill-sized problem (more subtiles reuse each row fragment more,
    // fewer tiles fill fewer SMs). A lane holds 4 accumulators per subtile
    // and matrix: at most 32, so that the kernel keeps them in registers.
    constexpr int64_t kMaxAccumulators = 32;
    double best = 0;
    for (int64_t subtiles : {8, 4, 2, 1}) {
      if (s.cols % (kMmaCols * subtiles) ||
          4 * subtiles * s.matrices > kMaxAccumulators)
        continue;
      double t = modelMmaSeconds(chip, s, kPrefillRows, subtiles);
      if (!forms.mmaSubtiles || t < best) {
        forms.mmaSubtiles = subtiles;
        best = t;
      }
    }
  }
  // The split form runs while it is no slower than the other form.
  for (int64_t rows = 1; rows <= kSplitSearchRows; ++rows) {
    double other = forms.mmaSubtiles
                       ? modelMmaSeconds(chip, s, rows, forms.mmaSubtiles)
                       : modelThreadSeconds(chip, s, rows);
    if (other < modelSplitSeconds(chip, s, rows, splitChunkRows)) {
      forms.splitMaxRows = std::max<int64_t>(rows - 1, 1);
      break;
    }
  }
  if (!warpgroups || !forms.mmaSubtiles || s.cols % kWgmmaNarrowCols ||
      s.depth % kWgmmaSlice)
    return forms;
  // The warpgroup tile's width: wide tiles stage each row tile once for
  // twice the columns (half the L2 traffic of the rows) but make half as
  // many tiles to fill the GPU; wide unless slower on a prefill, where the
  // form runs.
  int64_t cols = kWgmmaNarrowCols;
  if (s.cols % kWgmmaWideCols == 0 &&
      s.matrices * kWgmmaRows * kWgmmaWideCols / 128 <=
          kMaxWarpgroupAccumulators &&
      modelWarpgroupSeconds(chip, s, kPrefillRows, kWgmmaWideCols) <=
          modelWarpgroupSeconds(chip, s, kPrefillRows, kWgmmaNarrowCols))
    cols = kWgmmaWideCols;
  // It takes over from mma.sync at the first row count past the split
  // form's where it is faster, searched in whole tiles and then in steps of
  // an eighth.
  for (int64_t rows = llvm::alignTo(forms.splitMaxRows + 1, kWgmmaRows);
       rows <= kWarpgroupSearchRows;
       rows +=
       std::max<int64_t>(kWgmmaRows, llvm::alignTo(rows / 8, kWgmmaRows))) {
    if (modelWarpgroupSeconds(chip, s, rows, cols) <
        modelMmaSeconds(chip, s, rows, forms.mmaSubtiles)) {
      forms.warpgroupMinRows = rows;
      forms.warpgroupCols = cols;
      break;
    }
  }
  return forms;
}
