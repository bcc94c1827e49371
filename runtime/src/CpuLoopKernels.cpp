//===- CpuLoopKernels.cpp - token bookkeeping for looped models -----------===//
#include "moert/CpuLoopKernels.h"

#include <cstring>

namespace {
template <typename T, int N>
T *rowPtr(StridedMemRefType<T, N> *m, int64_t row) {
  return m->data + m->offset + row * m->strides[0];
}
} // namespace

extern "C" {
void _mlir_ciface_moert_loop_init(StridedMemRefType<int32_t, 1> *active,
                                  StridedMemRefType<int32_t, 1> *exitLoop,
                                  StridedMemRefType<int32_t, 3> *traceIds,
                                  StridedMemRefType<float, 3> *traceGates,
                                  int64_t passes) {
  for (int64_t t = 0; t < active->sizes[0]; ++t) {
    active->data[active->offset + t * active->strides[0]] = int32_t(t);
    exitLoop->data[exitLoop->offset + t * exitLoop->strides[0]] =
        int32_t(passes - 1);
  }
  // The trace buffers come from the caller as contiguous row-major arrays.
  int64_t n = traceIds->sizes[0] * traceIds->sizes[1] * traceIds->sizes[2];
  int32_t *ids = traceIds->data + traceIds->offset;
  float *gates = traceGates->data + traceGates->offset;
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = -1;
    gates[i] = 0.0f;
  }
}

void _mlir_ciface_moert_gather_rows(StridedMemRefType<float, 2> *src,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<float, 2> *dst) {
  size_t rowBytes = sizeof(float) * dst->sizes[1];
  for (int64_t i = 0; i < dst->sizes[0]; ++i)
    std::memcpy(rowPtr(dst, i),
                rowPtr(src, index->data[index->offset + i * index->strides[0]]),
                rowBytes);
}

void _mlir_ciface_moert_scatter_rows(StridedMemRefType<float, 2> *src,
                                     StridedMemRefType<int32_t, 1> *index,
                                     StridedMemRefType<float, 2> *dst,
                                     int32_t byToken) {
  size_t rowBytes = sizeof(float) * src->sizes[1];
  for (int64_t i = 0; i < index->sizes[0]; ++i) {
    int32_t token = index->data[index->offset + i * index->strides[0]];
    std::memcpy(rowPtr(dst, token), rowPtr(src, byToken ? token : i), rowBytes);
  }
}

void _mlir_ciface_moert_record_step(StridedMemRefType<int32_t, 2> *ids,
                                    StridedMemRefType<float, 2> *gates,
                                    StridedMemRefType<int32_t, 1> *index,
                                    StridedMemRefType<int32_t, 3> *traceIds,
                                    StridedMemRefType<float, 3> *traceGates,
                                    int64_t step, int32_t byToken) {
  int64_t k = ids->sizes[1];
  for (int64_t active = 0; active < index->sizes[0]; ++active) {
    int64_t token = index->data[index->offset + active * index->strides[0]];
    int64_t i = byToken ? token : active;
    int32_t *idsOut = traceIds->data + traceIds->offset +
                      step * traceIds->strides[0] +
                      token * traceIds->strides[1];
    float *gatesOut = traceGates->data + traceGates->offset +
                      step * traceGates->strides[0] +
                      token * traceGates->strides[1];
    for (int64_t j = 0; j < k; ++j) {
      idsOut[j * traceIds->strides[2]] = rowPtr(ids, i)[j * ids->strides[1]];
      gatesOut[j * traceGates->strides[2]] =
          rowPtr(gates, i)[j * gates->strides[1]];
    }
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
  int32_t *ids = active->data + active->offset;
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    int32_t token = ids[i * active->strides[0]];
    int64_t row = byToken ? token : i;
    if (exits->data[exits->offset + row * exits->strides[0]]) {
      exitLoop->data[exitLoop->offset + token * exitLoop->strides[0]] =
          int32_t(pass);
      continue;
    }
    ids[kept++ * active->strides[0]] = token;
  }
  return kept;
}

void _mlir_ciface_moert_add(StridedMemRefType<float, 2> *a,
                            StridedMemRefType<float, 2> *b,
                            StridedMemRefType<float, 2> *out) {
  for (int64_t i = 0; i < out->sizes[0]; ++i) {
    const float *x = rowPtr(a, i), *y = rowPtr(b, i);
    float *z = rowPtr(out, i);
    for (int64_t j = 0; j < out->sizes[1]; ++j)
      z[j] = x[j] + y[j];
  }
}
}
