//===- CpuLoopKernels.cpp - token bookkeeping for looped models -----------===//
//
// Buffers are contiguous row-major, as everywhere in the kernel library.
//
//===----------------------------------------------------------------------===//
#include "moert/CpuLoopKernels.h"

#include "CpuKernelsInternal.h"

#include <algorithm>
#include <cstring>

using moert::cpu::detail::dataOf;

namespace {
template <typename T> T *row(StridedMemRefType<T, 2> *m, int64_t r) {
  return dataOf(m) + r * m->sizes[1];
}
} // namespace

extern "C" {
void _mlir_ciface_moert_loop_init(StridedMemRefType<int32_t, 1> *active,
                                  StridedMemRefType<int32_t, 1> *exitLoop,
                                  StridedMemRefType<int32_t, 3> *traceIds,
                                  StridedMemRefType<float, 3> *traceGates,
                                  int64_t passes) {
  int32_t *tokens = dataOf(active);
  for (int64_t t = 0; t < active->sizes[0]; ++t)
    tokens[t] = int32_t(t);
  std::fill_n(dataOf(exitLoop), exitLoop->sizes[0], int32_t(passes - 1));
  int64_t n = traceIds->sizes[0] * traceIds->sizes[1] * traceIds->sizes[2];
  std::fill_n(dataOf(traceIds), n, -1);
  std::fill_n(dataOf(traceGates), n, 0.0f);
}

void _mlir_ciface_moert_gather_rows(StridedMemRefType<float, 2> *src,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<float, 2> *dst) {
  size_t rowBytes = sizeof(float) * dst->sizes[1];
  for (int64_t i = 0; i < dst->sizes[0]; ++i)
    std::memcpy(row(dst, i), row(src, dataOf(index)[i]), rowBytes);
}

void _mlir_ciface_moert_scatter_rows(StridedMemRefType<float, 2> *src,
                                     StridedMemRefType<int32_t, 1> *index,
                                     StridedMemRefType<float, 2> *dst,
                                     int32_t byToken) {
  size_t rowBytes = sizeof(float) * src->sizes[1];
  for (int64_t i = 0; i < index->sizes[0]; ++i) {
    int32_t token = dataOf(index)[i];
    std::memcpy(row(dst, token), row(src, byToken ? token : i), rowBytes);
  }
}

void _mlir_ciface_moert_record_step(StridedMemRefType<int32_t, 2> *ids,
                                    StridedMemRefType<float, 2> *gates,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<int32_t, 3> *traceIds,
                                    StridedMemRefType<float, 3> *traceGates,
                                    int64_t step, int32_t byToken) {
  int64_t tokens = traceIds->sizes[1], k = ids->sizes[1];
  int32_t *idsOut = dataOf(traceIds) + step * tokens * k;
  float *gatesOut = dataOf(traceGates) + step * tokens * k;
  for (int64_t i = 0; i < index->sizes[0]; ++i) {
    int64_t token = dataOf(index)[i], source = byToken ? token : i;
    std::copy_n(row(ids, source), k, idsOut + token * k);
    std::copy_n(row(gates, source), k, gatesOut + token * k);
  }
}

int64_t _mlir_ciface_moert_exit_update(StridedMemRefType<int8_t, 1> *exits,
                                       StridedMemRefType<int32_t, 1> *active,
                                       StridedMemRefType<int32_t, 1> *exitLoop,
                                       int64_t count, int64_t pass,
                                       int64_t minPasses, int64_t passes,
                                       int32_t byToken) {
  // The contract tests exits after `minPasses` completed passes, and never
  // after the last pass (every token stops there anyway).
  if (pass + 1 < minPasses || pass >= passes - 1)
    return count;
  int32_t *tokens = dataOf(active);
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    int32_t token = tokens[i];
    if (dataOf(exits)[byToken ? token : i])
      dataOf(exitLoop)[token] = int32_t(pass);
    else
      tokens[kept++] = token;
  }
  return kept;
}

void _mlir_ciface_moert_add(StridedMemRefType<float, 2> *a,
                            StridedMemRefType<float, 2> *b,
                            StridedMemRefType<float, 2> *out) {
  int64_t n = out->sizes[0] * out->sizes[1];
  std::transform(dataOf(a), dataOf(a) + n, dataOf(b), dataOf(out),
                 [](float x, float y) { return x + y; });
}
}
