//===- MoEKernels.cpp - GPU kernels of the MoE layer and the pass loop ----===//
//
// One emitter per kernel call of the host program (KernelProgram.h): each
// generates the kernels that compute the call, specialised for its operand
// types and constant parameters, and launches them. moert/CpuKernels.h,
// CpuPlanKernels.h and CpuLoopKernels.h define what each call computes.
//
//===----------------------------------------------------------------------===//
#include "GPUProgram.h"
#include "WarpMma.h"
#include "WarpgroupMma.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {

/// dst[i...] = src[i...], any rank.
LogicalResult emitCopy(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                       Operation *call) {
  Value src = a[0], dst = a[1];
  int64_t rank = cast<MemRefType>(dst.getType()).getRank();
  auto fn = p.kernel("copy", "", {src, dst},
                     [&](KernelBody &k, Value gid, ValueRange args) {
                       SmallVector<Value> idx(rank);
                       Value rest = gid;
                       for (int64_t i = rank - 1; i >= 0; --i) {
                         Value size = k.dim(args[1], i);
                         idx[i] = k.rem(rest, size);
                         rest = k.div(rest, size);
                       }
                       k.store(k.load(args[0], idx), args[1], idx);
                     });
  p.launch(fn, p.hostNumElements(dst), {src, dst});
  return success();
}

/// out = x / sqrt(mean(x^2) + eps) * w per token row: a warp per row adds
/// up its squares (lane l takes elements l, l + 32, ...) and scales the
/// same elements.
LogicalResult emitRmsNorm(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                          Operation *call) {
  double eps;
  if (failed(p.requireFloat(name, a[3], eps)))
    return failure();
  std::string key;
  llvm::raw_string_ostream(key) << eps;
  Value x = a[0], w = a[1], out = a[2];
  int64_t d = shapeOf(x)[1];
  // An empty weight is a norm without gain (LoopLM).
  bool gain = shapeOf(w)[0] != 0;
  auto fn =
      p.kernel("rms_norm", key, {x, w, out},
               [&](KernelBody &k, Value gid, ValueRange args) {
                 Value r = k.div(gid, k.index(kLanes)),
                       lane = k.rem(gid, k.index(kLanes));
                 Value ss = k.warpSum(lane, [&](Value l) {
                   return k.reduceAll(
                       l, k.index(d), {k.f32(0.0)},
                       [&](Value i, ValueRange acc) -> SmallVector<Value> {
                         Value v = k.load(args[0], {r, i});
                         return {k.fadd(acc[0], k.fmul(v, v))};
                       },
                       kLanes);
                 })[0];
                 Value rms = math::SqrtOp::create(
                     k.b, k.fadd(k.fdiv(ss, k.f32(double(d))), k.f32(eps)));
                 k.forEach(
                     lane, k.index(d),
                     [&](Value i) {
                       Value v = k.fdiv(k.load(args[0], {r, i}), rms);
                       if (gain)
                         v = k.fmul(v, k.load(args[1], {i}));
                       k.store(v, args[2], {r, i});
                     },
                     kLanes);
               });
  p.launch(fn, p.hostMul(p.hostDim(x, 0), p.hostIndex(kLanes)), {x, w, out});
  return success();
}

/// One thread per token: logits, softmax or sigmoid, top-k (ties: the
/// lower expert), optional renormalisation and scaling.
LogicalResult emitRoute(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                        Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  int64_t scoring, normalize;
  double scaling;
  if (failed(p.requireInt(name, a[4], scoring)) ||
      failed(p.requireInt(name, a[5], normalize)) ||
      failed(p.requireFloat(name, a[6], scaling)))
    return failure();
  keyOs << scoring << "," << normalize << "," << scaling;
  int64_t d = shapeOf(a[0])[1], e = shapeOf(a[1])[0], topK = shapeOf(a[2])[1];
  // The router logits as a GEMM (lane-split for decode), then a thread per
  // token for scores and top-k.
  Value logits = p.scratch(
      MemRefType::get({ShapedType::kDynamic, e}, p.host().getF32Type()),
      {p.hostDim(a[0], 0)});
  // f32 activations, not tensor cores' bf16: the top-k decisions stay as
  // exact as the reference's.
  emitRowsDotWeights(p, "route_logits", a[0], a[1], logits, e, d,
                     /*tensorCores=*/false);
  auto fn = p.kernel(
      "route", key, {logits, a[2], a[3]},
      [&](KernelBody &k, Value t, ValueRange args) {
        ImplicitLocOpBuilder &b = k.b;
        Value scores = args[0], ids = args[1], gates = args[2];
        Value numE = k.index(e), zero = k.index(0);
        auto probs =
            memref::AllocaOp::create(b, MemRefType::get({e}, b.getF32Type()));
        auto taken =
            memref::AllocaOp::create(b, MemRefType::get({e}, b.getI32Type()));
        k.forEach(zero, numE, [&](Value i) {
          k.store(k.load(scores, {t, i}), probs, {i});
          k.store(k.i32(0), taken, {i});
        });
        if (scoring == 1) {
          k.forEach(zero, numE, [&](Value i) {
            k.store(k.sigmoid(k.load(probs, {i})), probs, {i});
          });
        } else {
          Value max = k.reduce(k.index(1), numE, k.load(probs, {zero}),
                               [&](Value i, Value m) -> Value {
                                 return arith::MaximumFOp::create(
                                     b, m, k.load(probs, {i}));
                               });
          Value sum = k.reduce(zero, numE, k.f32(0.0), [&](Value i, Value s) {
            Value p = math::ExpOp::create(b, k.fsub(k.load(probs, {i}), max));
            k.store(p, probs, {i});
            return k.fadd(s, p);
          });
          k.forEach(zero, numE, [&](Value i) {
            k.store(k.fdiv(k.load(probs, {i}), sum), probs, {i});
          });
        }
        Value noBest = k.index(-1);
        Value total =
            k.reduce(zero, k.index(topK), k.f32(0.0), [&](Value j, Value sum) {
              Value best =
                  k.reduce(zero, numE, noBest, [&](Value i, Value best) {
                    Value free = k.cmp(arith::CmpIPredicate::eq,
                                       k.load(taken, {i}), k.i32(0));
                    Value none = k.cmp(arith::CmpIPredicate::eq, best, noBest);
                    Value bestP = k.load(
                        probs,
                        {arith::MaxSIOp::create(b, best, zero).getResult()});
                    Value greater =
                        arith::CmpFOp::create(b, arith::CmpFPredicate::OGT,
                                              k.load(probs, {i}), bestP);
                    Value better = arith::AndIOp::create(
                        b, free, arith::OrIOp::create(b, none, greater));
                    return arith::SelectOp::create(b, better, i, best)
                        .getResult();
                  });
              Value p = k.load(probs, {best});
              k.store(k.i32(1), taken, {best});
              k.store(k.toI32(best), ids, {t, j});
              k.store(p, gates, {t, j});
              return k.fadd(sum, p);
            });
        if (!normalize && scaling == 1.0)
          return;
        k.forEach(zero, k.index(topK), [&](Value j) {
          Value g = k.load(gates, {t, j});
          if (normalize)
            g = k.fdiv(g, total);
          k.store(k.fmul(g, k.f32(scaling)), gates, {t, j});
        });
      });
  p.launch(fn, p.hostDim(a[0], 0), {logits, a[2], a[3]});
  p.release(logits);
  return success();
}

/// Histogram, scan and scatter of the slots by expert (see
/// moert/CpuPlanKernels.h for the layout); `cursor` counts, then hands
/// out each segment's rows.
LogicalResult emitPlan(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                       Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  int64_t tile;
  if (failed(p.requireInt(name, a[4], tile)))
    return failure();
  keyOs << tile;
  Value ids = a[0], offsets = a[1], rowToken = a[2], slotRow = a[3];
  int64_t e = shapeOf(offsets)[0] - 1, topK = shapeOf(ids)[1];
  Value cursor = p.scratch(MemRefType::get({e}, p.host().getI32Type()), {});
  Value rows = p.hostDim(rowToken, 0);
  auto init =
      p.kernel("plan_init", key, {rowToken, cursor},
               [&](KernelBody &k, Value i, ValueRange args) {
                 Value rowCount = k.dim(args[0], 0);
                 Value isRow = k.cmp(arith::CmpIPredicate::ult, i, rowCount);
                 k.ifThen(isRow, [&] { k.store(k.i32(-1), args[0], {i}); });
                 k.ifThen(k.cmp(arith::CmpIPredicate::uge, i, rowCount), [&] {
                   Value expert = arith::SubIOp::create(k.b, i, rowCount);
                   k.store(k.i32(0), args[1], {expert});
                 });
               });
  p.launch(init,
           arith::AddIOp::create(p.host(), p.getLoc(), rows, p.hostIndex(e)),
           {rowToken, cursor});
  // The expert of slot (t, j), and whether it is in range.
  auto slotExpert = [&](KernelBody &k, Value idsArg, Value s, Value &t,
                        Value &j, Value &expert) {
    t = k.div(s, k.index(topK));
    j = k.rem(s, k.index(topK));
    Value id = k.load(idsArg, {t, j});
    expert = k.toIndex(id);
    return arith::AndIOp::create(
        k.b, k.cmp(arith::CmpIPredicate::sge, id, k.i32(0)),
        k.cmp(arith::CmpIPredicate::slt, id, k.i32(e)));
  };
  Value slots = p.hostMul(p.hostDim(ids, 0), p.hostIndex(topK));
  auto count = p.kernel(
      "plan_count", key, {ids, slotRow, cursor},
      [&](KernelBody &k, Value s, ValueRange args) {
        Value t, j, expert;
        Value valid = slotExpert(k, args[0], s, t, j, expert);
        auto op = scf::IfOp::create(k.b, valid, /*withElseRegion=*/true);
        {
          OpBuilder::InsertionGuard guard(k.b);
          k.b.setInsertionPoint(op.thenBlock()->getTerminator());
          memref::AtomicRMWOp::create(k.b, arith::AtomicRMWKind::addi, k.i32(1),
                                      args[2], ValueRange{expert});
          k.b.setInsertionPoint(op.elseBlock()->getTerminator());
          k.store(k.i32(-1), args[1], {t, j});
        }
      });
  p.launch(count, slots, {ids, slotRow, cursor});
  auto scan = p.kernel(
      "plan_scan", key, {offsets, cursor},
      [&](KernelBody &k, Value, ValueRange args) {
        Value t32 = k.i32(tile);
        Value end = k.reduce(
            k.index(0), k.index(e), k.i32(0), [&](Value i, Value acc) -> Value {
              k.store(acc, args[0], {i});
              Value c = k.load(args[1], {i});
              k.store(acc, args[1], {i});
              Value tiles = arith::CeilDivSIOp::create(k.b, c, t32);
              return arith::AddIOp::create(
                  k.b, acc, arith::MulIOp::create(k.b, tiles, t32));
            });
        k.store(end, args[0], {k.index(e)});
      });
  p.launch(scan, p.hostIndex(1), {offsets, cursor});
  auto scatter = p.kernel("plan_scatter", key, {ids, rowToken, slotRow, cursor},
                          [&](KernelBody &k, Value s, ValueRange args) {
                            Value t, j, expert;
                            Value valid =
                                slotExpert(k, args[0], s, t, j, expert);
                            k.ifThen(valid, [&] {
                              Value row = memref::AtomicRMWOp::create(
                                  k.b, arith::AtomicRMWKind::addi, k.i32(1),
                                  args[3], ValueRange{expert});
                              k.store(k.toI32(t), args[1], {k.toIndex(row)});
                              k.store(row, args[2], {t, j});
                            });
                          });
  p.launch(scatter, slots, {ids, rowToken, slotRow, cursor});
  p.release(cursor);
  return success();
}

/// The row tile of a tensor-core form's warp or warpgroup: the expert, the
/// tile's first row and its segment's end, for the `slot`-th tile over all
/// experts' segments (each cut into tiles of `tileRows`; `tilePrefix[e]`
/// counts the tiles of the experts before e); `found` is false past the
/// last.
struct ExpertRowTile {
  Value found, expert, first, end;
};

ExpertRowTile expertRowTile(KernelBody &k, Value tilePrefix, Value offsets,
                            int64_t experts, Value slot, int64_t tileRows) {
  Value slot32 = k.toI32(slot);
  Value expert = k.lastAtMost(tilePrefix, experts, slot32);
  Value found = k.cmp(arith::CmpIPredicate::slt, slot32,
                      k.load(tilePrefix, {k.index(experts)}));
  Value tileInExpert =
      arith::SubIOp::create(k.b, slot32, k.load(tilePrefix, {expert}));
  Value first = k.toIndex(arith::AddIOp::create(
      k.b, k.load(offsets, {expert}),
      arith::MulIOp::create(k.b, tileInExpert, k.i32(tileRows))));
  Value next =
      arith::MinUIOp::create(k.b, k.add(expert, k.index(1)), k.index(experts));
  return {found, expert, first, k.toIndex(k.load(offsets, {next}))};
}

/// tilePrefix[e] = the row tiles of `tileRows` of the experts before e
/// (tilePrefix[E] all of them), for the tensor-core forms; one thread,
/// launched only if such a form gets rows (`rows`, else an empty grid).
void emitRowTiles(GPUProgram &p, Value offsets, Value tilePrefix,
                  int64_t experts, Value rows, int64_t tileRows) {
  auto fn = p.kernel(
      "experts_row_tiles",
      std::to_string(experts) + "," + std::to_string(tileRows),
      {offsets, tilePrefix}, [&](KernelBody &k, Value, ValueRange args) {
        Value total = k.reduce(
            k.index(0), k.index(experts), k.i32(0),
            [&](Value i, Value acc) -> Value {
              k.store(acc, args[1], {i});
              Value count = arith::SubIOp::create(
                  k.b, k.load(args[0], {k.add(i, k.index(1))}),
                  k.load(args[0], {i}));
              return arith::AddIOp::create(
                  k.b, acc,
                  arith::CeilDivSIOp::create(k.b, count, k.i32(tileRows)));
            });
        k.store(total, args[1], {k.index(experts)});
      });
  OpBuilder &b = p.host();
  Value any = arith::CmpIOp::create(b, p.getLoc(), arith::CmpIPredicate::ugt,
                                    rows, p.hostIndex(0));
  p.launch(fn,
           arith::SelectOp::create(b, p.getLoc(), any, p.hostIndex(1),
                                   p.hostIndex(0)),
           {offsets, tilePrefix});
}

/// The threads of a tensor-core form over `rows` plan rows (0 when the form
/// gets no rows): `tileThreads` (a warp or a warpgroup) per (row tile,
/// column tile), with at most ceil(rows / tileRows) + E row tiles.
Value tileThreads(GPUProgram &p, Value rows, int64_t experts, int64_t colTiles,
                  int64_t tileRows, int64_t tileThreads) {
  OpBuilder &b = p.host();
  Location loc = p.getLoc();
  Value tiles = arith::AddIOp::create(
      b, loc, arith::CeilDivUIOp::create(b, loc, rows, p.hostIndex(tileRows)),
      p.hostIndex(experts));
  Value none = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq, rows,
                                     p.hostIndex(0));
  tiles = arith::SelectOp::create(b, loc, none, p.hostIndex(0), tiles);
  return p.hostMul(tiles, p.hostIndex(colTiles * tileThreads));
}

/// The rows of the forms of a GEMM with `forms` over `rows`: {split, thread
/// per output, mma.sync, warpgroup}, each `rows` or 0.
struct FormRows {
  Value split, thread, mma, warpgroup;
};
FormRows formRows(GPUProgram &p, Value rows, const ExpertGemmForms &forms) {
  auto [split, other] = p.splitRows(rows, forms.splitMaxRows);
  Value none = p.hostIndex(0);
  if (!forms.mmaSubtiles)
    return {split, other, none, none};
  if (!forms.warpgroupMinRows)
    return {split, none, other, none};
  auto [mma, warpgroup] = p.splitRows(other, forms.warpgroupMinRows - 1);
  return {split, none, mma, warpgroup};
}

/// Per plan row r of expert e with token t: h[r] = act(Wg_e x_t) *
/// (Wu_e x_t), y[r] = Wd_e h[r] (padding rows skipped); then per token
/// out[t] = sum over ascending j of gates[t, j] * y[slotRow[t, j]].
LogicalResult emitFusedExperts(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                               Operation *call) {
  int64_t act;
  if (failed(p.requireInt(name, a[9], act)))
    return failure();
  std::string key;
  llvm::raw_string_ostream(key) << act;
  Value x = a[0], rowToken = a[1], offsets = a[2], slotRow = a[3], gates = a[4],
        wg = a[5], wu = a[6], wd = a[7], out = a[8];
  ArrayRef<int64_t> wShape = shapeOf(wg);
  int64_t e = wShape[0], f = wShape[1], d = wShape[2];
  int64_t topK = shapeOf(slotRow)[1];
  Value rows = p.hostDim(rowToken, 0);
  const GPUKernelOptions &options = p.getOptions();
  auto isBF16 = [](Value w) {
    return cast<MemRefType>(w.getType()).getElementType().isBF16();
  };
  // The plan-ordered intermediates, the largest buffers of a layer (rows =
  // tokens x k): bf16 when activations are rounded to bf16 anyway (the
  // tensor cores read them so), which halves their memory and traffic.
  Type element = options.bf16Activations && isBF16(wg) && isBF16(wd)
                     ? p.host().getBF16Type()
                     : p.host().getF32Type();
  int64_t dyn = ShapedType::kDynamic;
  Value h = p.scratch(MemRefType::get({dyn, f}, element), {rows});
  Value y = p.scratch(MemRefType::get({dyn, d}, element), {rows});

  // Each GEMM has three forms (four with wgmma), launched side by side with the
  // rows each gets (GPUCostModel.h picks where they hand over). Few rows
  // (decode) leave a thread per output too little parallelism and read each
  // weight row with one thread: there, a warp splits the dot products of up
  // to kSplitChunkRows rows of one expert with one weight row (one in a
  // resident loop kernel, GPUProgram::splitChunkRows; lanes take
  // 16-byte chunks of weights, neighbouring lanes neighbouring chunks, each
  // loaded once for all the rows: KernelBody::laneDotShares) and adds the
  // partial sums with shuffles in a fixed order (deterministic, and the same
  // per row whatever its chunk).
  // More rows go to warp tiles on the tensor cores (bf16 weights), else to a
  // thread per output.
  // With `wgmma` (sm_90a), the most rows go to Hopper warpgroup tiles
  // (WarpgroupMma.h) where the shapes divide into them, except in a pass
  // loop that becomes a resident kernel: its phases are grid-stride loops
  // of independent threads, with no room for block-wide barriers.
  ExpertGemmShape upShape{e, topK, f, d, 2, isBF16(wg) && isBF16(wu)};
  ExpertGemmShape downShape{e, topK, d, f, 1, isBF16(wd)};
  int64_t chunkRows = p.splitChunkRows();
  ExpertGemmForms upForms =
      chooseExpertGemmForms(options.chip, options.tensorCores, upShape,
                            mayUseWarpgroups(p, {wg, wu}), chunkRows);
  ExpertGemmForms downForms =
      chooseExpertGemmForms(options.chip, options.tensorCores, downShape,
                            mayUseWarpgroups(p, {wd}), chunkRows);
  bool upWarpgroups = upForms.warpgroupMinRows > 0;
  bool downWarpgroups = downForms.warpgroupMinRows > 0;
  reportGemmForms(options, call->getLoc(), "experts gate/up", upShape, upForms);
  reportGemmForms(options, call->getLoc(), "experts down", downShape,
                  downForms);
  FormRows upRows = formRows(p, rows, upForms);
  FormRows downRows = formRows(p, rows, downForms);

  // The expert whose segment holds row r: the number of segments that end
  // at or before r, i.e. the last e with offsets[e] <= r (the offsets do not
  // decrease), in log2(E) loads rather than a scan of all E (which cost the
  // decode form more than its dot product).
  auto expertOf = [&](KernelBody &k, Value offs, Value r) {
    return k.lastAtMost(offs, e, k.toI32(r));
  };
  auto activate = [&](KernelBody &k, Value g, Value u) {
    return k.glu(act, g, u);
  };
  // The gate and up dots of row r (its token t, expert ex), column c, by
  // one thread.
  auto gateUp = [&](KernelBody &k, ValueRange args, Value t, Value ex,
                    Value c) {
    Value zero = k.f32(0.0);
    return k.reduceAll(
        k.index(0), k.index(d), {zero, zero},
        [&](Value i, ValueRange acc) -> SmallVector<Value> {
          Value xv = k.load(args[0], {t, i});
          return {k.fadd(acc[0], k.fmul(xv, k.load(args[3], {ex, c, i}))),
                  k.fadd(acc[1], k.fmul(xv, k.load(args[4], {ex, c, i})))};
        });
  };
  // The split forms' chunks: `chunkRows` consecutive rows of an
  // expert's segment from its start on. A warp per (row, column) is
  // launched; those of a chunk's first row r do its work and the others
  // return at once, as would those of rows from offsets[E] on (no
  // expert's: expertOf says E for them), so that no warp can read past the
  // offsets or the weights whatever rows it is launched for. `body` gets the
  // expert, and per row of the chunk its plan row, its token and whether it is
  // used (inside the segment, not padding); an unused row reads the first row's
  // and token 0's data.
  auto forChunk = [&](KernelBody &k, Value offs, Value tokens, Value r,
                      function_ref<void(Value, ArrayRef<Value>, ArrayRef<Value>,
                                        ArrayRef<Value>)>
                          body) {
    Value ex = expertOf(k, offs, r);
    Value start = k.toIndex(k.load(offs, {ex}));
    Value next = arith::MinUIOp::create(k.b, k.add(ex, k.index(1)), k.index(e));
    Value end = k.toIndex(k.load(offs, {next}));
    Value first = arith::AndIOp::create(
        k.b, k.cmp(arith::CmpIPredicate::ult, ex, k.index(e)),
        k.cmp(arith::CmpIPredicate::eq,
              k.rem(arith::SubIOp::create(k.b, r, start), k.index(chunkRows)),
              k.index(0)));
    k.ifThen(first, [&] {
      SmallVector<Value> rowOf, tokenOf, used;
      for (int64_t j = 0; j < chunkRows; ++j) {
        Value rj = k.add(r, k.index(j));
        Value inSegment = k.cmp(arith::CmpIPredicate::ult, rj, end);
        Value row = arith::SelectOp::create(k.b, inSegment, rj, r);
        Value tok = k.load(tokens, {row});
        Value use = arith::AndIOp::create(
            k.b, inSegment, k.cmp(arith::CmpIPredicate::sge, tok, k.i32(0)));
        rowOf.push_back(row);
        tokenOf.push_back(
            k.toIndex(arith::SelectOp::create(k.b, use, tok, k.i32(0))));
        used.push_back(use);
      }
      body(ex, rowOf, tokenOf, used);
    });
  };
  auto ifRowUsed = [&](KernelBody &k, Value tokens, Value r,
                       function_ref<void(Value)> body) {
    Value tok = k.load(tokens, {r});
    k.ifThen(k.cmp(arith::CmpIPredicate::sge, tok, k.i32(0)),
             [&] { body(k.toIndex(tok)); });
  };
  // A warp tile of an mma form: `body` gets the lane, the tile's first
  // column, per row half (WarpMma.h) the lane's plan row and its token (-1
  // outside the segment or for padding), and the weight indices of the
  // tile's expert (WarpTileGemm::bIndices).
  using WeightIndices =
      function_ref<SmallVector<Value>(KernelBody &, Value col, Value i)>;
  using TileBody = function_ref<void(KernelBody &, ValueRange args, Value lane,
                                     Value colBase, ArrayRef<Value> rowOf,
                                     ArrayRef<Value> tokenOf, WeightIndices)>;
  // The row tiles of the mma.sync forms and of the warpgroup forms (their
  // kernels take them after the form's arguments).
  auto rowTiles = [&](bool upUses, bool downUses, int64_t tileRows,
                      Value upFormRows, Value downFormRows) -> Value {
    if (!upUses && !downUses)
      return Value();
    Value prefix =
        p.scratch(MemRefType::get({e + 1}, p.host().getI32Type()), {});
    Value none = p.hostIndex(0);
    emitRowTiles(p, offsets, prefix, e,
                 arith::MaxUIOp::create(p.host(), p.getLoc(),
                                        upUses ? upFormRows : none,
                                        downUses ? downFormRows : none),
                 tileRows);
    return prefix;
  };
  Value tilePrefix = rowTiles(upForms.mmaSubtiles, downForms.mmaSubtiles,
                              kMmaRows, upRows.mma, downRows.mma);
  Value groupPrefix = rowTiles(upWarpgroups, downWarpgroups, kWgmmaRows,
                               upRows.warpgroup, downRows.warpgroup);
  // Launches the mma form `base` over `rows` plan rows: a warp per (row
  // tile, `cols` / (8 * subtiles) column tiles); its kernel takes `args` and
  // the tile prefix.
  auto launchMma = [&](StringRef base, ArrayRef<Value> formArgs, int64_t cols,
                       int64_t subtiles, Value rows, TileBody body) {
    std::string mmaKey = key + "," + std::to_string(subtiles);
    int64_t colTiles = cols / (kMmaCols * subtiles);
    SmallVector<Value> mmaArgs(formArgs);
    mmaArgs.push_back(tilePrefix);
    auto fn = p.kernel(
        base, mmaKey, mmaArgs, [&](KernelBody &k, Value gid, ValueRange args) {
          Value lane = k.rem(gid, k.index(kLanes));
          Value task = k.div(gid, k.index(kLanes));
          Value colBase = k.mul(k.rem(task, k.index(colTiles)),
                                k.index(kMmaCols * subtiles));
          ExpertRowTile tile =
              expertRowTile(k, args.back(), args[2], e,
                            k.div(task, k.index(colTiles)), kMmaRows);
          // Whole warps take this branch or not: mma.sync needs all lanes.
          k.ifThen(tile.found, [&] {
            SmallVector<Value> rowOf, tokenOf;
            for (int64_t half : {0, 1}) {
              Value r = k.add(tile.first, k.add(k.div(lane, k.index(4)),
                                                k.index(half * kMmaRows / 2)));
              Value inSegment = k.cmp(arith::CmpIPredicate::ult, r, tile.end);
              rowOf.push_back(r);
              tokenOf.push_back(k.select(
                  inSegment, [&] { return k.load(args[1], {r}); },
                  [&] { return k.i32(-1); }));
            }
            auto bIndices = [&](KernelBody &k, Value col,
                                Value i) -> SmallVector<Value> {
              return {tile.expert, k.add(colBase, col), i};
            };
            body(k, args, lane, colBase, rowOf, tokenOf, bIndices);
          });
        });
    p.launch(fn, tileThreads(p, rows, e, colTiles, kMmaRows, kLanes), mmaArgs);
  };
  // Tile row `row` of a warpgroup tile: its plan row, that row clamped to
  // the segment and its token (0 if unused), so that loads stay in bounds,
  // and whether it is used (inside the segment, not padding).
  struct GroupRow {
    Value planRow, clampedRow, token, used;
  };
  auto groupRow = [&](KernelBody &k, Value tokens, const ExpertRowTile &tile,
                      Value row) {
    Value r = k.add(tile.first, row);
    Value inSegment = k.cmp(arith::CmpIPredicate::ult, r, tile.end);
    Value last = arith::SubIOp::create(k.b, tile.end, k.index(1));
    Value clamped = arith::MinUIOp::create(k.b, r, last);
    Value token = k.load(tokens, {clamped});
    Value used = arith::AndIOp::create(
        k.b, inSegment, k.cmp(arith::CmpIPredicate::sge, token, k.i32(0)));
    return GroupRow{r, clamped,
                    k.toIndex(arith::MaxSIOp::create(k.b, token, k.i32(0))),
                    used};
  };
  // The epilogue of a warpgroup form for one accumulator of the thread: the
  // form's arguments, all its accumulators, this one's index (of the first
  // matrix), and its plan row and column.
  using GroupEpilogue =
      function_ref<void(KernelBody &, ValueRange args, ArrayRef<Value> acc,
                        int64_t at, Value planRow, Value col)>;
  // Launches the warpgroup form `base` over `rows` plan rows: a block of one
  // warpgroup per (row tile, column tile of `tileCols`) computes A B_m^T for
  // the `weights` (the form's arguments from the fourth on), A's rows being
  // the tokens' rows of the first argument (`gathered`) or its plan rows, and
  // hands each used row's accumulators to `epilogue`. Its kernel takes
  // `formArgs`, the row tiles and the weights' tensor maps (none when
  // emulated: the emulated kernel reads the weights directly).
  auto launchWarpgroups = [&](StringRef base, ArrayRef<Value> formArgs,
                              ArrayRef<Value> weights, int64_t cols,
                              int64_t tileCols, int64_t depth, Value rows,
                              bool gathered, GroupEpilogue epilogue) {
    SmallVector<Value> groupArgs(formArgs);
    groupArgs.push_back(groupPrefix);
    size_t mapsAt = groupArgs.size();
    if (!options.emulateWarpOps)
      for (Value w : weights)
        groupArgs.push_back(createWeightTensorMap(p, w, tileCols, rows));
    auto fn = p.kernel(
        base, key, groupArgs, [&](KernelBody &k, Value gid, ValueRange all) {
          ValueRange args = all.take_front(formArgs.size());
          WarpgroupTask task = warpgroupTask(k, gid, cols, tileCols);
          ExpertRowTile tile = expertRowTile(k, all[mapsAt - 1], args[2], e,
                                             task.rowTile, kWgmmaRows);
          // A block is one warpgroup: all its threads take this branch or
          // none, as the barriers in it need.
          k.ifThen(tile.found, [&] {
            auto loadA = [&](KernelBody &k, Value row, Value i0) {
              GroupRow r = groupRow(k, args[1], tile, row);
              return loadChunkOrZeros(
                  k, args[0], gathered ? r.token : r.clampedRow, i0, r.used);
            };
            WarpgroupTileGemm gemm{
                depth,
                tileCols,
                loadA,
                SmallVector<Value, 2>(args.slice(3, weights.size())),
                SmallVector<Value, 2>(all.drop_front(mapsAt)),
                tile.expert,
                task.colBase};
            SmallVector<Value> acc =
                emitWarpgroupTileGemm(k, task.thread, gemm);
            forEachWarpgroupAccumulator(
                k, task.thread, tileCols,
                [&](int64_t at, Value row, Value col) {
                  GroupRow r = groupRow(k, args[1], tile, row);
                  k.ifThen(r.used, [&] {
                    epilogue(k, args, acc, at, r.planRow,
                             k.add(task.colBase, col));
                  });
                });
          });
        });
    p.launch(
        fn,
        tileThreads(p, rows, e, cols / tileCols, kWgmmaRows, kWarpgroupThreads),
        groupArgs, kWarpgroupThreads);
  };
  auto rowUsed = [&](KernelBody &k, Value token) {
    return k.cmp(arith::CmpIPredicate::sge, token, k.i32(0));
  };
  // A's element from `source[row, i]` for a used row, else 0.
  auto loadRow = [&](KernelBody &k, Value token, Value source, Value row,
                     Value i) {
    return k.select(
        rowUsed(k, token),
        [&] {
          return k.load(source, {row, i});
        },
        [&] { return k.f32(0.0); });
  };

  SmallVector<Value> upArgs = {x, rowToken, offsets, wg, wu, h};
  auto up = p.kernel("experts_gate_up", key, upArgs,
                     [&](KernelBody &k, Value gid, ValueRange args) {
                       Value r = k.div(gid, k.index(f)),
                             c = k.rem(gid, k.index(f));
                       ifRowUsed(k, args[1], r, [&](Value t) {
                         SmallVector<Value> gu =
                             gateUp(k, args, t, expertOf(k, args[2], r), c);
                         k.store(activate(k, gu[0], gu[1]), args[5], {r, c});
                       });
                     });
  p.launch(up, p.hostMul(upRows.thread, p.hostIndex(f)), upArgs);

  if (upWarpgroups) {
    int64_t upAccumulators = warpgroupAccumulators(upForms.warpgroupCols);
    launchWarpgroups("experts_gate_up_wgmma", upArgs, {wg, wu}, f,
                     upForms.warpgroupCols, d, upRows.warpgroup,
                     /*gathered=*/true,
                     [&](KernelBody &k, ValueRange args, ArrayRef<Value> acc,
                         int64_t at, Value row, Value col) {
                       Value g = acc[at], u = acc[upAccumulators + at];
                       k.store(activate(k, g, u), args[5], {row, col});
                     });
  }
  if (int64_t subtiles = upForms.mmaSubtiles) {
    launchMma("experts_gate_up_mma", upArgs, f, subtiles, upRows.mma,
              [&](KernelBody &k, ValueRange args, Value lane, Value colBase,
                  ArrayRef<Value> rowOf, ArrayRef<Value> tokenOf,
                  WeightIndices bIndices) {
                SmallVector<Value> tokenRow;
                for (Value token : tokenOf)
                  tokenRow.push_back(
                      k.toIndex(arith::MaxSIOp::create(k.b, token, k.i32(0))));
                auto loadA = [&](KernelBody &k, int64_t half, Value i) {
                  return loadRow(k, tokenOf[half], args[0], tokenRow[half], i);
                };
                WarpTileGemm gemm{d,     subtiles,           2,
                                  loadA, {args[3], args[4]}, bIndices};
                SmallVector<Value> acc = emitWarpTileGemm(k, lane, gemm);
                forEachAccumulator(
                    k, lane, subtiles,
                    [&](int64_t at, int64_t half, Value col) {
                      k.ifThen(rowUsed(k, tokenOf[half]), [&] {
                        Value g = acc[at], u = acc[subtiles * 4 + at];
                        k.store(activate(k, g, u), args[5],
                                {rowOf[half], k.add(colBase, col)});
                      });
                    });
              });
  }

  SmallVector<Value> upSplitArgs = {x, rowToken, offsets, wg, wu, h};
  auto upSplit = p.kernel(
      "experts_gate_up_split", key, upSplitArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value lane = k.rem(gid, k.index(kLanes));
        Value rc = k.div(gid, k.index(kLanes));
        Value r = k.div(rc, k.index(f)), c = k.rem(rc, k.index(f));
        // The chunk is the same for the warp's lanes.
        forChunk(
            k, args[2], args[1], r,
            [&](Value ex, ArrayRef<Value> rowOf, ArrayRef<Value> tokenOf,
                ArrayRef<Value> used) {
              SmallVector<SmallVector<Value>> xRows;
              for (Value t : tokenOf)
                xRows.push_back({t});
              SmallVector<Value> gu = k.warpSum(lane, [&](Value l) {
                return k.laneDotShares(l, d, args[0], xRows, {args[3], args[4]},
                                       {{ex, c}, {ex, c}});
              });
              Value lead = k.cmp(arith::CmpIPredicate::eq, lane, k.index(0));
              for (size_t j = 0; j < rowOf.size(); ++j)
                k.ifThen(arith::AndIOp::create(k.b, lead, used[j]), [&] {
                  k.store(activate(k, gu[2 * j], gu[2 * j + 1]), args[5],
                          {rowOf[j], c});
                });
            });
      });
  p.launch(upSplit, p.hostMul(upRows.split, p.hostIndex(f * kLanes)),
           upSplitArgs);

  SmallVector<Value> downArgs = {h, rowToken, offsets, wd, y};
  auto down =
      p.kernel("experts_down", key, downArgs,
               [&](KernelBody &k, Value gid, ValueRange args) {
                 Value r = k.div(gid, k.index(d)), c = k.rem(gid, k.index(d));
                 ifRowUsed(k, args[1], r, [&](Value) {
                   Value ex = expertOf(k, args[2], r);
                   k.store(k.dot(args[0], {r}, args[3], {ex, c}, k.index(f)),
                           args[4], {r, c});
                 });
               });
  p.launch(down, p.hostMul(downRows.thread, p.hostIndex(d)), downArgs);

  if (downWarpgroups) {
    launchWarpgroups("experts_down_wgmma", downArgs, {wd}, d,
                     downForms.warpgroupCols, f, downRows.warpgroup,
                     /*gathered=*/false,
                     [&](KernelBody &k, ValueRange args, ArrayRef<Value> acc,
                         int64_t at, Value row, Value col) {
                       k.store(acc[at], args[4], {row, col});
                     });
  }
  if (int64_t subtiles = downForms.mmaSubtiles) {
    launchMma(
        "experts_down_mma", downArgs, d, subtiles, downRows.mma,
        [&](KernelBody &k, ValueRange args, Value lane, Value colBase,
            ArrayRef<Value> rowOf, ArrayRef<Value> tokenOf,
            WeightIndices bIndices) {
          auto loadA = [&](KernelBody &k, int64_t half, Value i) {
            return loadRow(k, tokenOf[half], args[0], rowOf[half], i);
          };
          WarpTileGemm gemm{f, subtiles, 1, loadA, {args[3]}, bIndices};
          SmallVector<Value> acc = emitWarpTileGemm(k, lane, gemm);
          forEachAccumulator(
              k, lane, subtiles, [&](int64_t at, int64_t half, Value col) {
                k.ifThen(rowUsed(k, tokenOf[half]), [&] {
                  k.store(acc[at], args[4], {rowOf[half], k.add(colBase, col)});
                });
              });
        });
  }

  SmallVector<Value> downSplitArgs = {h, rowToken, offsets, wd, y};
  auto downSplit = p.kernel(
      "experts_down_split", key, downSplitArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value lane = k.rem(gid, k.index(kLanes));
        Value rc = k.div(gid, k.index(kLanes));
        Value r = k.div(rc, k.index(d)), c = k.rem(rc, k.index(d));
        forChunk(k, args[2], args[1], r,
                 [&](Value ex, ArrayRef<Value> rowOf, ArrayRef<Value>,
                     ArrayRef<Value> used) {
                   SmallVector<SmallVector<Value>> hRows;
                   for (Value row : rowOf)
                     hRows.push_back({row});
                   SmallVector<Value> sums = k.warpSum(lane, [&](Value l) {
                     return k.laneDotShares(l, f, args[0], hRows, {args[3]},
                                            {{ex, c}});
                   });
                   Value lead =
                       k.cmp(arith::CmpIPredicate::eq, lane, k.index(0));
                   for (size_t j = 0; j < rowOf.size(); ++j)
                     k.ifThen(arith::AndIOp::create(k.b, lead, used[j]), [&] {
                       k.store(sums[j], args[4], {rowOf[j], c});
                     });
                 });
      });
  p.launch(downSplit, p.hostMul(downRows.split, p.hostIndex(d * kLanes)),
           downSplitArgs);

  auto combine = p.kernel(
      "experts_combine", key, {y, slotRow, gates, out},
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value t = k.div(gid, k.index(d)), c = k.rem(gid, k.index(d));
        Value sum = k.reduce(
            k.index(0), k.index(topK), k.f32(0.0), [&](Value j, Value acc) {
              Value row = k.load(args[1], {t, j});
              Value used = k.cmp(arith::CmpIPredicate::sge, row, k.i32(0));
              return k.select(
                  used,
                  [&]() -> Value {
                    Value v = k.load(args[0], {k.toIndex(row), c});
                    return k.fadd(acc, k.fmul(k.load(args[2], {t, j}), v));
                  },
                  [&]() -> Value { return acc; });
            });
        k.store(sum, args[3], {t, c});
      });
  p.launch(combine, p.hostMul(p.hostDim(out, 0), p.hostIndex(d)),
           {y, slotRow, gates, out});
  for (Value prefix : {tilePrefix, groupPrefix})
    if (prefix)
      p.release(prefix);
  for (Value buffer : {h, y})
    p.release(buffer);
  return success();
}

LogicalResult emitAdd(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                      Operation *call) {
  int64_t d = shapeOf(a[2])[1];
  auto fn = p.kernel(
      "add", "", {a[0], a[1], a[2]},
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value r = k.div(gid, k.index(d)), c = k.rem(gid, k.index(d));
        k.store(k.fadd(k.load(args[0], {r, c}), k.load(args[1], {r, c})),
                args[2], {r, c});
      });
  p.launch(fn, p.hostMul(p.hostDim(a[2], 0), p.hostIndex(d)),
           {a[0], a[1], a[2]});
  return success();
}

/// One thread per token: cosine(h, prev) >= tau or |h - prev| / |h| <=
/// tau; a non-finite measure never exits.
LogicalResult emitExitTest(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                           Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  int64_t criterion;
  double tau;
  if (failed(p.requireInt(name, a[3], criterion)) ||
      failed(p.requireFloat(name, a[4], tau)))
    return failure();
  keyOs << criterion << "," << tau;
  int64_t d = shapeOf(a[0])[1];
  auto fn = p.kernel(
      "exit_test", key, {a[0], a[1], a[2]},
      [&](KernelBody &k, Value t, ValueRange args) {
        Value zero = k.f32(0.0);
        SmallVector<Value> sums = k.reduceAll(
            k.index(0), k.index(d), {zero, zero, zero, zero},
            [&](Value i, ValueRange acc) -> SmallVector<Value> {
              Value hv = k.load(args[0], {t, i}), pv = k.load(args[1], {t, i});
              Value diff = k.fsub(hv, pv);
              return {k.fadd(acc[0], k.fmul(hv, hv)),
                      k.fadd(acc[1], k.fmul(pv, pv)),
                      k.fadd(acc[2], k.fmul(hv, pv)),
                      k.fadd(acc[3], k.fmul(diff, diff))};
            });
        Value hNorm = math::SqrtOp::create(k.b, sums[0]);
        Value exit;
        if (criterion == 0) {
          Value pNorm = math::SqrtOp::create(k.b, sums[1]);
          Value cosine = k.fdiv(sums[2], k.fmul(hNorm, pNorm));
          exit = arith::CmpFOp::create(k.b, arith::CmpFPredicate::OGE, cosine,
                                       k.f32(tau));
          exit = arith::AndIOp::create(k.b, k.isFinite(cosine), exit);
        } else {
          Value relative = k.fdiv(math::SqrtOp::create(k.b, sums[3]), hNorm);
          exit = arith::CmpFOp::create(k.b, arith::CmpFPredicate::OLE, relative,
                                       k.f32(tau));
          exit = arith::AndIOp::create(k.b, k.isFinite(relative), exit);
        }
        k.store(arith::ExtUIOp::create(k.b, k.b.getI8Type(), exit), args[2],
                {t});
      });
  p.launch(fn, p.hostDim(a[0], 0), {a[0], a[1], a[2]});
  return success();
}

/// active = 0..T-1, exit_loop = passes - 1, trace = -1 / 0.
LogicalResult emitLoopInit(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                           Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  int64_t passes;
  if (failed(p.requireInt(name, a[4], passes)))
    return failure();
  keyOs << passes;
  auto tokensFn = p.kernel("loop_init", key, {a[0], a[1]},
                           [&](KernelBody &k, Value t, ValueRange args) {
                             k.store(k.toI32(t), args[0], {t});
                             k.store(k.i32(passes - 1), args[1], {t});
                           });
  p.launch(tokensFn, p.hostDim(a[0], 0), {a[0], a[1]});
  auto traceFn = p.kernel("trace_init", "", {a[2], a[3]},
                          [&](KernelBody &k, Value gid, ValueRange args) {
                            Value kk = k.dim(args[0], 2),
                                  tt = k.dim(args[0], 1);
                            Value j = k.rem(gid, kk), rest = k.div(gid, kk);
                            Value t = k.rem(rest, tt), s = k.div(rest, tt);
                            k.store(k.i32(-1), args[0], {s, t, j});
                            k.store(k.f32(0.0), args[1], {s, t, j});
                          });
  p.launch(traceFn, p.hostNumElements(a[2]), {a[2], a[3]});
  return success();
}

/// gather: dst[i] = src[index[i]]; scatter: dst[index[i]] = src[i] (or
/// src[index[i]] when the pass ran on all tokens, byToken).
LogicalResult emitGatherRows(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                             Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  bool gather = name == "moert_gather_rows";
  int64_t byToken = 0;
  if (!gather && failed(p.requireInt(name, a[3], byToken)))
    return failure();
  keyOs << byToken;
  Value src = a[0], index = a[1], dst = a[2];
  int64_t d = shapeOf(src)[1];
  auto fn =
      p.kernel(gather ? "gather_rows" : "scatter_rows", key, {src, index, dst},
               [&](KernelBody &k, Value gid, ValueRange args) {
                 Value i = k.div(gid, k.index(d)), c = k.rem(gid, k.index(d));
                 Value tok = k.toIndex(k.load(args[1], {i}));
                 Value from = gather || byToken ? tok : i;
                 Value to = gather ? i : tok;
                 k.store(k.load(args[0], {from, c}), args[2], {to, c});
               });
  p.launch(fn, p.hostMul(p.hostDim(index, 0), p.hostIndex(d)),
           {src, index, dst});
  return success();
}

LogicalResult emitRecordStep(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                             Operation *call) {
  std::string key;
  llvm::raw_string_ostream keyOs(key);
  int64_t byToken;
  if (failed(p.requireInt(name, a[6], byToken)))
    return failure();
  keyOs << byToken;
  int64_t topK = shapeOf(a[0])[1];
  SmallVector<Value> args = {a[0], a[1], a[2], a[3], a[4], a[5]};
  auto fn = p.kernel(
      "record_step", key, args, [&](KernelBody &k, Value gid, ValueRange args) {
        Value i = k.div(gid, k.index(topK)), j = k.rem(gid, k.index(topK));
        Value tok = k.toIndex(k.load(args[2], {i}));
        Value from = byToken ? tok : i;
        Value step = k.toIndex(args[5]);
        k.store(k.load(args[0], {from, j}), args[3], {step, tok, j});
        k.store(k.load(args[1], {from, j}), args[4], {step, tok, j});
      });
  p.launch(fn, p.hostMul(p.hostDim(a[2], 0), p.hostIndex(topK)), args);
  return success();
}

LogicalResult emitExitUpdate(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                             Operation *call) {
  // A thread per active token: an exited token records the pass, the others
  // take the next slot of a compacted copy of the active list, which is
  // copied back; the host reads back how many stay active. The atomics
  // reorder the active tokens, which no result depends on: every row is
  // computed on its own and results are written back by token.
  int64_t minPasses, passes, byToken;
  if (failed(p.requireInt(name, a[5], minPasses)) ||
      failed(p.requireInt(name, a[6], passes)) ||
      failed(p.requireInt(name, a[7], byToken)))
    return failure();
  std::string key;
  llvm::raw_string_ostream(key) << minPasses << "," << passes << "," << byToken;
  Value exits = a[0], active = a[1], exitLoop = a[2], count = a[3], pass = a[4];
  Type i32 = p.host().getI32Type();
  Value kept = p.scratch(MemRefType::get({1}, i32), {});
  Value next = p.scratch(MemRefType::get({ShapedType::kDynamic}, i32),
                         {p.hostDim(active, 0)});
  Value n = arith::IndexCastOp::create(p.host(), p.getLoc(),
                                       p.host().getIndexType(), count);

  auto init = p.kernel("exit_update_init", "", {kept},
                       [&](KernelBody &k, Value, ValueRange args) {
                         k.store(k.i32(0), args[0], {k.index(0)});
                       });
  p.launch(init, p.hostIndex(1), {kept});

  SmallVector<Value> scanArgs = {exits, active, exitLoop, next, kept, pass};
  auto scan = p.kernel(
      "exit_update", key, scanArgs,
      [&](KernelBody &k, Value i, ValueRange args) {
        ImplicitLocOpBuilder &b = k.b;
        auto c64 = [&](int64_t v) {
          return arith::ConstantIntOp::create(b, v, 64).getResult();
        };
        Value passArg = args[5];
        // The contract tests exits after minPasses completed passes, and
        // never after the last pass.
        Value tested = arith::AndIOp::create(
            b,
            k.cmp(arith::CmpIPredicate::sge,
                  arith::AddIOp::create(b, passArg, c64(1)), c64(minPasses)),
            k.cmp(arith::CmpIPredicate::slt, passArg, c64(passes - 1)));
        Value tok = k.load(args[1], {i});
        Value tokIdx = k.toIndex(tok);
        Value flagged = k.cmp(arith::CmpIPredicate::ne,
                              k.load(args[0], {byToken ? tokIdx : i}),
                              arith::ConstantIntOp::create(b, 0, 8));
        Value exited = arith::AndIOp::create(b, tested, flagged);
        auto op = scf::IfOp::create(b, exited, /*withElseRegion=*/true);
        OpBuilder::InsertionGuard guard(b);
        b.setInsertionPoint(op.thenBlock()->getTerminator());
        k.store(arith::TruncIOp::create(b, b.getI32Type(), passArg), args[2],
                {tokIdx});
        b.setInsertionPoint(op.elseBlock()->getTerminator());
        Value slot =
            memref::AtomicRMWOp::create(b, arith::AtomicRMWKind::addi, k.i32(1),
                                        args[4], ValueRange{k.index(0)});
        k.store(tok, args[3], {k.toIndex(slot)});
      });
  p.launch(scan, n, scanArgs);

  auto copy =
      p.kernel("exit_update_copy", "", {next, kept, active},
               [&](KernelBody &k, Value i, ValueRange args) {
                 Value keptCount = k.toIndex(k.load(args[1], {k.index(0)}));
                 k.ifThen(k.cmp(arith::CmpIPredicate::ult, i, keptCount),
                          [&] { k.store(k.load(args[0], {i}), args[2], {i}); });
               });
  p.launch(copy, n, {next, kept, active});
  p.release(next);
  Value result = p.readBack(kept);
  call->getResult(0).replaceAllUsesWith(arith::ExtSIOp::create(
      p.host(), p.getLoc(), p.host().getI64Type(), result));
  return success();
}
} // namespace

void mlir::moe::gpu_lowering::addMoEKernelEmitters(
    llvm::StringMap<KernelEmitter> &emitters) {
  emitters["moert_copy"] = emitCopy;
  emitters["moert_rms_norm"] = emitRmsNorm;
  emitters["moert_route"] = emitRoute;
  emitters["moert_plan"] = emitPlan;
  emitters["moert_fused_experts"] = emitFusedExperts;
  emitters["moert_add"] = emitAdd;
  emitters["moert_exit_test"] = emitExitTest;
  emitters["moert_loop_init"] = emitLoopInit;
  emitters["moert_gather_rows"] = emitGatherRows;
  emitters["moert_scatter_rows"] = emitGatherRows;
  emitters["moert_record_step"] = emitRecordStep;
  emitters["moert_exit_update"] = emitExitUpdate;
}
