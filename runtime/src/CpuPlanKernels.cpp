//===- CpuPlanKernels.cpp - Expert group steps on a routing plan ----------===//
//
// The plan is a counting sort of the (token, slot) pairs by expert. The GEMM
// steps split each expert's segment into output tiles claimed by threads and
// compute every tile with detail::gemmABtSerial, whose elements do not depend
// on the tile they fall in; combine sums a token's slots in ascending order.
// The chain and the fused kernel therefore perform the same arithmetic on
// every element, and moert::cpu::experts is the fused kernel on a plan with
// tile 1: all give the same bits, for any thread count.
//
// Each GEMM tile reads its A rows from a per-thread panel (RowPanels): the
// fused kernel gathers token rows into it, so it makes no permuted copy of x,
// and grouped matmul copies its input rows there, away from the 4 KiB row
// stride of an f = 1024 activation. The fused kernel's G and U tiles stay in
// per-thread buffers where SwiGLU combines them; only act(G) * U is stored for
// the down GEMM.
//
//===----------------------------------------------------------------------===//

#include "moert/CpuPlanKernels.h"

#include "CpuGemm.h"
#include "CpuKernelsInternal.h"

#include <algorithm>
#include <array>
#include <limits>
#include <memory>
#include <tuple>
#include <utility>

using namespace moert::cpu;
using namespace moert::cpu::detail;

namespace {

/// Plans hold rows and tokens in int32.
constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

//===----------------------------------------------------------------------===//
// Plan checks
//===----------------------------------------------------------------------===//

/// Whether offsets[0..E] rises from 0 to at most numRows.
bool validOffsets(const int32_t *offsets, int64_t numExperts, int64_t numRows) {
  for (int64_t e = 0; e < numExperts; ++e)
    if (offsets[e + 1] < offsets[e])
      return false;
  return offsets[0] == 0 && offsets[numExperts] <= numRows;
}

/// Whether index[0, n) are all -1 or in [0, bound).
bool validIndices(const int32_t *index, int64_t n, int64_t bound) {
  return std::all_of(index, index + n,
                     [&](int32_t i) { return i >= -1 && i < bound; });
}

/// Whether a plan is one the fused kernel can follow: valid offsets and row
/// tokens, and every slot's row holds that slot's token.
bool validPlan(const int32_t *rowToken, const int32_t *offsets,
               const int32_t *slotRow, const MoEShape &s, int64_t numRows) {
  if (!validOffsets(offsets, s.numExperts, numRows) ||
      !validIndices(rowToken, offsets[s.numExperts], s.numTokens))
    return false;
  for (int64_t t = 0; t < s.numTokens; ++t)
    for (int64_t j = 0; j < s.topK; ++j) {
      int32_t row = slotRow[t * s.topK + j];
      if (row != -1 &&
          (row < 0 || row >= offsets[s.numExperts] || rowToken[row] != t))
        return false;
    }
  return true;
}

//===----------------------------------------------------------------------===//
// Tiles and scratch
//===----------------------------------------------------------------------===//

/// One work item: rows [row, row + numRows) of an expert's segment (row is
/// global) by columns [col, col + numCols) of its output.
struct Tile {
  int64_t expert, row, numRows, col, numCols;
};

/// Numbers the kTileRows x kTileCols tiles of every expert's [rows, cols]
/// output, expert by expert.
class TileGrid {
public:
  /// `rowsOf(e)` gives expert e's rows as a [begin, end) pair.
  template <typename RowsFn>
  bool build(int64_t numExperts, int64_t cols, RowsFn rowsOf) {
    this->numExperts = numExperts;
    this->cols = cols;
    firstTile = allocate<int64_t>(numExperts + 1);
    rowBegin = allocate<int64_t>(numExperts);
    rowEnd = allocate<int64_t>(numExperts);
    if (!firstTile || !rowBegin || !rowEnd)
      return false;
    firstTile[0] = 0;
    for (int64_t e = 0; e < numExperts; ++e) {
      std::tie(rowBegin[e], rowEnd[e]) = rowsOf(e);
      firstTile[e + 1] =
          firstTile[e] + ceilDiv(rowEnd[e] - rowBegin[e], kTileRows) *
                             ceilDiv(cols, kTileCols);
    }
    return true;
  }

  int64_t size() const { return firstTile[numExperts]; }

  Tile operator[](int64_t i) const {
    int64_t e =
        std::upper_bound(firstTile.get(), firstTile.get() + numExperts, i) -
        firstTile.get() - 1;
    int64_t local = i - firstTile[e];
    int64_t colTiles = ceilDiv(cols, kTileCols);
    int64_t row = rowBegin[e] + (local / colTiles) * kTileRows;
    int64_t col = (local % colTiles) * kTileCols;
    return {e, row, std::min(kTileRows, rowEnd[e] - row), col,
            std::min(kTileCols, cols - col)};
  }

private:
  int64_t numExperts = 0;
  int64_t cols = 0;
  std::unique_ptr<int64_t[]> firstTile, rowBegin, rowEnd;
};

/// Row stride of a scratch matrix: rows a power of two apart, such as 4 KiB,
/// map to the same L1 sets and evict each other in the GEMM micro-kernel.
int64_t paddedStride(int64_t cols) { return (cols + 15) / 16 * 16 + 16; }

/// Float scratch kept from call to call by each calling thread. The fused
/// kernel needs about T*k*(d+f) floats (6 MiB for T=512 on cpu-small); fresh
/// memory of that size comes from mmap and costs page faults worth several
/// percent of the layer, on every call.
class Workspace {
public:
  /// `n` floats of unspecified contents, or nullptr if they cannot be had.
  float *get(int64_t n) {
    if (!data || n > size) {
      data = allocate<float>(n);
      size = data ? n : 0;
    }
    return data.get();
  }

private:
  std::unique_ptr<float[]> data;
  int64_t size = 0;
};

thread_local Workspace expertWorkspace;

/// Each worker's copy of the A rows of the row tile it is computing, at a
/// padded stride. A worker's consecutive items are mostly column tiles of the
/// same row tile, so a row is copied about once per worker.
class RowPanels {
public:
  /// The floats `numWorkers` panels of up to `rows` rows of `cols` need.
  static int64_t size(int64_t numWorkers, int64_t rows, int64_t cols) {
    return numWorkers * std::min(kTileRows, rows) * paddedStride(cols);
  }

  /// Lays the panels out at `data`, of size(numWorkers, rows, cols) floats.
  bool init(float *data, int64_t numWorkers, int64_t rows, int64_t cols) {
    this->data = data;
    stride = paddedStride(cols);
    panelSize = std::min(kTileRows, rows) * stride;
    firstRow = allocate<int64_t>(numWorkers);
    if (!firstRow)
      return false;
    std::fill(firstRow.get(), firstRow.get() + numWorkers, -1);
    return true;
  }

  /// Worker `worker`'s panel holding rows [t.row, t.row + t.numRows), which
  /// copyRow(r, dst) copies in unless the panel holds them already.
  template <typename CopyRowFn>
  const float *rowsOf(int64_t worker, const Tile &t, CopyRowFn copyRow) {
    float *panel = data + worker * panelSize;
    if (firstRow[worker] != t.row) {
      for (int64_t r = 0; r < t.numRows; ++r)
        copyRow(t.row + r, panel + r * stride);
      firstRow[worker] = t.row;
    }
    return panel;
  }

  int64_t stride = 0;

private:
  float *data = nullptr;
  int64_t panelSize = 0;
  /// The first row of the tile in each worker's panel, -1 before any.
  std::unique_ptr<int64_t[]> firstRow;
};

/// The fused kernel's scratch in expertWorkspace: two matrices in packed-row
/// order and, per worker, a G and a U tile and a panel of token rows.
struct FusedScratch {
  int64_t hiddenStride, tileStride, tileSize;
  float *hidden; ///< [rows, f], act(G) * U
  float *output; ///< [rows, d], Y
  float *tiles;  ///< per worker: G, U tiles of up to [kTileRows, kTileCols]
  RowPanels panels;

  bool allocate(int64_t rows, int64_t numWorkers, const MoEShape &s) {
    hiddenStride = paddedStride(s.ffn);
    tileStride = paddedStride(kTileCols);
    tileSize = std::min(kTileRows, rows) * tileStride;
    int64_t hiddenSize = rows * hiddenStride, outputSize = rows * s.hidden,
            tilesSize = numWorkers * 2 * tileSize;
    hidden = expertWorkspace.get(hiddenSize + outputSize + tilesSize +
                                 RowPanels::size(numWorkers, rows, s.hidden));
    if (!hidden)
      return false;
    output = hidden + hiddenSize;
    tiles = output + outputSize;
    return panels.init(tiles + tilesSize, numWorkers, rows, s.hidden);
  }

  float *gateTile(int64_t worker) const {
    return tiles + 2 * worker * tileSize;
  }
  float *upTile(int64_t worker) const { return gateTile(worker) + tileSize; }
};

//===----------------------------------------------------------------------===//
// Row-wise steps
//===----------------------------------------------------------------------===//

/// dst[0, hidden) = row `token` of x, or zeros for token -1.
void copyTokenRow(const float *x, int64_t token, int64_t hidden, float *dst) {
  if (token < 0)
    std::fill(dst, dst + hidden, 0.0f);
  else
    std::copy(x + token * hidden, x + (token + 1) * hidden, dst);
}

/// Fills combine's output rows [token0, token0 + kRowBlock).
void combineTokens(const float *y, const int32_t *slotRow, const float *gates,
                   float *out, const MoEShape &s, int64_t token0) {
  int64_t end = std::min(token0 + kRowBlock, s.numTokens);
  for (int64_t t = token0; t < end; ++t) {
    float *outRow = out + t * s.hidden;
    std::fill(outRow, outRow + s.hidden, 0.0f);
    for (int64_t j = 0; j < s.topK; ++j) {
      int64_t row = slotRow[t * s.topK + j];
      if (row < 0)
        continue;
      float gate = gates[t * s.topK + j];
      const float *yRow = y + row * s.hidden;
      for (int64_t i = 0; i < s.hidden; ++i)
        outRow[i] += gate * yRow[i];
    }
  }
}

/// Fills out[0, n) with `value`, NaN or -1, which cannot pass for a result.
template <typename T> bool fail(T *out, int64_t n, T value) {
  std::fill(out, out + n, value);
  return false;
}

/// Whether m's sizes are `sizes`.
template <typename T, int N>
bool hasSizes(const StridedMemRefType<T, N> *m, std::array<int64_t, N> sizes) {
  return std::equal(sizes.begin(), sizes.end(), m->sizes);
}

bool isActivation(int32_t activation) {
  return activation == 0 || activation == 1;
}

} // namespace

//===----------------------------------------------------------------------===//
// C++ interface
//===----------------------------------------------------------------------===//

int64_t moert::cpu::planRows(const MoEShape &s, int64_t tile) noexcept {
  return s.numTokens * s.topK + s.numExperts * (tile - 1);
}

bool moert::cpu::plan(const int32_t *ids, int32_t *offsets, int32_t *rowToken,
                      int32_t *slotRow, const MoEShape &s, int64_t tile,
                      int64_t numRows) noexcept {
  const int64_t numExperts = s.numExperts, numSlots = s.numTokens * s.topK;
  if (tile < 1 || tile > kMaxIndex || numExperts > kMaxIndex ||
      planRows(s, tile) > std::min(numRows, kMaxIndex)) {
    std::fill(offsets, offsets + numExperts + 1, -1);
    std::fill(rowToken, rowToken + numRows, -1);
    return fail(slotRow, numSlots, int32_t(-1));
  }
  auto isExpert = [&](int32_t id) { return id >= 0 && id < numExperts; };

  // offsets[e + 1] = expert e's slot count, then its first row: the cursor
  // of the placement below.
  std::fill(offsets, offsets + numExperts + 1, 0);
  for (int64_t i = 0; i < numSlots; ++i)
    if (isExpert(ids[i]))
      ++offsets[ids[i] + 1];
  int64_t begin = 0;
  for (int64_t e = 0; e < numExperts; ++e) {
    int64_t count = offsets[e + 1];
    offsets[e + 1] = static_cast<int32_t>(begin);
    begin += ceilDiv(count, tile) * tile;
  }

  std::fill(rowToken, rowToken + numRows, -1);
  for (int64_t i = 0; i < numSlots; ++i) {
    slotRow[i] = isExpert(ids[i]) ? offsets[ids[i] + 1]++ : -1;
    if (slotRow[i] >= 0)
      rowToken[slotRow[i]] = static_cast<int32_t>(i / s.topK);
  }
  // Each cursor stopped past its expert's last row; as the segment began
  // tile-aligned, rounding up gives the next segment's beginning.
  for (int64_t e = 0; e < numExperts; ++e)
    offsets[e + 1] = static_cast<int32_t>(ceilDiv(offsets[e + 1], tile) * tile);
  return true;
}

bool moert::cpu::dispatch(const float *x, const int32_t *rowToken,
                          const int32_t *offsets, float *out, const MoEShape &s,
                          int64_t numRows, unsigned numThreads) noexcept {
  if (!validOffsets(offsets, s.numExperts, numRows) ||
      !validIndices(rowToken, offsets[s.numExperts], s.numTokens))
    return fail(out, numRows * s.hidden, kNaN);
  const int64_t planned = offsets[s.numExperts];
  parallelFor(ceilDiv(numRows, kRowBlock), numThreads, [&](int64_t i) {
    int64_t end = std::min((i + 1) * kRowBlock, numRows);
    for (int64_t r = i * kRowBlock; r < end; ++r)
      copyTokenRow(x, r < planned ? rowToken[r] : -1, s.hidden,
                   out + r * s.hidden);
  });
  return true;
}

bool moert::cpu::groupedMatmul(const float *a, const int32_t *offsets,
                               const float *w, float *out, int64_t numExperts,
                               int64_t numRows, int64_t n, int64_t k,
                               unsigned numThreads) noexcept {
  TileGrid tiles;
  if (!validOffsets(offsets, numExperts, numRows) ||
      !tiles.build(numExperts, n, [&](int64_t e) {
        return std::pair<int64_t, int64_t>(offsets[e], offsets[e + 1]);
      }))
    return fail(out, numRows * n, kNaN);
  const int64_t numWorkers = workerCount(tiles.size(), numThreads);
  RowPanels panels;
  float *memory = expertWorkspace.get(RowPanels::size(numWorkers, numRows, k));
  if (!memory || !panels.init(memory, numWorkers, numRows, k))
    return fail(out, numRows * n, kNaN);
  std::fill(out + offsets[numExperts] * n, out + numRows * n, 0.0f);
  parallelForWorkers(tiles.size(), numWorkers, [&](int64_t worker, int64_t i) {
    Tile t = tiles[i];
    const float *panel = panels.rowsOf(worker, t, [&](int64_t r, float *dst) {
      std::copy(a + r * k, a + (r + 1) * k, dst);
    });
    detail::gemmABtSerial(panel, panels.stride, w + (t.expert * n + t.col) * k,
                          k, out + t.row * n + t.col, n, t.numRows, t.numCols,
                          k);
  });
  return true;
}

void moert::cpu::glu(const float *g, const float *u, float *out, int64_t rows,
                     int64_t cols, Activation activation,
                     unsigned numThreads) noexcept {
  parallelFor(ceilDiv(rows, kRowBlock), numThreads, [&](int64_t i) {
    int64_t begin = i * kRowBlock * cols;
    int64_t blockRows = std::min(kRowBlock, rows - i * kRowBlock);
    if (out != g)
      std::copy(g + begin, g + begin + blockRows * cols, out + begin);
    detail::swiglu(out + begin, u + begin, blockRows, cols, cols, activation);
  });
}

bool moert::cpu::combine(const float *y, const int32_t *slotRow,
                         const float *gates, float *out, const MoEShape &s,
                         int64_t numRows, unsigned numThreads) noexcept {
  if (!validIndices(slotRow, s.numTokens * s.topK, numRows))
    return fail(out, s.numTokens * s.hidden, kNaN);
  parallelFor(ceilDiv(s.numTokens, kRowBlock), numThreads, [&](int64_t i) {
    combineTokens(y, slotRow, gates, out, s, i * kRowBlock);
  });
  return true;
}

namespace {
template <typename TW>
bool fusedExpertsOf(const float *x, const int32_t *rowToken,
                    const int32_t *offsets, const int32_t *slotRow,
                    const float *gates, const TW *gateProj, const TW *upProj,
                    const TW *downProj, float *out, const MoEShape &s,
                    int64_t numRows, Activation activation,
                    unsigned numThreads) noexcept {
  const int64_t d = s.hidden, f = s.ffn;
  // A segment's trailing padding holds no token: no tile computes it.
  auto liveRows = [&](int64_t e) {
    int64_t end = offsets[e + 1];
    while (end > offsets[e] && rowToken[end - 1] < 0)
      --end;
    return std::pair<int64_t, int64_t>(offsets[e], end);
  };
  TileGrid ffnTiles, hiddenTiles;
  if (!validPlan(rowToken, offsets, slotRow, s, numRows) ||
      !ffnTiles.build(s.numExperts, f, liveRows) ||
      !hiddenTiles.build(s.numExperts, d, liveRows))
    return fail(out, s.numTokens * d, kNaN);
  const int64_t numWorkers = workerCount(ffnTiles.size(), numThreads);
  FusedScratch buf;
  if (!buf.allocate(offsets[s.numExperts], numWorkers, s))
    return fail(out, s.numTokens * d, kNaN);

  const int64_t ldHid = buf.hiddenStride, ldTile = buf.tileStride;
  parallelForWorkers(ffnTiles.size(), numWorkers, [&](int64_t w, int64_t i) {
    Tile t = ffnTiles[i];
    const float *panel = buf.panels.rowsOf(w, t, [&](int64_t r, float *dst) {
      copyTokenRow(x, rowToken[r], d, dst);
    });
    float *g = buf.gateTile(w), *u = buf.upTile(w);
    int64_t weightOffset = (t.expert * f + t.col) * d;
    detail::gemmABtSerial(panel, buf.panels.stride, gateProj + weightOffset, d,
                          g, ldTile, t.numRows, t.numCols, d);
    detail::gemmABtSerial(panel, buf.panels.stride, upProj + weightOffset, d, u,
                          ldTile, t.numRows, t.numCols, d);
    detail::swiglu(g, u, t.numRows, t.numCols, ldTile, activation);
    for (int64_t r = 0; r < t.numRows; ++r)
      std::copy(g + r * ldTile, g + r * ldTile + t.numCols,
                buf.hidden + (t.row + r) * ldHid + t.col);
  });

  parallelFor(hiddenTiles.size(), numThreads, [&](int64_t i) {
    Tile t = hiddenTiles[i];
    detail::gemmABtSerial(buf.hidden + t.row * ldHid, ldHid,
                          downProj + (t.expert * d + t.col) * f, f,
                          buf.output + t.row * d + t.col, d, t.numRows,
                          t.numCols, f);
  });

  parallelFor(ceilDiv(s.numTokens, kRowBlock), numThreads, [&](int64_t i) {
    combineTokens(buf.output, slotRow, gates, out, s, i * kRowBlock);
  });
  return true;
}
} // namespace

bool moert::cpu::fusedExperts(const float *x, const int32_t *rowToken,
                              const int32_t *offsets, const int32_t *slotRow,
                              const float *gates, const float *gateProj,
                              const float *upProj, const float *downProj,
                              float *out, const MoEShape &s, int64_t numRows,
                              Activation activation,
                              unsigned numThreads) noexcept {
  return fusedExpertsOf(x, rowToken, offsets, slotRow, gates, gateProj, upProj,
                        downProj, out, s, numRows, activation, numThreads);
}

bool moert::cpu::fusedExperts(const float *x, const int32_t *rowToken,
                              const int32_t *offsets, const int32_t *slotRow,
                              const float *gates, const uint16_t *gateProj,
                              const uint16_t *upProj, const uint16_t *downProj,
                              float *out, const MoEShape &s, int64_t numRows,
                              Activation activation,
                              unsigned numThreads) noexcept {
  return fusedExpertsOf(x, rowToken, offsets, slotRow, gates, gateProj, upProj,
                        downProj, out, s, numRows, activation, numThreads);
}

//===----------------------------------------------------------------------===//
// C interface
//===----------------------------------------------------------------------===//

void _mlir_ciface_moert_plan(StridedMemRefType<int32_t, 2> *ids,
                             StridedMemRefType<int32_t, 1> *offsets,
                             StridedMemRefType<int32_t, 1> *rowToken,
                             StridedMemRefType<int32_t, 2> *slotRow,
                             int64_t tile) {
  MoEShape s{ids->sizes[0], 0, 0, offsets->sizes[0] - 1, ids->sizes[1]};
  if (s.numExperts < 0 || !hasSizes(slotRow, {s.numTokens, s.topK})) {
    fill(offsets, -1);
    fill(rowToken, -1);
    return fill(slotRow, -1);
  }
  plan(dataOf(ids), dataOf(offsets), dataOf(rowToken), dataOf(slotRow), s, tile,
       rowToken->sizes[0]);
}

void _mlir_ciface_moert_dispatch(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<int32_t, 1> *rowToken,
                                 StridedMemRefType<int32_t, 1> *offsets,
                                 StridedMemRefType<float, 2> *out) {
  MoEShape s{x->sizes[0], x->sizes[1], 0, offsets->sizes[0] - 1, 0};
  int64_t numRows = rowToken->sizes[0];
  if (s.numExperts < 0 || !hasSizes(out, {numRows, s.hidden}))
    return fill(out, kNaN);
  dispatch(dataOf(x), dataOf(rowToken), dataOf(offsets), dataOf(out), s,
           numRows);
}

void _mlir_ciface_moert_grouped_matmul(StridedMemRefType<float, 2> *a,
                                       StridedMemRefType<int32_t, 1> *offsets,
                                       StridedMemRefType<float, 3> *w,
                                       StridedMemRefType<float, 2> *out) {
  int64_t numRows = a->sizes[0], k = a->sizes[1], n = w->sizes[1];
  int64_t numExperts = offsets->sizes[0] - 1;
  if (numExperts < 0 || !hasSizes(w, {numExperts, n, k}) ||
      !hasSizes(out, {numRows, n}))
    return fill(out, kNaN);
  groupedMatmul(dataOf(a), dataOf(offsets), dataOf(w), dataOf(out), numExperts,
                numRows, n, k);
}

void _mlir_ciface_moert_glu(StridedMemRefType<float, 2> *g,
                            StridedMemRefType<float, 2> *u,
                            StridedMemRefType<float, 2> *out,
                            int32_t activation) {
  int64_t rows = g->sizes[0], cols = g->sizes[1];
  if (!hasSizes(u, {rows, cols}) || !hasSizes(out, {rows, cols}) ||
      !isActivation(activation))
    return fill(out, kNaN);
  glu(dataOf(g), dataOf(u), dataOf(out), rows, cols,
      static_cast<Activation>(activation));
}

void _mlir_ciface_moert_combine(StridedMemRefType<float, 2> *y,
                                StridedMemRefType<int32_t, 2> *slotRow,
                                StridedMemRefType<float, 2> *gates,
                                StridedMemRefType<float, 2> *out) {
  MoEShape s{slotRow->sizes[0], y->sizes[1], 0, 0, slotRow->sizes[1]};
  if (!hasSizes(gates, {s.numTokens, s.topK}) ||
      !hasSizes(out, {s.numTokens, s.hidden}))
    return fill(out, kNaN);
  combine(dataOf(y), dataOf(slotRow), dataOf(gates), dataOf(out), s,
          y->sizes[0]);
}

namespace {
template <typename TW>
void fusedExpertsCall(StridedMemRefType<float, 2> *x,
                      StridedMemRefType<int32_t, 1> *rowToken,
                      StridedMemRefType<int32_t, 1> *offsets,
                      StridedMemRefType<int32_t, 2> *slotRow,
                      StridedMemRefType<float, 2> *gates,
                      StridedMemRefType<TW, 3> *gate,
                      StridedMemRefType<TW, 3> *up,
                      StridedMemRefType<TW, 3> *down,
                      StridedMemRefType<float, 2> *out, int32_t activation) {
  MoEShape s{x->sizes[0], x->sizes[1], gate->sizes[1], offsets->sizes[0] - 1,
             slotRow->sizes[1]};
  bool consistent =
      s.numExperts >= 0 && hasSizes(gate, {s.numExperts, s.ffn, s.hidden}) &&
      hasSizes(up, {s.numExperts, s.ffn, s.hidden}) &&
      hasSizes(down, {s.numExperts, s.hidden, s.ffn}) &&
      hasSizes(slotRow, {s.numTokens, s.topK}) &&
      hasSizes(gates, {s.numTokens, s.topK}) &&
      hasSizes(out, {s.numTokens, s.hidden}) && isActivation(activation);
  if (!consistent)
    return fill(out, kNaN);
  fusedExperts(dataOf(x), dataOf(rowToken), dataOf(offsets), dataOf(slotRow),
               dataOf(gates), dataOf(gate), dataOf(up), dataOf(down),
               dataOf(out), s, rowToken->sizes[0],
               static_cast<Activation>(activation));
}
} // namespace

void _mlir_ciface_moert_fused_experts(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *rowToken,
    StridedMemRefType<int32_t, 1> *offsets,
    StridedMemRefType<int32_t, 2> *slotRow, StridedMemRefType<float, 2> *gates,
    StridedMemRefType<float, 3> *gate, StridedMemRefType<float, 3> *up,
    StridedMemRefType<float, 3> *down, StridedMemRefType<float, 2> *out,
    int32_t activation) {
  fusedExpertsCall(x, rowToken, offsets, slotRow, gates, gate, up, down, out,
                   activation);
}

void _mlir_ciface_moert_fused_experts_bf16(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *rowToken,
    StridedMemRefType<int32_t, 1> *offsets,
    StridedMemRefType<int32_t, 2> *slotRow, StridedMemRefType<float, 2> *gates,
    StridedMemRefType<uint16_t, 3> *gate, StridedMemRefType<uint16_t, 3> *up,
    StridedMemRefType<uint16_t, 3> *down, StridedMemRefType<float, 2> *out,
    int32_t activation) {
  fusedExpertsCall(x, rowToken, offsets, slotRow, gates, gate, up, down, out,
                   activation);
}
