//===- CpuLoopKernels.h - token bookkeeping for looped models ---*- C++ -*-===//
//
// The C ABI that convert-moe-to-cpu emits calls to for moe.loop: gather the
// still-active tokens into a compact buffer, scatter results back, record the
// routing trace, and drop exited tokens. Memref arguments follow MLIR's C
// interface (llvm.emit_c_interface).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPULOOPKERNELS_H
#define MOERT_CPULOOPKERNELS_H

#include "mlir/ExecutionEngine/CRunnerUtils.h"
#include <cstdint>

extern "C" {
/// active = 0..T-1, exit_loop[:] = passes - 1, trace ids = -1, gates = 0.
void _mlir_ciface_moert_loop_init(StridedMemRefType<int32_t, 1> *active,
                                  StridedMemRefType<int32_t, 1> *exitLoop,
                                  StridedMemRefType<int32_t, 3> *traceIds,
                                  StridedMemRefType<float, 3> *traceGates,
                                  int64_t passes);
/// dst[i, :] = src[index[i], :] for i < dst rows.
void _mlir_ciface_moert_gather_rows(StridedMemRefType<float, 2> *src,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<float, 2> *dst);
// The rows of the per-pass buffers below (src, ids, gates, exits) are either
// compacted, row i holding active token index[i], or, with `byToken` set,
// indexed by token: row index[i] holds token index[i] (a loop that computes
// every token on every pass).

/// dst[index[i], :] = row of active token i of src, for i < index size.
void _mlir_ciface_moert_scatter_rows(StridedMemRefType<float, 2> *src,
                                     StridedMemRefType<int32_t, 1> *index,
                                     StridedMemRefType<float, 2> *dst,
                                     int32_t byToken);
/// Records the routing of the active tokens at trace step `step`.
void _mlir_ciface_moert_record_step(StridedMemRefType<int32_t, 2> *ids,
                                    StridedMemRefType<float, 2> *gates,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<int32_t, 3> *traceIds,
                                    StridedMemRefType<float, 3> *traceGates,
                                    int64_t step, int32_t byToken);
/// After pass `pass`: the first `count` tokens of `active` whose exit bit is
/// set stop (when exits are tested after this pass), get exit_loop = pass,
/// and leave `active`, which is compacted in place, keeping order. Returns
/// the new active count.
int64_t _mlir_ciface_moert_exit_update(StridedMemRefType<int8_t, 1> *exits,
                                       StridedMemRefType<int32_t, 1> *active,
                                       StridedMemRefType<int32_t, 1> *exitLoop,
                                       int64_t count, int64_t pass,
                                       int64_t minPasses, int64_t passes,
                                       int32_t byToken);
/// out = a + b, elementwise.
void _mlir_ciface_moert_add(StridedMemRefType<float, 2> *a,
                            StridedMemRefType<float, 2> *b,
                            StridedMemRefType<float, 2> *out);
}

#endif // MOERT_CPULOOPKERNELS_H
