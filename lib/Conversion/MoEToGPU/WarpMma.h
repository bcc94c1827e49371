//===- WarpMma.h - warp tiles of a GEMM on the tensor cores -----*- C++ -*-===//
//
// A warp computes a kMmaRows x (kMmaCols * subtiles) tile of A B^T with
// mma.sync.m16n8k16 (bf16 operands, f32 accumulators): each lane loads its
// fragment elements straight from global memory (no shared memory), so a
// tile may gather its rows (the rows of A are the routed tokens).
//
// Lane l holds, for each subtile, the accumulators at tile rows g, g, g + 8,
// g + 8 and columns 2t, 2t + 1, 2t, 2t + 1 (g = l / 4, t = l % 4), as PTX
// defines them.
//
// A (f32 activations) is either rounded to bf16 (bf16 accuracy) or split
// into a bf16 high part and a bf16 remainder, each multiplied on the tensor
// cores (two mma.sync per step, about 16 bits of each activation: close to
// f32 accuracy; the weights are bf16 exactly either way). In the emulated mode
// each lane computes exactly its own accumulators from whole rows of A and B (A
// rounded to bf16 as the GPU rounds it), so the tile mapping, masks and
// epilogues are checked on the CPU; only the A/B fragment register layout needs
// the GPU.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_LIB_CONVERSION_MOETOGPU_WARPMMA_H
#define MOE_LIB_CONVERSION_MOETOGPU_WARPMMA_H

#include "GPUProgram.h"
#include "moe/Conversion/GPUCostModel.h"

namespace mlir::moe::gpu_lowering {

struct WarpTileGemm {
  /// The reduction length, a multiple of kMmaDepth.
  int64_t depth;
  /// Subtiles of kMmaCols columns.
  int64_t subtiles;
  /// B matrices that share the rows of A (gate and up), each with its own
  /// accumulators.
  int64_t matrices;
  /// A[row, i] as f32 for this lane's row `half` (0: tile row g, 1: g + 8);
  /// 0 for a row outside the problem.
  function_ref<Value(KernelBody &, int64_t half, Value i)> loadA;
  /// The B matrices: bf16 weights, each [..., cols, depth] with depth
  /// innermost and its buffer 4-byte aligned (element pairs are loaded as
  /// one 32-bit word), the same layout for all.
  SmallVector<Value, 2> b;
  /// The indices of B_m[col, i] in b[m], col a column of the tile.
  function_ref<SmallVector<Value>(KernelBody &, Value col, Value i)> bIndices;
};

/// The lane's accumulators after the whole reduction, acc[(m * subtiles + s)
/// * 4 + i]. k.options say whether A is split or rounded
/// (bf16Activations) and whether mma.sync is emulated (emulateWarpOps).
SmallVector<Value> emitWarpTileGemm(KernelBody &k, Value lane,
                                    const WarpTileGemm &gemm);

/// The row half (0 or 1, as in loadA) and tile column of accumulator `i` of
/// subtile `s` of `lane`.
std::pair<int64_t, Value> accumulatorPosition(KernelBody &k, Value lane,
                                              int64_t s, int64_t i);

/// body(at, half, col) for each of the lane's accumulators of the first
/// matrix (at: its index in emitWarpTileGemm's result; add subtiles * 4 * m
/// for matrix m) with its row half and tile column: the epilogue.
void forEachAccumulator(
    KernelBody &k, Value lane, int64_t subtiles,
    function_ref<void(int64_t at, int64_t half, Value col)> body);

} // namespace mlir::moe::gpu_lowering

#endif // MOE_LIB_CONVERSION_MOETOGPU_WARPMMA_H
