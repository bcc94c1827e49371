//===- CpuPlanKernels.h - Expert group steps on a routing plan --*- C++ -*-===//
//
// The expert group of CpuKernels.h split into the steps the compiler schedules
// on its own: a routing plan, the gather of token rows into expert order
// (dispatch), one GEMM per expert segment (grouped matmul), the gated
// activation (glu) and the gate-weighted sum back to tokens (combine); and the
// fused kernel that runs them all from a precomputed plan.
//
// A plan for ids [T, k] over E experts with row tile `tile` >= 1 is three
// int32 buffers:
//  - offsets [E + 1]: expert e's packed rows are [offsets[e], offsets[e + 1]),
//    its slot count rounded up to a multiple of `tile`, so every segment
//    starts tile-aligned; offsets[0] = 0.
//  - rowToken [R], R >= planRows(): the token of each packed row; -1 for the
//    padding rows of a segment and for every row from offsets[E] on.
//  - slotRow [T, k]: the packed row of slot j of token t, or -1 where
//    ids[t, j] is outside [0, E).
// A segment's rows are in ascending (token, slot) order, so the plan depends
// on the ids alone.
//
// The chain plan, dispatch, grouped matmul (gate and up), glu, grouped matmul
// (down), combine and the fused kernel both compute exactly what
// moert::cpu::experts computes, with the same arithmetic for every element:
// all three give the same bits, for any thread count.
//
// The kernels read plans they did not build: a plan whose buffers disagree
// (offsets out of order or past R, a row or token index out of range, a slot
// whose row belongs to another token) is rejected like inconsistent sizes,
// with NaN in the float outputs and -1 in the int outputs.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CPUPLANKERNELS_H
#define MOERT_CPUPLANKERNELS_H

#include "moert/CpuKernels.h"

#include "mlir/ExecutionEngine/CRunnerUtils.h"

#include <cstdint>

namespace moert::cpu {

/// The rows R of a plan over `shape` with row tile `tile`: T*k + E*(tile-1),
/// enough for every segment's padding.
int64_t planRows(const MoEShape &shape, int64_t tile) noexcept;

/// Builds the plan of `ids` [T, k] over E experts (shape.numExperts) into
/// offsets [E + 1], rowToken [numRows] and slotRow [T, k]. Fails, filling all
/// three with -1, unless tile >= 1 and planRows(shape, tile) is at most
/// numRows and fits in int32.
bool plan(const int32_t *ids, int32_t *offsets, int32_t *rowToken,
          int32_t *slotRow, const MoEShape &shape, int64_t tile,
          int64_t numRows) noexcept;

/// out[r,:] = x[rowToken[r],:] for the plan's rows, zero for padding rows and
/// rows from offsets[E] on. x: [T, d]; out: [numRows, d].
bool dispatch(const float *x, const int32_t *rowToken, const int32_t *offsets,
              float *out, const MoEShape &shape, int64_t numRows,
              unsigned numThreads = 0) noexcept;

/// out[r,:] = a[r,:] @ w[e]^T for the rows r of each expert e's segment, zero
/// from offsets[E] on. a: [numRows, k]; w: [E, n, k]; out: [numRows, n].
bool groupedMatmul(const float *a, const int32_t *offsets, const float *w,
                   float *out, int64_t numExperts, int64_t numRows, int64_t n,
                   int64_t k, unsigned numThreads = 0) noexcept;

/// out = act(g) * u elementwise over [rows, cols]; `out` may be `g`.
void glu(const float *g, const float *u, float *out, int64_t rows, int64_t cols,
         Activation activation, unsigned numThreads = 0) noexcept;

/// out[t,:] = sum over ascending j of gates[t,j] * y[slotRow[t,j],:], slots
/// with row -1 skipped. y: [numRows, d]; slotRow, gates: [T, k]; out: [T, d].
bool combine(const float *y, const int32_t *slotRow, const float *gates,
             float *out, const MoEShape &shape, int64_t numRows,
             unsigned numThreads = 0) noexcept;

/// moert::cpu::experts on a precomputed plan with numRows rows: each GEMM
/// tile gathers its token rows itself, so no permuted copy of x is made.
bool fusedExperts(const float *x, const int32_t *rowToken,
                  const int32_t *offsets, const int32_t *slotRow,
                  const float *gates, const float *gateProj,
                  const float *upProj, const float *downProj, float *out,
                  const MoEShape &shape, int64_t numRows, Activation activation,
                  unsigned numThreads = 0) noexcept;
/// The same with bf16 expert weights (raw bits), widened as they are read:
/// the result is bitwise the f32 one on the widened weights, from half the
/// weight bytes.
bool fusedExperts(const float *x, const int32_t *rowToken,
                  const int32_t *offsets, const int32_t *slotRow,
                  const float *gates, const uint16_t *gateProj,
                  const uint16_t *upProj, const uint16_t *downProj, float *out,
                  const MoEShape &shape, int64_t numRows, Activation activation,
                  unsigned numThreads = 0) noexcept;

} // namespace moert::cpu

// The C interface of the kernels above, under the conventions of CpuKernels.h.
// R is rowToken's size; `activation` is 0 (SiLU) or 1 (GELU).
extern "C" {
void _mlir_ciface_moert_plan(StridedMemRefType<int32_t, 2> *ids,
                             StridedMemRefType<int32_t, 1> *offsets,
                             StridedMemRefType<int32_t, 1> *rowToken,
                             StridedMemRefType<int32_t, 2> *slotRow,
                             int64_t tile);
void _mlir_ciface_moert_dispatch(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<int32_t, 1> *rowToken,
                                 StridedMemRefType<int32_t, 1> *offsets,
                                 StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_grouped_matmul(StridedMemRefType<float, 2> *a,
                                       StridedMemRefType<int32_t, 1> *offsets,
                                       StridedMemRefType<float, 3> *w,
                                       StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_glu(StridedMemRefType<float, 2> *g,
                            StridedMemRefType<float, 2> *u,
                            StridedMemRefType<float, 2> *out,
                            int32_t activation);
void _mlir_ciface_moert_combine(StridedMemRefType<float, 2> *y,
                                StridedMemRefType<int32_t, 2> *slotRow,
                                StridedMemRefType<float, 2> *gates,
                                StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_fused_experts(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *rowToken,
    StridedMemRefType<int32_t, 1> *offsets,
    StridedMemRefType<int32_t, 2> *slotRow, StridedMemRefType<float, 2> *gates,
    StridedMemRefType<float, 3> *gate, StridedMemRefType<float, 3> *up,
    StridedMemRefType<float, 3> *down, StridedMemRefType<float, 2> *out,
    int32_t activation);
/// moert_fused_experts with bf16 gate, up and down (memref<...xbf16>).
void _mlir_ciface_moert_fused_experts_bf16(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *rowToken,
    StridedMemRefType<int32_t, 1> *offsets,
    StridedMemRefType<int32_t, 2> *slotRow, StridedMemRefType<float, 2> *gates,
    StridedMemRefType<uint16_t, 3> *gate, StridedMemRefType<uint16_t, 3> *up,
    StridedMemRefType<uint16_t, 3> *down, StridedMemRefType<float, 2> *out,
    int32_t activation);
}

#endif // MOERT_CPUPLANKERNELS_H
