//===- GPUCostModel.h - the kernel form of each GEMM ------------*- C++ -*-===//
//
// The weight GEMMs of the GPU kernels (experts, and a decoder's dense ones as
// a single "expert") have three forms: a warp per output (decode: few rows,
// weight bound), a thread per output (SIMT), and warp tiles on the tensor
// cores (mma.sync); with wgmma (sm_90a) a fourth, Hopper warpgroup tiles.
// Which form runs depends on the rows, known only at run time, so the cost
// model picks at compile time the row counts at which the forms hand over,
// and the tile of the mma.sync form, from the shapes and the chip's limits. Its
// efficiency factors are estimates until bench/gpu calibrates them on a GPU.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_CONVERSION_GPUCOSTMODEL_H
#define MOE_CONVERSION_GPUCOSTMODEL_H

#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <optional>

namespace mlir::moe::gpu_lowering {

/// What the cost model knows of a chip (dense bf16 tensor peak, 0 for a
/// chip without bf16 mma.sync; SIMT is the f32 FMA peak).
struct ChipLimits {
  llvm::StringRef name;
  double hbmBytesPerSecond;
  double simtFlops;
  double tensorFlops;
  int64_t multiprocessors;
};

/// The limits of the chip `chip` names: sm_90 and later as an H100 SXM,
/// sm_80 to sm_89 as an A100 SXM, earlier ones as a V100 (no bf16 tensor
/// cores); none for a name that is not sm_<number>[a].
std::optional<ChipLimits> lookupChipLimits(llvm::StringRef chip);

/// Rows of one mma.sync.m16n8k16 tile, its reduction step and the columns of
/// one subtile.
constexpr int64_t kMmaRows = 16;
constexpr int64_t kMmaDepth = 16;
constexpr int64_t kMmaCols = 8;
/// Rows of one expert's segment a warp of the split (decode) form takes at
/// once: it reads each weight chunk once for all of them.
constexpr int64_t kSplitChunkRows = 4;
/// The tile of the Hopper warpgroup form (wgmma.m64nNk16 from shared
/// memory): kWgmmaRows rows and, per B matrix, kWgmmaNarrowCols or
/// kWgmmaWideCols columns (the cost model picks); and the reduction slice it
/// stages at a time (one 128-byte row of bf16).
constexpr int64_t kWgmmaRows = 64;
constexpr int64_t kWgmmaNarrowCols = 64;
constexpr int64_t kWgmmaWideCols = 128;
constexpr int64_t kWgmmaSlice = 64;
/// The most accumulators a thread of the warpgroup form holds (f32
/// registers: kWgmmaRows x cols / 128 per B matrix). Gate and up together
/// keep 64-column tiles: each staged A tile already serves 128 output
/// columns, and wide ones would take 217 registers and leave room for only
/// two pipeline stages (ptxas, sm_90a).
constexpr int64_t kMaxWarpgroupAccumulators = 64;

/// One GEMM of an expert group: every routed row times a [cols, depth]
/// weight matrix (`matrices` of them share the rows, as gate and up do).
struct ExpertGemmShape {
  int64_t experts, topK, cols, depth, matrices;
  bool bf16Weights;
};

/// The forms one expert GEMM gets.
struct ExpertGemmForms {
  /// Rows up to which the warp-per-output form runs; beyond, the tensor-core
  /// form if `mmaSubtiles` is set, else a thread per output.
  int64_t splitMaxRows;
  /// Rows of one expert a warp of that form takes at once.
  int64_t splitChunkRows;
  /// Subtiles of kMmaCols columns per warp tile of the tensor-core form (a
  /// warp computes kMmaRows x (8 * mmaSubtiles)), or 0 for no such form.
  int64_t mmaSubtiles;
  /// Rows from which the Hopper warpgroup form takes over from the mma.sync
  /// one, or 0 for no such form, and the columns of its tiles
  /// (kWgmmaNarrowCols or kWgmmaWideCols per B matrix).
  int64_t warpgroupMinRows = 0;
  int64_t warpgroupCols = 0;
};

/// Picks the forms of `shape` on `chip`. The tensor-core form needs
/// `tensorCores`, a chip with bf16 mma.sync, bf16 weights, a depth that is a
/// multiple of kMmaDepth and columns a multiple of kMmaCols. The warpgroup
/// form needs `warpgroups` (the caller knows the chip is sm_90a and the
/// kernels may use it) and a depth and columns that are multiples of 64; its
/// tiles are 128 columns wide where they divide the columns, keep at most
/// kMaxWarpgroupAccumulators per thread and model faster on a prefill.
/// The warp-per-output form takes `splitChunkRows` rows at once.
ExpertGemmForms chooseExpertGemmForms(const ChipLimits &chip, bool tensorCores,
                                      const ExpertGemmShape &shape,
                                      bool warpgroups = false,
                                      int64_t splitChunkRows = kSplitChunkRows);

/// The modelled time in seconds of `shape` at `rows` routed rows in the
/// 32-lane form (taking `chunkRows` rows at once), the thread-per-output
/// form and the tensor-core form with `subtiles` (exposed for the tests of
/// the model).
double modelSplitSeconds(const ChipLimits &chip, const ExpertGemmShape &shape,
                         int64_t rows, int64_t chunkRows = kSplitChunkRows);
double modelThreadSeconds(const ChipLimits &chip, const ExpertGemmShape &shape,
                          int64_t rows);
double modelMmaSeconds(const ChipLimits &chip, const ExpertGemmShape &shape,
                       int64_t rows, int64_t subtiles);
double modelWarpgroupSeconds(const ChipLimits &chip,
                             const ExpertGemmShape &shape, int64_t rows,
                             int64_t cols);

} // namespace mlir::moe::gpu_lowering

#endif // MOE_CONVERSION_GPUCOSTMODEL_H
