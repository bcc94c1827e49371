//===- GPUProgram.cpp - the host program on the GPU -----------------------===//
#include "GPUProgram.h"
#include "WarpMma.h"
#include "WarpgroupMma.h"

#include "moe/Conversion/KernelProgram.h"

#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Matchers.h"

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {
/// Threads per block: 256, or 64 for grids of at most 132 * 256 threads (one
/// full block per SM of an H100), which then reach four times as many SMs.
constexpr int64_t kLargeBlock = 256;
constexpr int64_t kSmallBlock = 64;
constexpr int64_t kSmallGridThreads = 132 * 256;
} // namespace

SmallVector<Value>
KernelBody::warpSum(Value lane,
                    function_ref<SmallVector<Value>(Value lane)> shares) {
  constexpr int64_t offsets[] = {16, 8, 4, 2, 1};
  if (!options.emulateWarpOps) {
    SmallVector<Value> sums = shares(lane);
    for (int64_t offset : offsets)
      for (Value &sum : sums) {
        Value other = gpu::ShuffleOp::create(b, sum, offset, kLanes,
                                             gpu::ShuffleMode::XOR)
                          .getShuffleResult();
        sum = fadd(sum, other);
      }
    return sums;
  }
  SmallVector<SmallVector<Value>> lanes;
  for (int64_t l = 0; l < kLanes; ++l)
    lanes.push_back(shares(index(l)));
  for (int64_t offset : offsets) {
    SmallVector<SmallVector<Value>> next;
    for (int64_t l = 0; l < kLanes; ++l) {
      SmallVector<Value> sums;
      for (auto [own, other] : llvm::zip(lanes[l], lanes[l ^ offset]))
        sums.push_back(fadd(own, other));
      next.push_back(sums);
    }
    lanes = std::move(next);
  }
  return lanes[0];
}

Value KernelBody::roundToBF16(Value x) {
  Type f32 = b.getF32Type(), bf16 = b.getBF16Type();
  if (auto vector = dyn_cast<VectorType>(x.getType())) {
    f32 = vector;
    bf16 = VectorType::get(vector.getShape(), bf16);
  }
  Value rounded = arith::TruncFOp::create(b, bf16, x);
  return arith::ExtFOp::create(b, f32, rounded);
}

std::optional<llvm::Align> KernelBody::vectorAlignment(Value memref) {
  // Device buffers start 256-byte aligned (cuMemAlloc), so a vector is
  // 16-byte aligned where the view starts at the buffer's start, every row
  // is a whole number of 16 bytes, and the vector starts a 16-byte unit of
  // its row. Emulated on the CPU, where host buffers need not be aligned,
  // nothing is claimed.
  auto type = cast<MemRefType>(memref.getType());
  SmallVector<int64_t> strides;
  int64_t offset;
  if (options.emulateWarpOps ||
      failed(type.getStridesAndOffset(strides, offset)) || offset != 0)
    return std::nullopt;
  int64_t bytes = type.getElementTypeBitWidth() / 8;
  for (int64_t stride : ArrayRef(strides).drop_back())
    if (ShapedType::isDynamic(stride) || (stride * bytes) % 16 != 0)
      return std::nullopt;
  return llvm::Align(16);
}

Value KernelBody::loadVector(Value memref, ValueRange indices, int64_t width,
                             bool alignedIndex) {
  Type element = cast<MemRefType>(memref.getType()).getElementType();
  auto type = VectorType::get({width}, element);
  std::optional<llvm::Align> align =
      alignedIndex ? vectorAlignment(memref) : std::nullopt;
  Value v = align ? vector::LoadOp::create(b, type, memref, indices,
                                           /*nontemporal=*/false, *align)
                  : vector::LoadOp::create(b, type, memref, indices);
  if (!element.isBF16())
    return v;
  return arith::ExtFOp::create(b, VectorType::get({width}, b.getF32Type()), v);
}

SmallVector<Value>
KernelBody::laneDotShares(Value lane, int64_t depth, Value a, ValueRange aRow,
                          ArrayRef<Value> weights,
                          ArrayRef<SmallVector<Value>> wRows) {
  SmallVector<SmallVector<Value>, 1> rows = {
      SmallVector<Value>(aRow.begin(), aRow.end())};
  return laneDotShares(lane, depth, a, ArrayRef(rows), weights, wRows);
}

SmallVector<Value> KernelBody::laneDotShares(
    Value lane, int64_t depth, Value a, ArrayRef<SmallVector<Value>> aRows,
    ArrayRef<Value> weights, ArrayRef<SmallVector<Value>> wRows) {
  int64_t nw = weights.size();
  Type wElement = cast<MemRefType>(weights[0].getType()).getElementType();
  int64_t elementBytes = wElement.getIntOrFloatBitWidth() / 8;
  int64_t width = 16 / elementBytes;
  auto indices = [](ValueRange row, Value i) {
    SmallVector<Value> all(row);
    all.push_back(i);
    return all;
  };
  SmallVector<Value> zeros(aRows.size() * nw, f32(0.0));
  if (depth % width != 0 || llvm::any_of(weights, [&](Value w) {
        return cast<MemRefType>(w.getType()).getElementType() != wElement;
      }))
    return reduceAll(
        lane, index(depth), zeros,
        [&](Value i, ValueRange acc) -> SmallVector<Value> {
          SmallVector<Value> ws;
          for (auto [j, w] : llvm::enumerate(weights))
            ws.push_back(load(w, indices(wRows[j], i)));
          SmallVector<Value> next;
          for (const SmallVector<Value> &aRow : aRows) {
            Value x = load(a, indices(aRow, i));
            for (auto [j, w] : llvm::enumerate(ws))
              next.push_back(fadd(acc[next.size()], fmul(x, w)));
          }
          return next;
        },
        kLanes);
  // Chunks start at multiples of `width` elements: at 16-byte units of
  // their rows where `width` elements fill whole 16 bytes.
  auto chunk = [&](Value memref, ValueRange at) {
    int64_t bytes =
        cast<MemRefType>(memref.getType()).getElementTypeBitWidth() / 8;
    return loadVector(memref, at, width, (width * bytes) % 16 == 0);
  };
  int64_t warpChunk = kLanes * width;
  return reduceAll(
      mul(lane, index(width)), index(depth), zeros,
      [&](Value i, ValueRange acc) -> SmallVector<Value> {
        SmallVector<Value> ws;
        for (auto [j, w] : llvm::enumerate(weights))
          ws.push_back(chunk(w, indices(wRows[j], i)));
        SmallVector<Value> next(acc);
        for (auto [row, aRow] : llvm::enumerate(aRows)) {
          Value x = chunk(a, indices(aRow, i));
          for (int64_t e = 0; e < width; ++e) {
            Value xe = vector::ExtractOp::create(b, x, ArrayRef<int64_t>{e});
            for (auto [j, w] : llvm::enumerate(ws))
              next[row * nw + j] = fadd(
                  next[row * nw + j],
                  fmul(xe,
                       vector::ExtractOp::create(b, w, ArrayRef<int64_t>{e})));
          }
        }
        return next;
      },
      warpChunk);
}

bool GPUProgram::inResidentPassLoop() {
  if (!options.residentLoops)
    return false;
  // The insertion point's block may be the pass loop's own body.
  for (Operation *op = hostBuilder.getInsertionBlock()->getParentOp(); op;
       op = op->getParentOp())
    if (isa<scf::ForOp>(op) && op->hasAttr(kPassLoopAttr))
      return true;
  return false;
}

Value GPUProgram::stream() {
  if (!token)
    token = gpu::WaitOp::create(hostBuilder, loc,
                                hostBuilder.getType<gpu::AsyncTokenType>(), {})
                .getAsyncToken();
  return token;
}

void GPUProgram::sync() {
  if (!token)
    return;
  gpu::WaitOp::create(hostBuilder, loc, Type(), {token});
  token = Value();
}

Value GPUProgram::scratch(MemRefType type, ValueRange sizes) {
  auto alloc = gpu::AllocOp::create(hostBuilder, loc, type,
                                    hostBuilder.getType<gpu::AsyncTokenType>(),
                                    {stream()}, sizes, {});
  token = alloc.getAsyncToken();
  return alloc.getMemref();
}

void GPUProgram::release(Value buffer) {
  token = gpu::DeallocOp::create(hostBuilder, loc,
                                 hostBuilder.getType<gpu::AsyncTokenType>(),
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

  SmallVector<Type> types = {hostBuilder.getIndexType()};
  for (Value arg : args)
    types.push_back(arg.getType());
  OpBuilder::InsertionGuard guard(hostBuilder);
  hostBuilder.setInsertionPointToEnd(kernelModule.getBody());
  ImplicitLocOpBuilder b(loc, hostBuilder);
  auto fn = gpu::GPUFuncOp::create(b, newKernelName((base + "_").str()),
                                   hostBuilder.getFunctionType(types, {}));
  fn->setAttr(gpu::GPUDialect::getKernelFuncAttrName(),
              hostBuilder.getUnitAttr());
  fn->setAttr("moe.signature", hostBuilder.getStringAttr(signature));
  b.setInsertionPointToStart(&fn.getBody().front());
  KernelBody k(b, options);
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

void GPUProgram::launch(gpu::GPUFuncOp fn, Value n, ValueRange args,
                        int64_t blockThreads) {
  // Block size: small grids (decode) spread over more SMs with smaller
  // blocks; others use full blocks. Then ceil(n / threads) blocks: none for
  // a form that gets no rows, which the runtime then does not launch.
  Value threads = hostIndex(blockThreads);
  if (!blockThreads) {
    Value small =
        arith::CmpIOp::create(hostBuilder, loc, arith::CmpIPredicate::ule, n,
                              hostIndex(kSmallGridThreads));
    threads =
        arith::SelectOp::create(hostBuilder, loc, small, hostIndex(kSmallBlock),
                                hostIndex(kLargeBlock));
  }
  Value blocks = arith::DivUIOp::create(
      hostBuilder, loc,
      arith::AddIOp::create(
          hostBuilder, loc, n,
          arith::SubIOp::create(hostBuilder, loc, threads, hostIndex(1))),
      threads);
  Value one = hostIndex(1);
  SmallVector<Value> operands = {n};
  llvm::append_range(operands, args);
  Value shared;
  if (auto bytes = fn->getAttrOfType<IntegerAttr>(kDynamicSharedAttr))
    shared = arith::ConstantIntOp::create(hostBuilder, loc, bytes.getInt(), 32);
  auto op = gpu::LaunchFuncOp::create(
      hostBuilder, loc, fn, {blocks, one, one}, {threads, one, one}, shared,
      operands, hostBuilder.getType<gpu::AsyncTokenType>(), {stream()});
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
    hostBuilder.setInsertionPoint(&op);
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
      if (failed(emit(nullptr, "moert_copy",
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
  if (failed(emit(call, call.getCallee(), args)))
    return failure();
  call.erase();
  return success();
}

LogicalResult GPUProgram::emit(Operation *call, StringRef name,
                               ArrayRef<Value> args) {
  static const llvm::StringMap<KernelEmitter> emitters = [] {
    llvm::StringMap<KernelEmitter> all;
    addMoEKernelEmitters(all);
    addDecoderKernelEmitters(all);
    return all;
  }();
  auto emitter = emitters.find(name);
  if (emitter == emitters.end())
    return emitError(loc, "convert-moe-to-gpu: no GPU kernel for '")
           << name << "' yet";
  return emitter->second(*this, name, args, call);
}

LogicalResult GPUProgram::requireInt(StringRef kernelName, Value v,
                                     int64_t &out) {
  APInt value;
  if (!matchPattern(v, m_ConstantInt(&value)))
    return emitError(loc, "convert-moe-to-gpu: ")
           << kernelName << " needs a constant parameter";
  out = value.getSExtValue();
  return success();
}

LogicalResult GPUProgram::requireFloat(StringRef kernelName, Value v,
                                       double &out) {
  FloatAttr attr;
  if (!matchPattern(v, m_Constant(&attr)))
    return emitError(loc, "convert-moe-to-gpu: ")
           << kernelName << " needs a constant parameter";
  out = attr.getValueAsDouble();
  return success();
}

Value GPUProgram::hostNumElements(Value memref) {
  auto type = cast<MemRefType>(memref.getType());
  Value n = hostIndex(1);
  for (int64_t i = 0; i < type.getRank(); ++i)
    n = hostMul(n, hostDim(memref, i));
  return n;
}

std::pair<Value, Value> GPUProgram::splitRows(Value rows, int64_t maxRows) {
  Value small = arith::CmpIOp::create(
      hostBuilder, loc, arith::CmpIPredicate::ule, rows, hostIndex(maxRows));
  Value none = hostIndex(0);
  return {arith::SelectOp::create(hostBuilder, loc, small, rows, none),
          arith::SelectOp::create(hostBuilder, loc, small, none, rows)};
}

Value GPUProgram::readBack(Value device) {
  auto type = cast<MemRefType>(device.getType());
  // On the host stack once per function, not once per pass.
  Value slot;
  {
    OpBuilder::InsertionGuard guard(hostBuilder);
    hostBuilder.setInsertionPointToStart(entryBlock);
    slot = memref::AllocaOp::create(hostBuilder, loc, type);
  }
  token = gpu::MemcpyOp::create(hostBuilder, loc,
                                hostBuilder.getType<gpu::AsyncTokenType>(),
                                {stream()}, slot, device)
              .getAsyncToken();
  release(device);
  sync();
  return memref::LoadOp::create(hostBuilder, loc, slot,
                                ValueRange{hostIndex(0)});
}

void mlir::moe::gpu_lowering::reportGemmForms(const GPUKernelOptions &options,
                                              Location loc, StringRef what,
                                              const ExpertGemmShape &shape,
                                              const ExpertGemmForms &forms,
                                              StringRef why) {
  if (!options.reportForms)
    return;
  InFlightDiagnostic remark = emitRemark(loc);
  remark << what << " (";
  if (shape.experts > 1)
    remark << shape.experts << " experts, ";
  remark << shape.cols << " x " << shape.depth
         << (shape.bf16Weights ? " bf16" : " f32")
         << " weights): a warp per output up to " << forms.splitMaxRows
         << " rows, then ";
  if (forms.mmaSubtiles)
    remark << "warp tiles of " << kMmaRows << " x "
           << kMmaCols * forms.mmaSubtiles << " on the tensor cores";
  else
    remark << "a thread per output";
  if (forms.warpgroupMinRows)
    remark << ", from " << forms.warpgroupMinRows << " rows warpgroup tiles of "
           << kWgmmaRows << " x " << forms.warpgroupCols
           << " (wgmma, weight tiles by TMA)";
  remark << " (cost model for " << options.chip.name << ")";
  if (!why.empty())
    remark << "; " << why;
}

void mlir::moe::gpu_lowering::emitRowsDotWeights(GPUProgram &p, StringRef base,
                                                 Value a, Value w, Value out,
                                                 int64_t cols, int64_t depth,
                                                 bool tensorCores) {
  const GPUKernelOptions &options = p.getOptions();
  bool bf16 = cast<MemRefType>(w.getType()).getElementType().isBF16();
  // One "expert" whose segment is all rows.
  ExpertGemmShape shape{1, 1, cols, depth, 1, bf16};
  int64_t chunkRows = p.splitChunkRows();
  ExpertGemmForms forms =
      chooseExpertGemmForms(options.chip, options.tensorCores && tensorCores,
                            shape, mayUseWarpgroups(p, {w}), chunkRows);
  reportGemmForms(options, p.getLoc(), base, shape, forms,
                  tensorCores || !bf16 || !options.tensorCores
                      ? ""
                      : "no tensor cores here, so that its activations stay "
                        "f32");
  Value rows = p.hostDim(a, 0);
  auto [splitRows, otherRows] = p.splitRows(rows, forms.splitMaxRows);
  Value none = p.hostIndex(0);
  Value fullRows = forms.mmaSubtiles ? none : otherRows;
  Value mmaRows = forms.mmaSubtiles ? otherRows : none;
  Value warpgroupRows = none;
  if (forms.warpgroupMinRows)
    std::tie(mmaRows, warpgroupRows) =
        p.splitRows(mmaRows, forms.warpgroupMinRows - 1);

  auto full = p.kernel(
      base, "", {a, w, out}, [&](KernelBody &k, Value gid, ValueRange args) {
        Value r = k.div(gid, k.index(cols)), c = k.rem(gid, k.index(cols));
        k.store(k.dot(args[0], {r}, args[1], {c}, k.index(depth)), args[2],
                {r, c});
      });
  p.launch(full, p.hostMul(fullRows, p.hostIndex(cols)), {a, w, out});
  // A warp per (chunk of `chunkRows` rows, column): each weight chunk
  // is loaded once for the chunk's rows; rows past the last read the
  // chunk's first and are not stored.
  auto split = p.kernel(
      (base + "_split").str(), "", {a, w, out},
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value lane = k.rem(gid, k.index(kLanes));
        Value task = k.div(gid, k.index(kLanes));
        Value first = k.mul(k.div(task, k.index(cols)), k.index(chunkRows));
        Value c = k.rem(task, k.index(cols));
        Value rowCount = k.dim(args[0], 0);
        SmallVector<Value> rowOf, used;
        SmallVector<SmallVector<Value>> aRows;
        for (int64_t j = 0; j < chunkRows; ++j) {
          Value rj = k.add(first, k.index(j));
          used.push_back(k.cmp(arith::CmpIPredicate::ult, rj, rowCount));
          rowOf.push_back(arith::SelectOp::create(k.b, used.back(), rj, first));
          aRows.push_back({rowOf.back()});
        }
        SmallVector<Value> sums = k.warpSum(lane, [&](Value l) {
          return k.laneDotShares(l, depth, args[0], aRows, {args[1]}, {{c}});
        });
        Value lead = k.cmp(arith::CmpIPredicate::eq, lane, k.index(0));
        for (size_t j = 0; j < rowOf.size(); ++j)
          k.ifThen(arith::AndIOp::create(k.b, lead, used[j]), [&] {
            k.store(sums[j], args[2], {rowOf[j], c});
          });
      });
  Value chunks = arith::CeilDivUIOp::create(p.host(), p.getLoc(), splitRows,
                                            p.hostIndex(chunkRows));
  p.launch(split, p.hostMul(chunks, p.hostIndex(cols * kLanes)), {a, w, out});
  int64_t subtiles = forms.mmaSubtiles;
  if (!subtiles)
    return;
  // A warp per (16 rows, 8 * subtiles columns) tile on the tensor cores.
  int64_t colTiles = cols / (kMmaCols * subtiles);
  auto mma = p.kernel(
      (base + "_mma").str(), std::to_string(subtiles), {a, w, out},
      [&](KernelBody &k, Value gid, ValueRange args) {
        Value lane = k.rem(gid, k.index(kLanes));
        Value task = k.div(gid, k.index(kLanes));
        Value colBase =
            k.mul(k.rem(task, k.index(colTiles)), k.index(kMmaCols * subtiles));
        Value rowBase =
            k.mul(k.div(task, k.index(colTiles)), k.index(kMmaRows));
        Value rowCount = k.dim(args[0], 0);
        SmallVector<Value> rowOf, valid;
        for (int64_t half : {0, 1}) {
          Value r = k.add(rowBase, k.add(k.div(lane, k.index(4)),
                                         k.index(half * kMmaRows / 2)));
          rowOf.push_back(r);
          valid.push_back(k.cmp(arith::CmpIPredicate::ult, r, rowCount));
        }
        auto loadA = [&](KernelBody &k, int64_t half, Value i) {
          return k.select(
              valid[half],
              [&] {
                return k.load(args[0], {rowOf[half], i});
              },
              [&] { return k.f32(0.0); });
        };
        auto bIndices = [&](KernelBody &k, Value col,
                            Value i) -> SmallVector<Value> {
          return {k.add(colBase, col), i};
        };
        WarpTileGemm gemm{depth, subtiles, 1, loadA, {args[1]}, bIndices};
        SmallVector<Value> acc = emitWarpTileGemm(k, lane, gemm);
        forEachAccumulator(
            k, lane, subtiles, [&](int64_t at, int64_t half, Value col) {
              k.ifThen(valid[half], [&] {
                k.store(acc[at], args[2], {rowOf[half], k.add(colBase, col)});
              });
            });
      });
  OpBuilder &b = p.host();
  Location loc = p.getLoc();
  Value rowTiles =
      arith::CeilDivUIOp::create(b, loc, mmaRows, p.hostIndex(kMmaRows));
  p.launch(mma, p.hostMul(rowTiles, p.hostIndex(colTiles * kLanes)),
           {a, w, out});
  if (!forms.warpgroupMinRows)
    return;

  // A warpgroup (a block) per (64 rows, tileCols columns) tile
  // (WarpgroupMma.h).
  int64_t tileCols = forms.warpgroupCols;
  int64_t groupColTiles = cols / tileCols;
  SmallVector<Value> groupArgs = {a, w, out};
  if (!options.emulateWarpOps)
    groupArgs.push_back(createWeightTensorMap(p, w, tileCols, warpgroupRows));
  auto group = p.kernel(
      (base + "_wgmma").str(), "", groupArgs,
      [&](KernelBody &k, Value gid, ValueRange args) {
        WarpgroupTask task = warpgroupTask(k, gid, cols, tileCols);
        Value rowBase = k.mul(task.rowTile, k.index(kWgmmaRows));
        Value rowCount = k.dim(args[0], 0);
        Value last = arith::SubIOp::create(k.b, rowCount, k.index(1));
        auto rowAt = [&](Value row) { return k.add(rowBase, row); };
        auto valid = [&](Value r) {
          return k.cmp(arith::CmpIPredicate::ult, r, rowCount);
        };
        // Rows past the last read the last (in bounds) as zeros.
        auto loadA = [&](KernelBody &k, Value row, Value i0) {
          Value r = rowAt(row);
          return loadChunkOrZeros(
              k, args[0], arith::MinUIOp::create(k.b, r, last), i0, valid(r));
        };
        WarpgroupTileGemm gemm{depth,
                               tileCols,
                               loadA,
                               {args[1]},
                               SmallVector<Value, 2>(args.drop_front(3)),
                               Value(),
                               task.colBase};
        SmallVector<Value> acc = emitWarpgroupTileGemm(k, task.thread, gemm);
        forEachWarpgroupAccumulator(
            k, task.thread, tileCols, [&](int64_t at, Value row, Value col) {
              Value r = rowAt(row);
              k.ifThen(valid(r), [&] {
                k.store(acc[at], args[2], {r, k.add(task.colBase, col)});
              });
            });
      });
  Value groupTiles = arith::CeilDivUIOp::create(b, loc, warpgroupRows,
                                                p.hostIndex(kWgmmaRows));
  p.launch(
      group,
      p.hostMul(groupTiles, p.hostIndex(groupColTiles * kWarpgroupThreads)),
      groupArgs, kWarpgroupThreads);
}
