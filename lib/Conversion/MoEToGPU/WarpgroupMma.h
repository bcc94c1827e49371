//===- WarpgroupMma.h - warpgroup tiles of a GEMM on Hopper -----*- C++ -*-===//
//
// A warpgroup (128 threads, one block) computes a kWgmmaRows x N tile of
// A B^T for each B matrix with wgmma.mma_async.m64nNk16, N = 64 or 128 (the
// cost model's warpgroupCols; sm_90a; bf16 operands from shared memory, f32
// accumulators in registers). For each slice of kWgmmaSlice reduction
// elements (one 128-byte row of bf16):
// - B's tile (N weight rows of 128 bytes) comes by TMA
//   (cp.async.bulk.tensor through a tensor map of the weights the host
//   encodes, 128-byte swizzle) and completes on an mbarrier, whose wait
//   traps after half a minute (a load that never lands fails the run
//   instead of hanging the GPU);
// - A's tile is stored by the threads, since its rows are gathered tokens,
//   which a tensor map cannot describe. They store it as TMA's 128-byte
//   swizzle would: 16-byte chunk c of row r at chunk c ^ (r % 8), rows 128
//   bytes apart, in a 1024-byte aligned buffer;
// - four wgmma steps of 16, whose descriptors (128-byte swizzle, 1024 bytes
//   between groups of 8 rows) advance 32 bytes along the swizzled rows.
// The slices go through a ring of stages in dynamic shared memory
// (warpgroupStaging: as many as fit two blocks on a multiprocessor, 2 to
// 4), each with its own mbarrier: stages - 1 slices are loaded ahead, and
// once slice j's wgmmas are issued, the threads load slice j + stages - 1
// (TMA for B, their stores for A) into the stage slice j - 1 used, while the
// tensor cores work; wgmma.wait_group 0 and bar.sync end each slice, so a
// stage is overwritten only after every wgmma that read it is done.
//
// Thread t holds accumulator i (of 32 per matrix) at tile row 16 (t / 32) +
// (t % 32) / 4 + 8 ((i % 4) / 2) and column 8 (i / 4) + 2 (t % 4) + i % 2:
// PTX's wgmma D fragment, each warp's 16 rows laid out as mma.sync's m16n8
// accumulators are for every 8 columns.
//
// The f32 activations enter as in WarpMma.h: rounded to bf16, or as a bf16
// high part and remainder (two wgmma per step, a second A tile). Emulated,
// each thread computes exactly its accumulators from global memory, so the
// tile mapping and epilogues are checked on the CPU; the shared-memory
// layout, the descriptors and TMA only on a GPU.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_LIB_CONVERSION_MOETOGPU_WARPGROUPMMA_H
#define MOE_LIB_CONVERSION_MOETOGPU_WARPGROUPMMA_H

#include "GPUProgram.h"

namespace mlir::moe::gpu_lowering {

/// Threads of a warpgroup: the block of a wgmma kernel. Its tile and
/// reduction slice are GPUCostModel.h's kWgmmaRows, kWgmmaCols and
/// kWgmmaSlice.
constexpr int64_t kWarpgroupThreads = 128;
/// Accumulators per thread per B matrix for tiles of `cols` columns.
constexpr int64_t warpgroupAccumulators(int64_t cols) {
  return kWgmmaRows * cols / kWarpgroupThreads;
}

/// The alignment the swizzled tiles need in shared memory, and the most
/// shared memory a block of the warpgroup form takes: two blocks fit on one
/// H100 multiprocessor (228 KiB, 1 KiB of it reserved per block), as the
/// cost model assumes.
constexpr int64_t kSharedAlignment = 1024;
constexpr int64_t kWarpgroupSharedBudget = 113 * 1024;
/// Stages of the warpgroup form's pipeline at most.
constexpr int64_t kMaxWarpgroupStages = 4;

/// How a warpgroup tile GEMM stages its slices: a ring of `stages` of
/// `stageBytes` each, of which a GEMM of fewer slices uses `usedStages`
/// (their mbarriers follow them), and the dynamic shared memory its blocks
/// need (`sharedBytes`: the stages used, their mbarriers and
/// kSharedAlignment of slack), which the kernel records as
/// kDynamicSharedAttr for its launches. All 0 when emulated (no shared
/// memory).
struct WarpgroupStaging {
  int64_t stages, usedStages, stageBytes, sharedBytes;
};
/// The staging of a GEMM of `matrices` B matrices over `depth` (a multiple
/// of kWgmmaSlice) in tiles of `cols` columns, with A split or rounded as
/// `options` say.
WarpgroupStaging warpgroupStaging(const GPUKernelOptions &options,
                                  int64_t matrices, int64_t depth,
                                  int64_t cols);

struct WarpgroupTileGemm {
  /// The reduction length, a multiple of kWgmmaSlice, and the tile's
  /// columns per B matrix (kWgmmaNarrowCols or kWgmmaWideCols).
  int64_t depth, cols;
  /// A[row, i0 .. i0 + 8) as a vector<8xf32>, for tile row `row` (0 to
  /// kWgmmaRows - 1) and i0 a multiple of 8; zeros for a row outside the
  /// problem.
  function_ref<Value(KernelBody &, Value row, Value i0)> loadA;
  /// The B matrices, bf16 [experts, cols, depth] or [cols, depth] with the
  /// identity layout (read directly when emulated), and their tensor maps
  /// (kernel arguments, from createWeightTensorMap; unused when emulated).
  SmallVector<Value, 2> b;
  SmallVector<Value, 2> bMaps;
  /// The tile's expert (null for B without an experts dimension) and first
  /// column.
  Value expert, colBase;
};

/// The thread's accumulators after the whole reduction,
/// acc[m * warpgroupAccumulators(gemm.cols) + i].
/// All 128 threads of the block must be here (barriers); the kernel asks for
/// warpgroupStaging's sharedBytes of dynamic shared memory. k.options say
/// whether A is split or rounded (bf16Activations) and whether to emulate.
SmallVector<Value> emitWarpgroupTileGemm(KernelBody &k, Value thread,
                                         const WarpgroupTileGemm &gemm);

/// body(at, row, col) for each of the thread's accumulators of the first
/// matrix of a tile of `cols` columns (add warpgroupAccumulators(cols) m to
/// `at` for matrix m), with its tile row and column.
void forEachWarpgroupAccumulator(
    KernelBody &k, Value thread, int64_t cols,
    function_ref<void(int64_t at, Value row, Value col)> body);

/// Whether GEMMs of `weights` emitted at `p`'s host insertion point may get
/// the warpgroup form: `wgmma` asked for, weights of the identity layout
/// (what a tensor map describes), and not in a pass loop that becomes a
/// resident kernel (whose phases are grid-stride loops with no block-wide
/// barriers).
bool mayUseWarpgroups(GPUProgram &p, ArrayRef<Value> weights);

/// Where the block of thread `gid` works in a warpgroup form over `cols`
/// columns in tiles of `tileCols` (a block per (row tile, column tile),
/// column tiles fastest): its thread in the warpgroup, its row tile and its
/// first column.
struct WarpgroupTask {
  Value thread, rowTile, colBase;
};
WarpgroupTask warpgroupTask(KernelBody &k, Value gid, int64_t cols,
                            int64_t tileCols);

/// source[row, i0 .. i0 + 8) as a vector<8xf32>, zeros where `used` is false
/// (`row` must be in bounds either way): what WarpgroupTileGemm::loadA
/// returns.
Value loadChunkOrZeros(KernelBody &k, Value source, Value row, Value i0,
                       Value used);

/// On the host: the tensor map through which TMA loads tiles of the bf16
/// weights `w` ([experts, cols, depth] or [cols, depth], identity layout),
/// boxes of `tileCols` rows of kWgmmaSlice elements with the 128-byte
/// swizzle; a device pointer that the runtime keeps for the model's life.
/// Asked for only when the form gets `rows`, else null: decode steps skip
/// the call.
Value createWeightTensorMap(GPUProgram &p, Value w, int64_t tileCols,
                            Value rows);

} // namespace mlir::moe::gpu_lowering

#endif // MOE_LIB_CONVERSION_MOETOGPU_WARPGROUPMMA_H
