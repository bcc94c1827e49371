//===- DecoderKernels.cpp - GPU kernels of the dense decoder ops ----------===//
//
// Token embedding, the LM head, causal self-attention over a KV cache and the
// LM-head exit test, as moert/CpuDecoderKernels.h defines them, for the host
// program of a decoder. Like the MoE kernels they are grids of independent
// threads. Attention is: the q, k and v projections, k and v stored into the
// cache rows of their positions, per-token q/k norms, clamping and RoPE, the
// max-subtracted softmax over the cache (a thread per token and head, or per
// chunk of the cache for decode), and the output projection. The projections
// and the LM head are emitRowsDotWeights GEMMs: a warp per output for few
// rows (decode), tensor-core tiles or a thread per output beyond.
//
//===----------------------------------------------------------------------===//
#include "GPUProgram.h"

#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {
/// Decode attention (at most this many tokens) splits the cache into chunks
/// of kKvChunk positions.
constexpr int64_t kSplitKvMaxTokens = 8;
constexpr int64_t kKvChunk = 32;

Value f64(KernelBody &k, double v) {
  return arith::ConstantFloatOp::create(k.b, k.b.getF64Type(), APFloat(v));
}
Value nan32(KernelBody &k) {
  return arith::ConstantFloatOp::create(k.b, k.b.getF32Type(),
                                        APFloat::getNaN(APFloat::IEEEsingle()));
}
/// Whether 0 <= pos < rows (pos an i32, rows an index).
Value inRange(KernelBody &k, Value pos, Value rows) {
  Value p = k.toIndex(pos);
  return arith::AndIOp::create(k.b,
                               k.cmp(arith::CmpIPredicate::sge, pos, k.i32(0)),
                               k.cmp(arith::CmpIPredicate::slt, p, rows));
}
/// sqrt(mean of squares + eps) of the `count` elements m[row, offset + i].
Value rmsOf(KernelBody &k, Value m, Value row, Value offset, int64_t count,
            double eps) {
  Value ss =
      k.reduce(k.index(0), k.index(count), k.f32(0.0), [&](Value i, Value acc) {
        Value v = k.load(m, {row, k.add(i, offset)});
        return k.fadd(acc, k.fmul(v, v));
      });
  return math::SqrtOp::create(
      k.b, k.fadd(k.fdiv(ss, k.f32(double(count))), k.f32(eps)));
}
/// m[row, offset + i] = m[row, offset + i] / rms * w[i], i < count.
void normalise(KernelBody &k, Value m, Value row, Value offset, int64_t count,
               double eps, Value w) {
  Value rms = rmsOf(k, m, row, offset, count, eps);
  k.forEach(k.index(0), k.index(count), [&](Value i) {
    SmallVector<Value> at = {row, k.add(i, offset)};
    Value v = k.fdiv(k.load(m, at), rms);
    k.store(k.fmul(v, k.load(w, {i})), m, at);
  });
}
/// body(offset of head h) for each of `heads` heads of `headDim`.
void forEachHead(KernelBody &k, int64_t heads, int64_t headDim,
                 function_ref<void(Value)> body) {
  k.forEach(k.index(0), k.index(heads),
            [&](Value h) { body(k.mul(h, k.index(headDim))); });
}

LogicalResult emitEmbed(GPUProgram &p, StringRef, ArrayRef<Value> a,
                        Operation *) {
  // out[i, c] = table[tokens[i], c]; NaN for a token outside the vocabulary.
  Value tokens = a[0], table = a[1], out = a[2];
  int64_t vocab = shapeOf(table)[0], d = shapeOf(table)[1];
  auto fn = p.kernel("embed", "", {tokens, table, out},
                     [&](KernelBody &k, Value gid, ValueRange args) {
                       Value i = k.div(gid, k.index(d)),
                             c = k.rem(gid, k.index(d));
                       Value tok = k.load(args[0], {i});
                       Value valid = inRange(k, tok, k.index(vocab));
                       Value v = k.select(
                           valid,
                           [&]() -> Value {
                             return k.load(args[1], {k.toIndex(tok), c});
                           },
                           [&]() -> Value { return nan32(k); });
                       k.store(v, args[2], {i, c});
                     });
  p.launch(fn, p.hostMul(p.hostDim(tokens, 0), p.hostIndex(d)),
           {tokens, table, out});
  return success();
}

LogicalResult emitUnembed(GPUProgram &p, StringRef, ArrayRef<Value> a,
                          Operation *) {
  // logits[i, v] = x[i] . w[v].
  Value x = a[0], w = a[1], out = a[2];
  emitRowsDotWeights(p, "unembed", x, w, out, shapeOf(w)[0], shapeOf(w)[1]);
  return success();
}

LogicalResult emitMlp(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                      Operation *) {
  // g = x gate^T, u = x up^T, then act(g) * u into g, and out = g down^T.
  Value x = a[0], gate = a[1], up = a[2], down = a[3], out = a[4];
  int64_t activation;
  if (failed(p.requireInt(name, a[5], activation)))
    return failure();
  int64_t d = shapeOf(x)[1], f = shapeOf(gate)[0];
  Value n = p.hostDim(x, 0);
  auto rowsType =
      MemRefType::get({ShapedType::kDynamic, f}, p.host().getF32Type());
  Value g = p.scratch(rowsType, {n}), u = p.scratch(rowsType, {n});
  emitRowsDotWeights(p, "mlp_gate", x, gate, g, f, d);
  emitRowsDotWeights(p, "mlp_up", x, up, u, f, d);
  SmallVector<Value> gluArgs = {g, u};
  auto glu = p.kernel("mlp_glu", std::to_string(activation), gluArgs,
                      [&](KernelBody &k, Value gid, ValueRange args) {
                        Value t = k.div(gid, k.index(f)),
                              c = k.rem(gid, k.index(f));
                        Value v = k.glu(activation, k.load(args[0], {t, c}),
                                        k.load(args[1], {t, c}));
                        k.store(v, args[0], {t, c});
                      });
  p.launch(glu, p.hostMul(n, p.hostIndex(f)), gluArgs);
  p.release(u);
  emitRowsDotWeights(p, "mlp_down", g, down, out, d, f);
  p.release(g);
  return success();
}

LogicalResult emitAttention(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                            Operation *) {
  int64_t numHeads, numKvHeads, headDim, normKind, interleaved, window;
  double theta, clip, eps, scale, ropeFactor, rampLow, rampHigh, ropeAttention;
  if (failed(p.requireInt(name, a[11], numHeads)) ||
      failed(p.requireInt(name, a[12], numKvHeads)) ||
      failed(p.requireInt(name, a[13], headDim)) ||
      failed(p.requireFloat(name, a[14], theta)) ||
      failed(p.requireFloat(name, a[15], clip)) ||
      failed(p.requireInt(name, a[16], normKind)) ||
      failed(p.requireFloat(name, a[17], eps)) ||
      failed(p.requireFloat(name, a[18], scale)) ||
      failed(p.requireInt(name, a[19], interleaved)) ||
      failed(p.requireFloat(name, a[20], ropeFactor)) ||
      failed(p.requireFloat(name, a[21], rampLow)) ||
      failed(p.requireFloat(name, a[22], rampHigh)) ||
      failed(p.requireFloat(name, a[23], ropeAttention)) ||
      failed(p.requireInt(name, a[24], window)))
    return failure();
  if (numHeads < 1 || numKvHeads < 1 || numHeads % numKvHeads || headDim < 2 ||
      headDim % 2)
    return emitError(p.getLoc(), "convert-moe-to-gpu: attention needs heads "
                                 "divisible by kv heads and an even head "
                                 "size");
  if (scale <= 0.0)
    scale = 1.0 / std::sqrt(static_cast<double>(headDim));
  Value x = a[0], positions = a[1], wq = a[2], wk = a[3], wv = a[4], wo = a[5],
        qNorm = a[6], kNorm = a[7], kCache = a[8], vCache = a[9], out = a[10];
  Value qBias = a[25], kBias = a[26], vBias = a[27], oBias = a[28];
  // rows [n, width] += bias, for a bias that is there (an empty one is none).
  auto addBias = [&](StringRef kernel, Value rows, Value bias, int64_t width) {
    if (shapeOf(bias)[0] == 0)
      return;
    SmallVector<Value> args = {rows, bias};
    auto fn = p.kernel(
        kernel, std::to_string(width), args,
        [&](KernelBody &k, Value gid, ValueRange args) {
          Value t = k.div(gid, k.index(width)), j = k.rem(gid, k.index(width));
          k.store(k.fadd(k.load(args[0], {t, j}), k.load(args[1], {j})),
                  args[0], {t, j});
        });
    p.launch(fn, p.hostMul(p.hostDim(rows, 0), p.hostIndex(width)), args);
  };
  int64_t d = shapeOf(x)[1];
  int64_t qWidth = numHeads * headDim, kvWidth = numKvHeads * headDim;
  int64_t group = numHeads / numKvHeads;
  std::string key;
  llvm::raw_string_ostream(key)
      << numHeads << "," << numKvHeads << "," << headDim << "," << theta << ","
      << clip << "," << normKind << "," << eps << "," << scale << ","
      << interleaved << "," << ropeFactor << "," << rampLow << "," << rampHigh
      << "," << ropeAttention << "," << window;
  Value n = p.hostDim(x, 0);
  Value q = p.scratch(
      MemRefType::get({ShapedType::kDynamic, qWidth}, p.host().getF32Type()),
      {n});

  // q = x wq^T; k, v = x wk^T, x wv^T, then k and v into the cache rows of
  // their positions.
  Type f32 = p.host().getF32Type();
  Value kNew =
      p.scratch(MemRefType::get({ShapedType::kDynamic, kvWidth}, f32), {n});
  Value vNew =
      p.scratch(MemRefType::get({ShapedType::kDynamic, kvWidth}, f32), {n});
  emitRowsDotWeights(p, "attention_q", x, wq, q, qWidth, d);
  emitRowsDotWeights(p, "attention_k", x, wk, kNew, kvWidth, d);
  emitRowsDotWeights(p, "attention_v", x, wv, vNew, kvWidth, d);
  addBias("attention_bias", q, qBias, qWidth);
  addBias("attention_bias", kNew, kBias, kvWidth);
  addBias("attention_bias", vNew, vBias, kvWidth);
  SmallVector<Value> storeArgs = {positions, kNew, vNew, kCache, vCache};
  auto storeKv =
      p.kernel("attention_cache_store", key, storeArgs,
               [&](KernelBody &k, Value gid, ValueRange args) {
                 Value t = k.div(gid, k.index(kvWidth)),
                       j = k.rem(gid, k.index(kvWidth));
                 Value pos = k.load(args[0], {t});
                 k.ifThen(inRange(k, pos, k.dim(args[3], 0)), [&] {
                   Value row = k.toIndex(pos);
                   k.store(k.load(args[1], {t, j}), args[3], {row, j});
                   k.store(k.load(args[2], {t, j}), args[4], {row, j});
                 });
               });
  p.launch(storeKv, p.hostMul(n, p.hostIndex(kvWidth)), storeArgs);
  p.release(kNew);
  p.release(vNew);

  // Per token: q/k norms, then clamping of q, k, v, then RoPE on q and k
  // (OLMoE's order).
  SmallVector<Value> prepArgs = {positions, qNorm, kNorm, kCache, vCache, q};
  auto prepare = p.kernel(
      "attention_prepare", key, prepArgs,
      [&](KernelBody &k, Value t, ValueRange args) {
        Value pos = k.load(args[0], {t});
        k.ifThen(inRange(k, pos, k.dim(args[3], 0)), [&] {
          Value row = k.toIndex(pos);
          Value qm = args[5], kc = args[3], vc = args[4];
          if (normKind == 1) {
            normalise(k, qm, t, k.index(0), qWidth, eps, args[1]);
            normalise(k, kc, row, k.index(0), kvWidth, eps, args[2]);
          } else if (normKind == 2) {
            forEachHead(k, numHeads, headDim, [&](Value base) {
              normalise(k, qm, t, base, headDim, eps, args[1]);
            });
            forEachHead(k, numKvHeads, headDim, [&](Value base) {
              normalise(k, kc, row, base, headDim, eps, args[2]);
            });
          }
          if (clip > 0.0) {
            auto clamp = [&](Value m, Value r, int64_t width) {
              k.forEach(k.index(0), k.index(width), [&](Value i) {
                Value v = k.load(m, {r, i});
                v = arith::MinimumFOp::create(
                    k.b, arith::MaximumFOp::create(k.b, v, k.f32(-clip)),
                    k.f32(clip));
                k.store(v, m, {r, i});
              });
            };
            clamp(qm, t, qWidth);
            clamp(kc, row, kvWidth);
            clamp(vc, row, kvWidth);
          }
          // The angles in double: float would lose about position * 2^-24
          // radians.
          Value position = arith::SIToFPOp::create(k.b, k.b.getF64Type(), pos);
          k.forEach(k.index(0), k.index(headDim / 2), [&](Value i) {
            Value fi =
                arith::SIToFPOp::create(k.b, k.b.getF64Type(), k.toI32(i));
            Value exponent = arith::DivFOp::create(
                k.b, arith::MulFOp::create(k.b, f64(k, -2.0), fi),
                f64(k, double(headDim)));
            Value frequency =
                math::PowFOp::create(k.b, f64(k, theta), exponent);
            // #moe.rope_scaling: a factor of 1 interpolates nothing.
            if (ropeFactor != 1.0) {
              auto cmp = [&](arith::CmpFPredicate pred, double bound) {
                return arith::CmpFOp::create(k.b, pred, fi, f64(k, bound));
              };
              Value one = f64(k, 1.0), zero = f64(k, 0.0);
              Value pastHigh = cmp(arith::CmpFPredicate::OGE, rampHigh);
              Value belowLow = cmp(arith::CmpFPredicate::OLE, rampLow);
              Value between = arith::DivFOp::create(
                  k.b, arith::SubFOp::create(k.b, fi, f64(k, rampLow)),
                  f64(k, rampHigh - rampLow));
              Value ramp = arith::SelectOp::create(
                  k.b, pastHigh, one,
                  arith::SelectOp::create(k.b, belowLow, zero, between));
              Value kept = arith::SubFOp::create(k.b, one, ramp);
              Value divided =
                  arith::DivFOp::create(k.b, ramp, f64(k, ropeFactor));
              Value interpolation = arith::AddFOp::create(k.b, kept, divided);
              frequency = arith::MulFOp::create(k.b, frequency, interpolation);
            }
            Value angle = arith::MulFOp::create(k.b, position, frequency);
            auto scaled = [&](Value v) -> Value {
              if (ropeAttention != 1.0)
                v = arith::MulFOp::create(k.b, v, f64(k, ropeAttention));
              return arith::TruncFOp::create(k.b, k.b.getF32Type(), v);
            };
            Value c = scaled(math::CosOp::create(k.b, angle));
            Value s = scaled(math::SinOp::create(k.b, angle));
            Value first = interleaved ? k.mul(i, k.index(2)) : i;
            Value second = interleaved ? k.add(first, k.index(1))
                                       : k.add(i, k.index(headDim / 2));
            auto rotate = [&](Value m, Value r, int64_t heads) {
              forEachHead(k, heads, headDim, [&](Value base) {
                SmallVector<Value> at0 = {r, k.add(base, first)};
                SmallVector<Value> at1 = {r, k.add(base, second)};
                Value u0 = k.load(m, at0), u1 = k.load(m, at1);
                k.store(k.fsub(k.fmul(u0, c), k.fmul(u1, s)), m, at0);
                k.store(k.fadd(k.fmul(u1, c), k.fmul(u0, s)), m, at1);
              });
            };
            rotate(qm, t, numHeads);
            rotate(kc, row, numKvHeads);
          });
        });
      });
  p.launch(prepare, n, prepArgs);

  // Softmax(q . k_j * scale) over cache positions 0..pos (pos - window + 1..
  // pos with a sliding window), then the weighted
  // sum of the v_j; the output replaces the head's q row. Prefill: a thread
  // per (token, head), keys in ascending order. Decode (at most 8 tokens):
  // a thread per (token, head, chunk of 32 positions) keeps its chunk's max,
  // exponential sum and weighted values, and a second kernel merges the
  // chunks in order (deterministic). Both forms are launched; the one that
  // does not apply gets no tokens.
  OpBuilder &host = p.host();
  Location loc = p.getLoc();
  auto [splitN, fullN] = p.splitRows(n, kSplitKvMaxTokens);
  Value chunks = arith::CeilDivUIOp::create(host, loc, p.hostDim(kCache, 0),
                                            p.hostIndex(kKvChunk));
  Value part = p.scratch(
      MemRefType::get({ShapedType::kDynamic, ShapedType::kDynamic, headDim + 2},
                      f32),
      {p.hostMul(splitN, p.hostIndex(numHeads)), chunks});

  // Head rows are read in 16-byte vectors (4 f32) when a head is a whole
  // number of them (rows and heads then start at 16-byte units); every
  // element is still added in order.
  constexpr int64_t kHeadVector = 4;
  bool vectorHeads = headDim % kHeadVector == 0;
  int64_t headStep = vectorHeads ? kHeadVector : 1;
  // The elements of a head row from c on, one vector or one element.
  auto headElements = [&](KernelBody &k, Value m, Value row, Value base,
                          Value c) -> SmallVector<Value> {
    if (!vectorHeads)
      return {k.load(m, {row, k.add(base, c)})};
    Value v = k.loadVector(m, {row, k.add(base, c)}, kHeadVector,
                           /*alignedIndex=*/true);
    SmallVector<Value> elements;
    for (int64_t e = 0; e < kHeadVector; ++e)
      elements.push_back(
          vector::ExtractOp::create(k.b, v, ArrayRef<int64_t>{e}));
    return elements;
  };
  // q . k_j * scale for the head at qBase of token t, kv head at kvBase.
  auto scoreOf = [&](KernelBody &k, Value qm, Value kc, Value t, Value qBase,
                     Value kvBase, Value j) {
    Value dotted = k.reduceAll(
        k.index(0), k.index(headDim), {k.f32(0.0)},
        [&](Value c, ValueRange acc) -> SmallVector<Value> {
          Value sum = acc[0];
          for (auto [qv, kv] : llvm::zip(headElements(k, qm, t, qBase, c),
                                         headElements(k, kc, j, kvBase, c)))
            sum = k.fadd(sum, k.fmul(qv, kv));
          return {sum};
        },
        headStep)[0];
    return k.fmul(dotted, k.f32(scale));
  };
  auto softmaxSums = [&](KernelBody &k, Value qm, Value kc, Value vc, Value t,
                         Value qBase, Value kvBase, Value lo, Value hi,
                         Value acc) {
    auto score = [&](Value j) {
      return scoreOf(k, qm, kc, t, qBase, kvBase, j);
    };
    k.forEach(
        k.index(0), k.index(headDim),
        [&](Value c) {
          for (auto [at, v] :
               llvm::enumerate(headElements(k, vc, lo, kvBase, c)))
            k.store(v, acc, {k.add(c, k.index(at))});
        },
        headStep);
    SmallVector<Value> maxSum = k.reduceAll(
        k.add(lo, k.index(1)), hi, {score(lo), k.f32(1.0)},
        [&](Value j, ValueRange ms) -> SmallVector<Value> {
          Value x = score(j);
          Value max = arith::MaximumFOp::create(k.b, ms[0], x);
          Value rescale = math::ExpOp::create(k.b, k.fsub(ms[0], max));
          Value e = math::ExpOp::create(k.b, k.fsub(x, max));
          k.forEach(
              k.index(0), k.index(headDim),
              [&](Value c) {
                for (auto [at, v] :
                     llvm::enumerate(headElements(k, vc, j, kvBase, c))) {
                  Value ci = k.add(c, k.index(at));
                  k.store(
                      k.fadd(k.fmul(k.load(acc, {ci}), rescale), k.fmul(e, v)),
                      acc, {ci});
                }
              },
              headStep);
          return {max, k.fadd(k.fmul(ms[1], rescale), e)};
        });
    return std::make_pair(maxSum[0], maxSum[1]);
  };
  // softmaxSums' weighted values, per thread.
  auto headAccumulator = [&](KernelBody &k) {
    return memref::AllocaOp::create(
        k.b, MemRefType::get({headDim}, k.b.getF32Type()));
  };
  // body() for a token with a valid position; NaN in its head row else.
  auto ifValidToken = [&](KernelBody &k, Value pos, Value kc, Value qm, Value t,
                          Value qBase, function_ref<void()> body) {
    Value valid = inRange(k, pos, k.dim(kc, 0));
    auto op = scf::IfOp::create(k.b, valid, /*withElseRegion=*/true);
    OpBuilder::InsertionGuard guard(k.b);
    k.b.setInsertionPoint(op.elseBlock()->getTerminator());
    k.forEach(k.index(0), k.index(headDim), [&](Value c) {
      k.store(nan32(k), qm, {t, k.add(qBase, c)});
    });
    k.b.setInsertionPoint(op.thenBlock()->getTerminator());
    body();
  };
  // The first key a query at `pos` sees.
  auto firstKey = [&](KernelBody &k, Value pos) -> Value {
    if (window <= 0)
      return k.index(0);
    Value keys = k.add(k.toIndex(pos), k.index(1));
    Value past = arith::SubIOp::create(k.b, keys, k.index(window));
    return arith::SelectOp::create(
        k.b, k.cmp(arith::CmpIPredicate::ugt, keys, k.index(window)), past,
        k.index(0));
  };
  auto headOf = [&](KernelBody &k, Value th, Value &t, Value &qBase,
                    Value &kvBase) {
    t = k.div(th, k.index(numHeads));
    Value h = k.rem(th, k.index(numHeads));
    qBase = k.mul(h, k.index(headDim));
    kvBase = k.mul(k.div(h, k.index(group)), k.index(headDim));
  };

  SmallVector<Value> coreArgs = {positions, kCache, vCache, q};
  auto core = p.kernel(
      "attention_core", key, coreArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value t, qBase, kvBase;
        headOf(k, gid, t, qBase, kvBase);
        Value pos = k.load(args[0], {t});
        Value qm = args[3], kc = args[1], vc = args[2];
        ifValidToken(k, pos, kc, qm, t, qBase, [&] {
          Value acc = headAccumulator(k);
          Value sum = std::get<1>(
              softmaxSums(k, qm, kc, vc, t, qBase, kvBase, firstKey(k, pos),
                          k.add(k.toIndex(pos), k.index(1)), acc));
          k.forEach(k.index(0), k.index(headDim), [&](Value c) {
            k.store(k.fdiv(k.load(acc, {c}), sum), qm, {t, k.add(qBase, c)});
          });
        });
      });
  p.launch(core, p.hostMul(fullN, p.hostIndex(numHeads)), coreArgs);

  SmallVector<Value> chunkArgs = {positions, kCache, vCache, q, part};
  auto chunkFn = p.kernel(
      "attention_chunks", key, chunkArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value pm = args[4];
        Value numChunks = k.dim(pm, 1);
        Value chunk = k.rem(gid, numChunks), th = k.div(gid, numChunks);
        Value t, qBase, kvBase;
        headOf(k, th, t, qBase, kvBase);
        Value pos = k.load(args[0], {t});
        Value qm = args[3], kc = args[1], vc = args[2];
        Value chunkStart = k.mul(chunk, k.index(kKvChunk));
        // An invalid position gets NaN from the merge; its chunks are empty.
        Value valid = inRange(k, pos, k.dim(kc, 0));
        Value keys = k.select(
            valid, [&]() -> Value { return k.add(k.toIndex(pos), k.index(1)); },
            [&]() -> Value { return k.index(0); });
        Value hi = arith::MinUIOp::create(
            k.b, k.add(chunkStart, k.index(kKvChunk)), keys);
        // Chunks before the window are empty too (an invalid position's
        // chunks are empty whatever its first key).
        Value lo = window > 0 ? arith::MaxUIOp::create(k.b, chunkStart,
                                                       firstKey(k, pos))
                              : chunkStart;
        Value empty = k.cmp(arith::CmpIPredicate::uge, lo, hi);
        auto op = scf::IfOp::create(k.b, empty, /*withElseRegion=*/true);
        OpBuilder::InsertionGuard guard(k.b);
        k.b.setInsertionPoint(op.thenBlock()->getTerminator());
        k.store(k.f32(0.0), pm, {th, chunk, k.index(headDim + 1)});
        k.b.setInsertionPoint(op.elseBlock()->getTerminator());
        Value acc = headAccumulator(k);
        auto [max, sum] =
            softmaxSums(k, qm, kc, vc, t, qBase, kvBase, lo, hi, acc);
        k.forEach(k.index(0), k.index(headDim), [&](Value c) {
          k.store(k.load(acc, {c}), pm, {th, chunk, c});
        });
        k.store(max, pm, {th, chunk, k.index(headDim)});
        k.store(sum, pm, {th, chunk, k.index(headDim + 1)});
      });
  p.launch(chunkFn, p.hostMul(p.hostMul(splitN, p.hostIndex(numHeads)), chunks),
           chunkArgs);

  SmallVector<Value> mergeArgs = {positions, kCache, q, part};
  auto merge = p.kernel(
      "attention_merge", key, mergeArgs,
      [&](KernelBody &k, Value th, ValueRange args) {
        Value t, qBase, kvBase;
        headOf(k, th, t, qBase, kvBase);
        Value pos = k.load(args[0], {t});
        Value qm = args[2], pm = args[3];
        Value numChunks = k.dim(pm, 1);
        ifValidToken(k, pos, args[1], qm, t, qBase, [&] {
          // An empty chunk stored a sum of 0, any other one of at least 1
          // (its scores less their max), or NaN, which must reach the
          // output as in prefill: unordered-or-unequal.
          auto used = [&](Value chunk) {
            return arith::CmpFOp::create(
                k.b, arith::CmpFPredicate::UNE,
                k.load(pm, {th, chunk, k.index(headDim + 1)}), k.f32(0.0));
          };
          Value negInf = arith::ConstantFloatOp::create(
              k.b, k.b.getF32Type(),
              APFloat::getInf(APFloat::IEEEsingle(), /*Negative=*/true));
          Value max = k.reduce(
              k.index(0), numChunks, negInf, [&](Value chunk, Value m) {
                Value cm = k.load(pm, {th, chunk, k.index(headDim)});
                Value bigger = arith::MaximumFOp::create(k.b, m, cm);
                return arith::SelectOp::create(k.b, used(chunk), bigger, m)
                    .getResult();
              });
          // acc + exp(m_chunk - max) * part[chunk][slot] over the used
          // chunks (an empty chunk's values were never written).
          auto mergeSlot = [&](int64_t slotOffset, Value slot) {
            return k.reduce(
                k.index(0), numChunks, k.f32(0.0), [&](Value chunk, Value acc) {
                  return k.select(
                      used(chunk),
                      [&]() -> Value {
                        Value w = math::ExpOp::create(
                            k.b,
                            k.fsub(k.load(pm, {th, chunk, k.index(headDim)}),
                                   max));
                        Value v = k.load(
                            pm, {th, chunk, k.add(slot, k.index(slotOffset))});
                        return k.fadd(acc, k.fmul(w, v));
                      },
                      [&]() -> Value { return acc; });
                });
          };
          Value sum = mergeSlot(headDim + 1, k.index(0));
          k.forEach(k.index(0), k.index(headDim), [&](Value c) {
            k.store(k.fdiv(mergeSlot(0, c), sum), qm, {t, k.add(qBase, c)});
          });
        });
      });
  p.launch(merge, p.hostMul(splitN, p.hostIndex(numHeads)), mergeArgs);
  p.release(part);

  // out = heads wo^T.
  emitRowsDotWeights(p, "attention_out", q, wo, out, d, qWidth);
  p.release(q);
  addBias("attention_bias", out, oBias, d);
  return success();
}

/// The LM-head exit test sums its softmax over chunks of about sqrt(vocab)
/// logits (a power of two from 32 to 1024), so that the chunk pass (a
/// thread per token and chunk) and the merge (a thread per token) each take
/// about sqrt(vocab) steps.
int64_t lmExitChunk(int64_t vocab) {
  int64_t chunk = 32;
  while (chunk < 1024 && chunk * chunk < vocab)
    chunk *= 2;
  return chunk;
}

LogicalResult emitExitTestLm(GPUProgram &p, StringRef name, ArrayRef<Value> a,
                             Operation *) {
  // p = softmax(lm_head(norm(h))); exit when max p >= tau (max_prob) or the
  // entropy in nats <= tau; a non-finite value never exits. The
  // distribution's sums are in double, as on the CPU.
  int64_t normKind, criterion;
  double eps, tau;
  if (failed(p.requireInt(name, a[2], normKind)) ||
      failed(p.requireFloat(name, a[3], eps)) ||
      failed(p.requireInt(name, a[6], criterion)) ||
      failed(p.requireFloat(name, a[7], tau)))
    return failure();
  Value h = a[0], norm = a[1], lmHead = a[4], exits = a[5];
  int64_t d = shapeOf(h)[1], vocab = shapeOf(lmHead)[0];
  std::string key;
  llvm::raw_string_ostream(key)
      << normKind << "," << eps << "," << criterion << "," << tau;
  Value n = p.hostDim(h, 0);
  Type f32 = p.host().getF32Type(), f64Type = p.host().getF64Type();
  int64_t dyn = ShapedType::kDynamic;

  // The logits: the norm a thread per token, then the LM head's GEMM with
  // f32 activations (no tensor cores), as the CPU computes them, since a
  // threshold decides.
  Value input = h;
  if (normKind) {
    input = p.scratch(MemRefType::get({dyn, d}, f32), {n});
    SmallVector<Value> normArgs = {h, norm, input};
    auto normFn = p.kernel("exit_lm_norm", key, normArgs,
                           [&](KernelBody &k, Value t, ValueRange args) {
                             Value rms =
                                 rmsOf(k, args[0], t, k.index(0), d, eps);
                             k.forEach(k.index(0), k.index(d), [&](Value c) {
                               Value x = k.fdiv(k.load(args[0], {t, c}), rms);
                               if (normKind == 1)
                                 x = k.fmul(x, k.load(args[1], {c}));
                               k.store(x, args[2], {t, c});
                             });
                           });
    p.launch(normFn, n, normArgs);
  }
  Value logits = p.scratch(MemRefType::get({dyn, vocab}, f32), {n});
  emitRowsDotWeights(p, "exit_lm_logits", input, lmHead, logits, vocab, d,
                     /*tensorCores=*/false);
  if (normKind)
    p.release(input);

  // Per (token, chunk): the chunk's max logit m, s = sum exp(x - m) and
  // w = sum exp(x - m) (x - m). A chunk of -inf logits has no mass (its
  // x - m are NaN); a NaN or +inf logit makes them NaN, which never exits.
  int64_t chunk = lmExitChunk(vocab);
  int64_t numChunks = (vocab + chunk - 1) / chunk;
  Value stats = p.scratch(MemRefType::get({dyn, numChunks, 3}, f64Type), {n});
  SmallVector<Value> chunkArgs = {logits, stats};
  auto chunkFn = p.kernel(
      "exit_lm_chunk", key, chunkArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        ImplicitLocOpBuilder &b = k.b;
        Value t = k.div(gid, k.index(numChunks));
        Value c = k.rem(gid, k.index(numChunks));
        Value first = k.mul(c, k.index(chunk));
        Value end = arith::MinUIOp::create(b, k.add(first, k.index(chunk)),
                                           k.index(vocab));
        auto logitAt = [&](Value v) {
          return arith::ExtFOp::create(b, f64Type, k.load(args[0], {t, v}))
              .getResult();
        };
        Value max =
            k.reduce(k.add(first, k.index(1)), end, logitAt(first),
                     [&](Value v, Value m) -> Value {
                       return arith::MaximumFOp::create(b, m, logitAt(v));
                     });
        SmallVector<Value> sums = k.reduceAll(
            first, end, {f64(k, 0.0), f64(k, 0.0)},
            [&](Value v, ValueRange acc) -> SmallVector<Value> {
              Value x = arith::SubFOp::create(b, logitAt(v), max);
              Value e = math::ExpOp::create(b, x);
              return {arith::AddFOp::create(b, acc[0], e),
                      arith::AddFOp::create(b, acc[1],
                                            arith::MulFOp::create(b, e, x))};
            });
        Value empty = arith::CmpFOp::create(
            b, arith::CmpFPredicate::OEQ, max,
            arith::ConstantFloatOp::create(
                b, b.getF64Type(),
                APFloat::getInf(APFloat::IEEEdouble(), /*Negative=*/true)));
        k.store(max, args[1], {t, c, k.index(0)});
        for (int64_t i = 0; i < 2; ++i)
          k.store(arith::SelectOp::create(b, empty, f64(k, 0.0), sums[i]),
                  args[1], {t, c, k.index(i + 1)});
      });
  p.launch(chunkFn, p.hostMul(n, p.hostIndex(numChunks)), chunkArgs);
  p.release(logits);

  // Per token, with M the largest chunk max: S = sum e^(m - M) s and
  // W = sum e^(m - M) (w + (m - M) s) over the chunks with mass, so that
  // max p = 1 / S and the entropy is log S - W / S.
  SmallVector<Value> testArgs = {stats, exits};
  auto test = p.kernel(
      "exit_lm_test", key, testArgs,
      [&](KernelBody &k, Value t, ValueRange args) {
        ImplicitLocOpBuilder &b = k.b;
        auto statAt = [&](Value c, int64_t i) {
          return k.load(args[0], {t, c, k.index(i)});
        };
        Value max =
            k.reduce(k.index(1), k.index(numChunks), statAt(k.index(0), 0),
                     [&](Value c, Value m) -> Value {
                       return arith::MaximumFOp::create(b, m, statAt(c, 0));
                     });
        SmallVector<Value> sums = k.reduceAll(
            k.index(0), k.index(numChunks), {f64(k, 0.0), f64(k, 0.0)},
            [&](Value c, ValueRange acc) -> SmallVector<Value> {
              // A chunk has mass >= 1 (its max gives exp(0)), none (its
              // terms would be NaN: -inf times 0), or NaN, which must reach
              // the result.
              Value s = statAt(c, 1);
              Value hasMass = arith::CmpFOp::create(
                  b, arith::CmpFPredicate::UNE, s, f64(k, 0.0));
              Value shift = arith::SubFOp::create(b, statAt(c, 0), max);
              Value scale = math::ExpOp::create(b, shift);
              Value w = arith::AddFOp::create(
                  b, statAt(c, 2), arith::MulFOp::create(b, shift, s));
              Value sumS = arith::AddFOp::create(
                  b, acc[0], arith::MulFOp::create(b, scale, s));
              Value sumW = arith::AddFOp::create(
                  b, acc[1], arith::MulFOp::create(b, scale, w));
              return {arith::SelectOp::create(b, hasMass, sumS, acc[0]),
                      arith::SelectOp::create(b, hasMass, sumW, acc[1])};
            });
        Value value;
        if (criterion == 2)
          value = arith::DivFOp::create(b, f64(k, 1.0), sums[0]);
        else
          value =
              arith::SubFOp::create(b, math::LogOp::create(b, sums[0]),
                                    arith::DivFOp::create(b, sums[1], sums[0]));
        Value finite = arith::CmpFOp::create(
            b, arith::CmpFPredicate::OEQ,
            arith::SubFOp::create(b, value, value), f64(k, 0.0));
        Value pass =
            arith::CmpFOp::create(b,
                                  criterion == 2 ? arith::CmpFPredicate::OGE
                                                 : arith::CmpFPredicate::OLE,
                                  value, f64(k, tau));
        Value exit = arith::AndIOp::create(b, finite, pass);
        k.store(arith::ExtUIOp::create(b, b.getI8Type(), exit), args[1], {t});
      });
  p.launch(test, n, testArgs);
  p.release(stats);
  return success();
}
} // namespace

void mlir::moe::gpu_lowering::addDecoderKernelEmitters(
    llvm::StringMap<KernelEmitter> &emitters) {
  emitters["moert_embed"] = emitEmbed;
  emitters["moert_unembed"] = emitUnembed;
  emitters["moert_attention"] = emitAttention;
  emitters["moert_mlp"] = emitMlp;
  emitters["moert_exit_test_lm"] = emitExitTestLm;
}
