//===- ConvertMoEToGPU.cpp - moe model to GPU kernels and launches --------===//
//
// The GPU backend runs the host program that convert-moe-to-cpu builds
// (KernelProgram.h): the same buffers, pass loop, token compaction and
// routing trace. Each `moert_*` kernel call becomes one or more launches of
// kernels generated here and specialised for that call: static shapes (d, f,
// E, k), activation, scoring, tiles and thresholds are constants of the
// kernel. Buffers become device allocations and all work is queued on one
// stream; the host waits only where it reads a result (the number of tokens
// still active after an exit test) and at the end.
//
// The kernels are one-dimensional grids of independent threads: a thread per
// output element or per token, with serial loops over the reduction. They use
// no shared memory, barriers or warp shuffles, which keeps them checkable on
// the CPU (moe-emulate-gpu runs every thread in turn). Atomics order plan
// rows within an expert segment arbitrarily; every row is computed by the
// same code from the same inputs, so results do not depend on that order.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/KernelProgram.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/StringMap.h"

#include <cmath>

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETOGPU
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
constexpr int64_t kThreadsPerBlock = 256;
constexpr StringLiteral kKernelModule = "moe_kernels";

/// Helpers for writing a kernel body: index and float arithmetic, loads,
/// stores and structured loops at the builder's insertion point.
class KernelBody {
public:
  explicit KernelBody(ImplicitLocOpBuilder &b) : b(b) {}

  Value index(int64_t v) { return arith::ConstantIndexOp::create(b, v); }
  Value f32(double v) {
    return arith::ConstantFloatOp::create(b, b.getF32Type(),
                                          APFloat(static_cast<float>(v)));
  }
  Value i32(int64_t v) { return arith::ConstantIntOp::create(b, v, 32); }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, x, y); }
  Value div(Value x, Value y) { return arith::DivUIOp::create(b, x, y); }
  Value rem(Value x, Value y) { return arith::RemUIOp::create(b, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, x, y); }
  Value fdiv(Value x, Value y) { return arith::DivFOp::create(b, x, y); }
  Value fsub(Value x, Value y) { return arith::SubFOp::create(b, x, y); }
  Value toIndex(Value v) {
    return arith::IndexCastOp::create(b, b.getIndexType(), v);
  }
  Value toI32(Value v) {
    return arith::IndexCastOp::create(b, b.getI32Type(), v);
  }
  Value cmp(arith::CmpIPredicate p, Value x, Value y) {
    return arith::CmpIOp::create(b, p, x, y);
  }
  Value load(Value memref, ValueRange indices) {
    return memref::LoadOp::create(b, memref, indices);
  }
  void store(Value v, Value memref, ValueRange indices) {
    memref::StoreOp::create(b, v, memref, indices);
  }
  Value dim(Value memref, int64_t i) {
    auto type = cast<MemRefType>(memref.getType());
    if (!type.isDynamicDim(i))
      return index(type.getDimSize(i));
    return memref::DimOp::create(b, memref, i);
  }
  /// 1 / (1 + exp(-z)).
  Value sigmoid(Value z) {
    Value e = math::ExpOp::create(b, arith::NegFOp::create(b, z));
    return fdiv(f32(1.0), fadd(f32(1.0), e));
  }
  /// Whether `x` is neither infinite nor NaN: x - x is 0 exactly then.
  Value isFinite(Value x) {
    return arith::CmpFOp::create(b, arith::CmpFPredicate::OEQ, fsub(x, x),
                                 f32(0.0));
  }

  /// for (i = lb; i < ub; ++i) body(i).
  void forEach(Value lb, Value ub, function_ref<void(Value)> body) {
    auto loop = scf::ForOp::create(b, lb, ub, index(1));
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPoint(loop.getBody()->getTerminator());
    body(loop.getInductionVar());
  }
  /// acc = init; for (i = lb; i < ub; ++i) acc = body(i, acc); returns acc.
  Value reduce(Value lb, Value ub, Value init,
               function_ref<Value(Value, Value)> body) {
    auto loop = scf::ForOp::create(
        b, lb, ub, index(1), ValueRange{init},
        [&](OpBuilder &nested, Location, Value iv, ValueRange args) {
          OpBuilder::InsertionGuard guard(b);
          b.setInsertionPoint(nested.getInsertionBlock(),
                              nested.getInsertionPoint());
          scf::YieldOp::create(b, body(iv, args[0]));
        });
    return loop.getResult(0);
  }
  /// Like reduce, with several accumulators.
  SmallVector<Value> reduceAll(Value lb, Value ub, ValueRange inits,
                               function_ref<SmallVector<Value>(Value,
                                                               ValueRange)>
                                   body) {
    auto loop = scf::ForOp::create(
        b, lb, ub, index(1), inits,
        [&](OpBuilder &nested, Location, Value iv, ValueRange args) {
          OpBuilder::InsertionGuard guard(b);
          b.setInsertionPoint(nested.getInsertionBlock(),
                              nested.getInsertionPoint());
          scf::YieldOp::create(b, body(iv, args));
        });
    return SmallVector<Value>(loop.getResults());
  }
  void ifThen(Value cond, function_ref<void()> then) {
    auto op = scf::IfOp::create(b, cond, /*withElseRegion=*/false);
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPoint(op.thenBlock()->getTerminator());
    then();
  }
  /// cond ? then() : otherwise(), each evaluated only when taken.
  Value select(Value cond, function_ref<Value()> then,
               function_ref<Value()> otherwise) {
    auto branch = [&](function_ref<Value()> fn) {
      return [&, fn](OpBuilder &nested, Location) {
        OpBuilder::InsertionGuard guard(b);
        b.setInsertionPoint(nested.getInsertionBlock(),
                            nested.getInsertionPoint());
        scf::YieldOp::create(b, fn());
      };
    };
    return scf::IfOp::create(b, cond, branch(then), branch(otherwise))
        .getResult(0);
  }
  /// sum over i < n of a[aRow, i] * w[wIndex..., i], in order.
  Value dot(Value a, ValueRange aRow, Value w, ValueRange wRow, Value n) {
    return reduce(index(0), n, f32(0.0), [&](Value i, Value acc) {
      SmallVector<Value> ai(aRow), wi(wRow);
      ai.push_back(i);
      wi.push_back(i);
      return arith::AddFOp::create(
          b, acc, arith::MulFOp::create(b, load(a, ai), load(w, wi)));
    });
  }

  ImplicitLocOpBuilder &b;
};

/// The constant integer or float behind a call operand.
std::optional<int64_t> constantInt(Value v) {
  APInt value;
  if (matchPattern(v, m_ConstantInt(&value)))
    return value.getSExtValue();
  return std::nullopt;
}
std::optional<double> constantFloat(Value v) {
  FloatAttr attr;
  if (matchPattern(v, m_Constant(&attr)))
    return attr.getValueAsDouble();
  return std::nullopt;
}

/// Rewrites the host program of one function: kernel calls to launches,
/// buffers to device allocations, on one stream.
class GPUProgram {
public:
  GPUProgram(ModuleOp module, gpu::GPUModuleOp kernelModule)
      : module(module), kernelModule(kernelModule),
        host(module.getContext()) {}

  LogicalResult rewrite(func::FuncOp func);

private:
  using BodyFn = function_ref<void(KernelBody &, Value gid, ValueRange args)>;

  LogicalResult rewriteBlock(Block &block);
  LogicalResult rewriteCall(func::CallOp call);
  LogicalResult rewriteKernelCall(func::CallOp call, StringRef kernel,
                                  SmallVector<Value> args);

  /// The kernel `base` specialised for `args`' types and `key` (its baked-in
  /// constants), created on first use: (n: index, args...), one thread per
  /// gid < n.
  gpu::GPUFuncOp kernel(StringRef base, StringRef key, ValueRange args,
                        BodyFn body);
  /// Launches `fn` over `n` threads on the stream.
  void launch(gpu::GPUFuncOp fn, Value n, ValueRange args);
  /// A device buffer for the duration of one call.
  Value scratch(MemRefType type, ValueRange sizes);
  void release(Value buffer);
  /// The stream's latest token, starting a stream if none is open.
  Value stream();
  /// Waits for the stream; the host may read results after it.
  void sync();

  Value hostIndex(int64_t v) {
    return arith::ConstantIndexOp::create(host, loc, v);
  }
  Value hostMul(Value x, Value y) {
    return arith::MulIOp::create(host, loc, x, y);
  }
  Value hostDim(Value memref, int64_t i) {
    return memref::DimOp::create(host, loc, memref, i);
  }
  Value hostNumElements(Value memref) {
    auto type = cast<MemRefType>(memref.getType());
    Value n = hostIndex(1);
    for (int64_t i = 0; i < type.getRank(); ++i)
      n = hostMul(n, hostDim(memref, i));
    return n;
  }

  ModuleOp module;
  gpu::GPUModuleOp kernelModule;
  OpBuilder host;
  Location loc = host.getUnknownLoc();
  Value token;
  Block *entryBlock = nullptr;
  llvm::StringMap<gpu::GPUFuncOp> kernels;
  unsigned kernelCount = 0;
};
} // namespace

Value GPUProgram::stream() {
  if (!token)
    token = gpu::WaitOp::create(host, loc, host.getType<gpu::AsyncTokenType>(),
                                {})
                .getAsyncToken();
  return token;
}

void GPUProgram::sync() {
  if (!token)
    return;
  gpu::WaitOp::create(host, loc, Type(), {token});
  token = Value();
}

Value GPUProgram::scratch(MemRefType type, ValueRange sizes) {
  auto alloc =
      gpu::AllocOp::create(host, loc, type, host.getType<gpu::AsyncTokenType>(),
                           {stream()}, sizes, {});
  token = alloc.getAsyncToken();
  return alloc.getMemref();
}

void GPUProgram::release(Value buffer) {
  token = gpu::DeallocOp::create(host, loc,
                                 host.getType<gpu::AsyncTokenType>(),
                                 {stream()}, buffer)
              .getAsyncToken();
}

gpu::GPUFuncOp GPUProgram::kernel(StringRef base, StringRef key,
                                  ValueRange args, BodyFn body) {
  std::string signature;
  llvm::raw_string_ostream os(signature);
  os << base << "(" << key << ")";
  for (Value arg : args)
    os << ", " << arg.getType();
  auto found = kernels.find(signature);
  if (found != kernels.end())
    return found->second;

  SmallVector<Type> types = {host.getIndexType()};
  for (Value arg : args)
    types.push_back(arg.getType());
  OpBuilder::InsertionGuard guard(host);
  host.setInsertionPointToEnd(kernelModule.getBody());
  ImplicitLocOpBuilder b(loc, host);
  auto fn = gpu::GPUFuncOp::create(
      b, (base + "_" + Twine(kernelCount++)).str(),
      host.getFunctionType(types, {}));
  fn->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), host.getUnitAttr());
  fn->setAttr("moe.signature", host.getStringAttr(signature));
  b.setInsertionPointToStart(&fn.getBody().front());
  KernelBody k(b);
  Value gid = k.add(k.mul(gpu::BlockIdOp::create(b, gpu::Dimension::x),
                          gpu::BlockDimOp::create(b, gpu::Dimension::x)),
                    gpu::ThreadIdOp::create(b, gpu::Dimension::x));
  Value n = fn.getArgument(0);
  k.ifThen(k.cmp(arith::CmpIPredicate::ult, gid, n),
           [&] { body(k, gid, fn.getArguments().drop_front()); });
  gpu::ReturnOp::create(b);
  kernels[signature] = fn;
  return fn;
}

void GPUProgram::launch(gpu::GPUFuncOp fn, Value n, ValueRange args) {
  // ceil(n / threads), at least one block: an empty grid is a launch error.
  Value threads = hostIndex(kThreadsPerBlock);
  Value blocks = arith::DivUIOp::create(
      host, loc,
      arith::AddIOp::create(host, loc, n, hostIndex(kThreadsPerBlock - 1)),
      threads);
  blocks = arith::MaxUIOp::create(host, loc, blocks, hostIndex(1));
  Value one = hostIndex(1);
  SmallVector<Value> operands = {n};
  llvm::append_range(operands, args);
  auto op = gpu::LaunchFuncOp::create(
      host, loc, fn, {blocks, one, one}, {threads, one, one}, Value(),
      operands, host.getType<gpu::AsyncTokenType>(), {stream()});
  token = op.getAsyncToken();
}

LogicalResult GPUProgram::rewrite(func::FuncOp func) {
  loc = func.getLoc();
  entryBlock = &func.getBody().front();
  return rewriteBlock(*entryBlock);
}

LogicalResult GPUProgram::rewriteBlock(Block &block) {
  token = Value();
  for (Operation &op : llvm::make_early_inc_range(block)) {
    host.setInsertionPoint(&op);
    if (auto call = dyn_cast<func::CallOp>(op)) {
      if (failed(rewriteCall(call)))
        return failure();
      continue;
    }
    if (auto alloc = dyn_cast<memref::AllocOp>(op)) {
      Value buffer = scratch(alloc.getType(), alloc.getDynamicSizes());
      alloc.replaceAllUsesWith(buffer);
      alloc.erase();
      continue;
    }
    if (auto dealloc = dyn_cast<memref::DeallocOp>(op)) {
      release(dealloc.getMemref());
      dealloc.erase();
      continue;
    }
    if (auto copy = dyn_cast<memref::CopyOp>(op)) {
      if (failed(rewriteKernelCall(nullptr, "moert_copy",
                                   {copy.getSource(), copy.getTarget()})))
        return failure();
      copy.erase();
      continue;
    }
    if (op.getNumRegions() || op.hasTrait<OpTrait::IsTerminator>()) {
      // Nested blocks start streams of their own; the host continues only
      // after the work queued before them.
      sync();
      for (Region &region : op.getRegions())
        for (Block &nested : region)
          if (failed(rewriteBlock(nested)))
            return failure();
      token = Value();
    }
  }
  return success();
}

LogicalResult GPUProgram::rewriteCall(func::CallOp call) {
  SmallVector<Value> args;
  for (Value v : call.getOperands()) {
    // The CPU kernels take fully dynamic views; the GPU kernels are
    // specialised for the static types behind the casts.
    if (auto cast = v.getDefiningOp<memref::CastOp>())
      v = cast.getSource();
    args.push_back(v);
  }
  if (failed(rewriteKernelCall(call, call.getCallee(), args)))
    return failure();
  call.erase();
  return success();
}

LogicalResult GPUProgram::rewriteKernelCall(func::CallOp call,
                                            StringRef name,
                                            SmallVector<Value> a) {
  auto requireInt = [&](Value v, int64_t &out) -> LogicalResult {
    std::optional<int64_t> c = constantInt(v);
    if (!c)
      return emitError(loc, "convert-moe-to-gpu: ")
             << name << " needs a constant parameter";
    out = *c;
    return success();
  };
  auto requireFloat = [&](Value v, double &out) -> LogicalResult {
    std::optional<double> c = constantFloat(v);
    if (!c)
      return emitError(loc, "convert-moe-to-gpu: ")
             << name << " needs a constant parameter";
    out = *c;
    return success();
  };
  auto shapeOf = [](Value v) {
    return cast<MemRefType>(v.getType()).getShape();
  };
  std::string key;
  llvm::raw_string_ostream keyOs(key);

  if (name == "moert_copy") {
    // dst[i...] = src[i...], any rank.
    Value src = a[0], dst = a[1];
    int64_t rank = cast<MemRefType>(dst.getType()).getRank();
    auto fn = kernel("copy", "", {src, dst},
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
    launch(fn, hostNumElements(dst), {src, dst});
    return success();
  }

  if (name == "moert_rms_norm") {
    // One thread per token row: out = x / sqrt(mean(x^2) + eps) * w.
    double eps;
    if (failed(requireFloat(a[3], eps)))
      return failure();
    keyOs << eps;
    int64_t d = shapeOf(a[0])[1];
    // An empty weight is a norm without gain (LoopLM).
    bool gain = shapeOf(a[1])[0] != 0;
    auto fn = kernel("rms_norm", key, {a[0], a[1], a[2]},
                     [&](KernelBody &k, Value t, ValueRange args) {
                       Value x = args[0], w = args[1], out = args[2];
                       Value n = k.index(d);
                       Value ss = k.dot(x, {t}, x, {t}, n);
                       Value rms = math::SqrtOp::create(
                           k.b, k.fadd(k.fdiv(ss, k.f32(double(d))),
                                       k.f32(eps)));
                       k.forEach(k.index(0), n, [&](Value i) {
                         Value v = k.fdiv(k.load(x, {t, i}), rms);
                         if (gain)
                           v = k.fmul(v, k.load(w, {i}));
                         k.store(v, out, {t, i});
                       });
                     });
    launch(fn, hostDim(a[0], 0), {a[0], a[1], a[2]});
    return success();
  }

  if (name == "moert_route") {
    // One thread per token: logits, softmax or sigmoid, top-k (ties: the
    // lower expert), optional renormalisation and scaling.
    int64_t scoring, normalize;
    double scaling;
    if (failed(requireInt(a[4], scoring)) ||
        failed(requireInt(a[5], normalize)) ||
        failed(requireFloat(a[6], scaling)))
      return failure();
    keyOs << scoring << "," << normalize << "," << scaling;
    int64_t d = shapeOf(a[0])[1], e = shapeOf(a[1])[0], topK = shapeOf(a[2])[1];
    auto fn = kernel("route", key, {a[0], a[1], a[2], a[3]},
                     [&](KernelBody &k, Value t, ValueRange args) {
      ImplicitLocOpBuilder &b = k.b;
      Value x = args[0], w = args[1], ids = args[2], gates = args[3];
      Value numE = k.index(e), zero = k.index(0);
      auto probs = memref::AllocaOp::create(
          b, MemRefType::get({e}, b.getF32Type()));
      auto taken = memref::AllocaOp::create(
          b, MemRefType::get({e}, b.getI32Type()));
      k.forEach(zero, numE, [&](Value i) {
        k.store(k.dot(x, {t}, w, {i}, k.index(d)), probs, {i});
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
      Value total = k.reduce(
          zero, k.index(topK), k.f32(0.0), [&](Value j, Value sum) {
            Value best = k.reduce(zero, numE, noBest, [&](Value i, Value best) {
              Value free = k.cmp(arith::CmpIPredicate::eq,
                                 k.load(taken, {i}), k.i32(0));
              Value none = k.cmp(arith::CmpIPredicate::eq, best, noBest);
              Value bestP = k.load(
                  probs, {arith::MaxSIOp::create(b, best, zero).getResult()});
              Value greater = arith::CmpFOp::create(
                  b, arith::CmpFPredicate::OGT, k.load(probs, {i}), bestP);
              Value better = arith::AndIOp::create(
                  b, free, arith::OrIOp::create(b, none, greater));
              return arith::SelectOp::create(b, better, i, best).getResult();
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
    launch(fn, hostDim(a[0], 0), {a[0], a[1], a[2], a[3]});
    return success();
  }

  if (name == "moert_plan") {
    // Histogram, scan and scatter of the slots by expert (see
    // moert/CpuPlanKernels.h for the layout); `cursor` counts, then hands
    // out each segment's rows.
    int64_t tile;
    if (failed(requireInt(a[4], tile)))
      return failure();
    keyOs << tile;
    Value ids = a[0], offsets = a[1], rowToken = a[2], slotRow = a[3];
    int64_t e = shapeOf(offsets)[0] - 1, topK = shapeOf(ids)[1];
    Value cursor = scratch(MemRefType::get({e}, host.getI32Type()), {});
    Value rows = hostDim(rowToken, 0);
    auto init = kernel("plan_init", key, {rowToken, cursor},
                       [&](KernelBody &k, Value i, ValueRange args) {
                         Value rowCount = k.dim(args[0], 0);
                         Value isRow =
                             k.cmp(arith::CmpIPredicate::ult, i, rowCount);
                         k.ifThen(isRow, [&] {
                           k.store(k.i32(-1), args[0], {i});
                         });
                         k.ifThen(k.cmp(arith::CmpIPredicate::uge, i,
                                        rowCount),
                                  [&] {
                                    Value expert =
                                        arith::SubIOp::create(k.b, i, rowCount);
                                    k.store(k.i32(0), args[1], {expert});
                                  });
                       });
    launch(init, arith::AddIOp::create(host, loc, rows, hostIndex(e)),
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
    Value slots = hostMul(hostDim(ids, 0), hostIndex(topK));
    auto count = kernel(
        "plan_count", key, {ids, slotRow, cursor},
        [&](KernelBody &k, Value s, ValueRange args) {
          Value t, j, expert;
          Value valid = slotExpert(k, args[0], s, t, j, expert);
          auto op = scf::IfOp::create(k.b, valid, /*withElseRegion=*/true);
          {
            OpBuilder::InsertionGuard guard(k.b);
            k.b.setInsertionPoint(op.thenBlock()->getTerminator());
            memref::AtomicRMWOp::create(k.b, arith::AtomicRMWKind::addi,
                                        k.i32(1), args[2], ValueRange{expert});
            k.b.setInsertionPoint(op.elseBlock()->getTerminator());
            k.store(k.i32(-1), args[1], {t, j});
          }
        });
    launch(count, slots, {ids, slotRow, cursor});
    auto scan = kernel("plan_scan", key, {offsets, cursor},
                       [&](KernelBody &k, Value, ValueRange args) {
                         Value t32 = k.i32(tile);
                         Value end = k.reduce(
                             k.index(0), k.index(e), k.i32(0),
                             [&](Value i, Value acc) -> Value {
                               k.store(acc, args[0], {i});
                               Value c = k.load(args[1], {i});
                               k.store(acc, args[1], {i});
                               Value tiles = arith::CeilDivSIOp::create(
                                   k.b, c, t32);
                               return arith::AddIOp::create(
                                   k.b, acc,
                                   arith::MulIOp::create(k.b, tiles, t32));
                             });
                         k.store(end, args[0], {k.index(e)});
                       });
    launch(scan, hostIndex(1), {offsets, cursor});
    auto scatter = kernel(
        "plan_scatter", key, {ids, rowToken, slotRow, cursor},
        [&](KernelBody &k, Value s, ValueRange args) {
          Value t, j, expert;
          Value valid = slotExpert(k, args[0], s, t, j, expert);
          k.ifThen(valid, [&] {
            Value row = memref::AtomicRMWOp::create(
                k.b, arith::AtomicRMWKind::addi, k.i32(1), args[3],
                ValueRange{expert});
            k.store(k.toI32(t), args[1], {k.toIndex(row)});
            k.store(row, args[2], {t, j});
          });
        });
    launch(scatter, slots, {ids, rowToken, slotRow, cursor});
    release(cursor);
    return success();
  }

  if (name == "moert_fused_experts") {
    // Per plan row r of expert e with token t: h[r] = act(Wg_e x_t) *
    // (Wu_e x_t), y[r] = Wd_e h[r] (padding rows skipped); then per token
    // out[t] = sum over ascending j of gates[t, j] * y[slotRow[t, j]].
    int64_t act;
    if (failed(requireInt(a[9], act)))
      return failure();
    keyOs << act;
    Value x = a[0], rowToken = a[1], offsets = a[2], slotRow = a[3],
          gates = a[4], wg = a[5], wu = a[6], wd = a[7], out = a[8];
    ArrayRef<int64_t> wShape = shapeOf(wg);
    int64_t e = wShape[0], f = wShape[1], d = wShape[2];
    int64_t topK = shapeOf(slotRow)[1];
    Value rows = hostDim(rowToken, 0);
    Type f32 = host.getF32Type();
    int64_t dyn = ShapedType::kDynamic;
    Value h = scratch(MemRefType::get({dyn, f}, f32), {rows});
    Value y = scratch(MemRefType::get({dyn, d}, f32), {rows});
    // The expert whose segment holds row r: the number of segments that end
    // at or before r.
    auto expertOf = [&](KernelBody &k, Value offs, Value r) {
      Value r32 = k.toI32(r);
      return k.reduce(k.index(0), k.index(e), k.index(0),
                      [&](Value i, Value acc) -> Value {
                        Value end = k.load(offs, {k.add(i, k.index(1))});
                        Value before =
                            k.cmp(arith::CmpIPredicate::sle, end, r32);
                        return arith::SelectOp::create(
                            k.b, before, k.add(acc, k.index(1)), acc);
                      });
    };
    auto up = kernel(
        "experts_gate_up", key, {x, rowToken, offsets, wg, wu, h},
        [&](KernelBody &k, Value gid, ValueRange args) {
          Value r = k.div(gid, k.index(f)), c = k.rem(gid, k.index(f));
          Value tok = k.load(args[1], {r});
          k.ifThen(k.cmp(arith::CmpIPredicate::sge, tok, k.i32(0)), [&] {
            Value t = k.toIndex(tok);
            Value ex = expertOf(k, args[2], r);
            Value zero = k.f32(0.0);
            SmallVector<Value> gu = k.reduceAll(
                k.index(0), k.index(d), {zero, zero},
                [&](Value i, ValueRange acc) -> SmallVector<Value> {
                  Value xv = k.load(args[0], {t, i});
                  return {k.fadd(acc[0],
                                 k.fmul(xv, k.load(args[3], {ex, c, i}))),
                          k.fadd(acc[1],
                                 k.fmul(xv, k.load(args[4], {ex, c, i})))};
                });
            Value g = gu[0], z = g;
            if (act == 1) {
              // tanh GELU as x * sigmoid(2y), y = sqrt(2/pi)(x + 0.044715x^3)
              Value cube = k.fmul(k.fmul(g, g), g);
              z = k.fmul(k.f32(2.0 * std::sqrt(2.0 / M_PI)),
                         k.fadd(g, k.fmul(k.f32(0.044715), cube)));
            }
            k.store(k.fmul(k.fmul(g, k.sigmoid(z)), gu[1]), args[5], {r, c});
          });
        });
    launch(up, hostMul(rows, hostIndex(f)), {x, rowToken, offsets, wg, wu, h});
    auto down = kernel(
        "experts_down", key, {h, rowToken, offsets, wd, y},
        [&](KernelBody &k, Value gid, ValueRange args) {
          Value r = k.div(gid, k.index(d)), c = k.rem(gid, k.index(d));
          Value tok = k.load(args[1], {r});
          k.ifThen(k.cmp(arith::CmpIPredicate::sge, tok, k.i32(0)), [&] {
            Value ex = expertOf(k, args[2], r);
            k.store(k.dot(args[0], {r}, args[3], {ex, c}, k.index(f)),
                    args[4], {r, c});
          });
        });
    launch(down, hostMul(rows, hostIndex(d)), {h, rowToken, offsets, wd, y});
    auto combine = kernel(
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
                      return k.fadd(acc,
                                    k.fmul(k.load(args[2], {t, j}), v));
                    },
                    [&]() -> Value { return acc; });
              });
          k.store(sum, args[3], {t, c});
        });
    launch(combine, hostMul(hostDim(out, 0), hostIndex(d)),
           {y, slotRow, gates, out});
    release(h);
    release(y);
    return success();
  }

  if (name == "moert_add") {
    int64_t d = shapeOf(a[2])[1];
    auto fn = kernel("add", "", {a[0], a[1], a[2]},
                     [&](KernelBody &k, Value gid, ValueRange args) {
                       Value r = k.div(gid, k.index(d)),
                             c = k.rem(gid, k.index(d));
                       k.store(k.fadd(k.load(args[0], {r, c}),
                                      k.load(args[1], {r, c})),
                               args[2], {r, c});
                     });
    launch(fn, hostMul(hostDim(a[2], 0), hostIndex(d)), {a[0], a[1], a[2]});
    return success();
  }

  if (name == "moert_exit_test") {
    // One thread per token: cosine(h, prev) >= tau or |h - prev| / |h| <=
    // tau; a non-finite measure never exits.
    int64_t criterion;
    double tau;
    if (failed(requireInt(a[3], criterion)) ||
        failed(requireFloat(a[4], tau)))
      return failure();
    keyOs << criterion << "," << tau;
    int64_t d = shapeOf(a[0])[1];
    auto fn = kernel(
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
            exit = arith::CmpFOp::create(k.b, arith::CmpFPredicate::OGE,
                                         cosine, k.f32(tau));
            exit = arith::AndIOp::create(k.b, k.isFinite(cosine), exit);
          } else {
            Value relative =
                k.fdiv(math::SqrtOp::create(k.b, sums[3]), hNorm);
            exit = arith::CmpFOp::create(k.b, arith::CmpFPredicate::OLE,
                                         relative, k.f32(tau));
            exit = arith::AndIOp::create(k.b, k.isFinite(relative), exit);
          }
          k.store(arith::ExtUIOp::create(k.b, k.b.getI8Type(), exit), args[2],
                  {t});
        });
    launch(fn, hostDim(a[0], 0), {a[0], a[1], a[2]});
    return success();
  }

  if (name == "moert_loop_init") {
    // active = 0..T-1, exit_loop = passes - 1, trace = -1 / 0.
    int64_t passes;
    if (failed(requireInt(a[4], passes)))
      return failure();
    keyOs << passes;
    auto tokensFn = kernel("loop_init", key, {a[0], a[1]},
                           [&](KernelBody &k, Value t, ValueRange args) {
                             k.store(k.toI32(t), args[0], {t});
                             k.store(k.i32(passes - 1), args[1], {t});
                           });
    launch(tokensFn, hostDim(a[0], 0), {a[0], a[1]});
    auto traceFn = kernel(
        "trace_init", "", {a[2], a[3]},
        [&](KernelBody &k, Value gid, ValueRange args) {
          Value kk = k.dim(args[0], 2), tt = k.dim(args[0], 1);
          Value j = k.rem(gid, kk), rest = k.div(gid, kk);
          Value t = k.rem(rest, tt), s = k.div(rest, tt);
          k.store(k.i32(-1), args[0], {s, t, j});
          k.store(k.f32(0.0), args[1], {s, t, j});
        });
    launch(traceFn, hostNumElements(a[2]), {a[2], a[3]});
    return success();
  }

  if (name == "moert_gather_rows" || name == "moert_scatter_rows") {
    // gather: dst[i] = src[index[i]]; scatter: dst[index[i]] = src[i] (or
    // src[index[i]] when the pass ran on all tokens, byToken).
    bool gather = name == "moert_gather_rows";
    int64_t byToken = 0;
    if (!gather && failed(requireInt(a[3], byToken)))
      return failure();
    keyOs << byToken;
    Value src = a[0], index = a[1], dst = a[2];
    int64_t d = shapeOf(src)[1];
    auto fn = kernel(gather ? "gather_rows" : "scatter_rows", key,
                     {src, index, dst},
                     [&](KernelBody &k, Value gid, ValueRange args) {
                       Value i = k.div(gid, k.index(d)),
                             c = k.rem(gid, k.index(d));
                       Value tok = k.toIndex(k.load(args[1], {i}));
                       Value from = gather || byToken ? tok : i;
                       Value to = gather ? i : tok;
                       k.store(k.load(args[0], {from, c}), args[2], {to, c});
                     });
    launch(fn, hostMul(hostDim(index, 0), hostIndex(d)), {src, index, dst});
    return success();
  }

  if (name == "moert_record_step") {
    int64_t byToken;
    if (failed(requireInt(a[6], byToken)))
      return failure();
    keyOs << byToken;
    int64_t topK = shapeOf(a[0])[1];
    SmallVector<Value> args = {a[0], a[1], a[2], a[3], a[4], a[5]};
    auto fn = kernel(
        "record_step", key, args,
        [&](KernelBody &k, Value gid, ValueRange args) {
          Value i = k.div(gid, k.index(topK)), j = k.rem(gid, k.index(topK));
          Value tok = k.toIndex(k.load(args[2], {i}));
          Value from = byToken ? tok : i;
          Value step = k.toIndex(args[5]);
          k.store(k.load(args[0], {from, j}), args[3], {step, tok, j});
          k.store(k.load(args[1], {from, j}), args[4], {step, tok, j});
        });
    launch(fn, hostMul(hostDim(a[2], 0), hostIndex(topK)), args);
    return success();
  }

  if (name == "moert_exit_update") {
    // One thread compacts the active list in order (exited tokens record
    // the pass); the host reads back how many stay active.
    int64_t minPasses, passes, byToken;
    if (failed(requireInt(a[5], minPasses)) ||
        failed(requireInt(a[6], passes)) || failed(requireInt(a[7], byToken)))
      return failure();
    keyOs << minPasses << "," << passes << "," << byToken;
    Type i64 = host.getI64Type();
    Value kept = scratch(MemRefType::get({1}, i64), {});
    SmallVector<Value> args = {a[0], a[1], a[2], a[3], a[4], kept};
    auto fn = kernel(
        "exit_update", key, args, [&](KernelBody &k, Value, ValueRange args) {
          ImplicitLocOpBuilder &b = k.b;
          Value exits = args[0], active = args[1], exitLoop = args[2];
          Value count = args[3], pass = args[4];
          auto c64 = [&](int64_t v) {
            return arith::ConstantIntOp::create(b, v, 64).getResult();
          };
          Value tooEarly = arith::OrIOp::create(
              b,
              k.cmp(arith::CmpIPredicate::slt,
                    arith::AddIOp::create(b, pass, c64(1)), c64(minPasses)),
              k.cmp(arith::CmpIPredicate::sge, pass, c64(passes - 1)));
          Value result = k.select(
              tooEarly, [&]() -> Value { return count; },
              [&]() -> Value {
                Value pass32 = arith::TruncIOp::create(b, b.getI32Type(), pass);
                Value n = k.reduce(
                    k.index(0), k.toIndex(count), k.index(0),
                    [&](Value i, Value keptSoFar) -> Value {
                      Value tok = k.load(active, {i});
                      Value tokIdx = k.toIndex(tok);
                      Value exited = k.cmp(
                          arith::CmpIPredicate::ne,
                          k.load(exits, {byToken ? tokIdx : i}),
                          arith::ConstantIntOp::create(b, 0, 8));
                      return k.select(
                          exited,
                          [&]() -> Value {
                            k.store(pass32, exitLoop, {tokIdx});
                            return keptSoFar;
                          },
                          [&]() -> Value {
                            k.store(tok, active, {keptSoFar});
                            return k.add(keptSoFar, k.index(1));
                          });
                    });
                return arith::IndexCastOp::create(b, b.getI64Type(), n);
              });
          k.store(result, args[5], {k.index(0)});
        });
    launch(fn, hostIndex(1), args);
    // On the host stack once per function, not per pass.
    Value hostKept;
    {
      OpBuilder::InsertionGuard guard(host);
      host.setInsertionPointToStart(entryBlock);
      hostKept = memref::AllocaOp::create(host, loc, MemRefType::get({1}, i64));
    }
    token = gpu::MemcpyOp::create(host, loc,
                                  host.getType<gpu::AsyncTokenType>(),
                                  {stream()}, hostKept, kept)
                .getAsyncToken();
    release(kept);
    sync();
    Value result = memref::LoadOp::create(host, loc, hostKept,
                                          ValueRange{hostIndex(0)});
    call.getResult(0).replaceAllUsesWith(result);
    return success();
  }

  return emitError(loc, "convert-moe-to-gpu: no GPU kernel for '")
         << name << "' yet";
}

namespace {
struct ConvertMoEToGPUPass
    : public moe::impl::ConvertMoEToGPUBase<ConvertMoEToGPUPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    // Decoders need attention, embedding and LM-head kernels, which the GPU
    // backend does not have yet: say so before lowering anything.
    for (func::FuncOp func : module.getOps<func::FuncOp>())
      if (!func.getOps<EmbedOp>().empty()) {
        func.emitError("convert-moe-to-gpu: decoder models (moe.embed, "
                       "moe.attention) have no GPU kernels yet; compile them "
                       "for the CPU");
        return signalPassFailure();
      }
    // The GPU kernels implement expert groups in fused form only.
    WalkResult unfused = module.walk([](Operation *op) {
      if (!isa<ExpertsOp, DispatchOp, GroupedMatmulOp, GluOp, CombineOp>(op))
        return WalkResult::advance();
      op->emitError("convert-moe-to-gpu needs fused expert groups "
                    "(moe.fused_experts): run moe-decompose-experts and "
                    "moe-fuse-dispatch-gemm first, as moe-cuda-pipeline does");
      return WalkResult::interrupt();
    });
    if (unfused.wasInterrupted())
      return signalPassFailure();
    if (failed(lowerModelsToKernelCalls(module)))
      return signalPassFailure();

    OpBuilder b(module.getContext());
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    b.getUnitAttr());
    b.setInsertionPointToEnd(module.getBody());
    auto kernelModule =
        gpu::GPUModuleOp::create(b, module.getLoc(), kKernelModule);
    GPUProgram program(module, kernelModule);
    for (func::FuncOp func :
         llvm::to_vector(module.getOps<func::FuncOp>())) {
      if (func.isExternal())
        continue;
      if (failed(program.rewrite(func)))
        return signalPassFailure();
    }
    // The CPU kernel declarations and the views cast for them are unused.
    for (func::FuncOp func : llvm::to_vector(module.getOps<func::FuncOp>()))
      if (func.isExternal() && func.symbolKnownUseEmpty(module))
        func.erase();
    module.walk([](memref::CastOp cast) {
      if (cast.use_empty())
        cast.erase();
    });
  }
};
} // namespace
