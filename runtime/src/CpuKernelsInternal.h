//===- CpuKernelsInternal.h - Shared CPU kernel helpers ---------*- C++ -*-===//
//
// What CpuKernels.cpp and CpuPlanKernels.cpp share: work splitting across
// threads, allocation that cannot throw, the output tile shape, and the
// helpers of the C interface.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CPUKERNELSINTERNAL_H
#define MOERT_CPUKERNELSINTERNAL_H

#include "moert/CpuKernels.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <vector>

namespace moert::cpu::detail {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Output tile of one parallel work item. Rows: enough to amortise a pass over
/// the weight tile; columns: small enough that decode (one row) still yields
/// many items for the threads.
constexpr int64_t kTileRows = 192;
constexpr int64_t kTileCols = 64;
/// Rows per work item of the row-wise kernels (combine, dispatch, glu).
constexpr int64_t kRowBlock = 32;

template <typename T> std::unique_ptr<T[]> allocate(int64_t n) {
  return std::unique_ptr<T[]>(new (std::nothrow) T[std::max<int64_t>(n, 1)]);
}

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// The number of threads parallelFor uses for `n` items.
inline int64_t workerCount(int64_t n, unsigned numThreads) {
  return std::min<int64_t>(numThreads ? numThreads : defaultNumThreads(), n);
}

/// Runs body(worker, i) for every i in [0, n) on up to `numWorkers` threads
/// including the caller, where `worker` < numWorkers names the thread running
/// the item, for per-thread scratch. Items are claimed dynamically; callers
/// make every item write its own outputs, so the claim order never shows in
/// the results. If a thread cannot be started the others, and at least the
/// caller, do its share.
template <typename Fn>
void parallelForWorkers(int64_t n, int64_t numWorkers, Fn body) {
  if (numWorkers <= 1) {
    for (int64_t i = 0; i < n; ++i)
      body(0, i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t worker) {
    for (int64_t i = next++; i < n; i = next++)
      body(worker, i);
  };
  std::vector<std::thread> helpers;
  try {
    helpers.reserve(numWorkers - 1);
    for (int64_t w = 1; w < numWorkers; ++w)
      helpers.emplace_back(work, w);
  } catch (...) {
    // Fewer helpers: the work is shared among those that started.
  }
  work(0);
  for (std::thread &helper : helpers)
    helper.join();
}

/// Runs body(i) for every i in [0, n) on up to `numThreads` threads (0: the
/// default count), as parallelForWorkers.
template <typename Fn>
void parallelFor(int64_t n, unsigned numThreads, Fn body) {
  parallelForWorkers(n, workerCount(n, numThreads),
                     [&](int64_t, int64_t i) { body(i); });
}

//===----------------------------------------------------------------------===//
// C interface helpers
//===----------------------------------------------------------------------===//

template <typename T, int N> T *dataOf(StridedMemRefType<T, N> *m) {
  assert(m->strides[N - 1] == 1 && "memref rows must be contiguous");
  return m->data + m->offset;
}

template <typename T, int N> void fill(StridedMemRefType<T, N> *m, T value) {
  int64_t n = 1;
  for (int i = 0; i < N; ++i)
    n *= m->sizes[i];
  std::fill(dataOf(m), dataOf(m) + n, value);
}

} // namespace moert::cpu::detail

#endif // MOERT_CPUKERNELSINTERNAL_H
