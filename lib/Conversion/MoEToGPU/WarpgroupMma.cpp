//===- WarpgroupMma.cpp - warpgroup tiles of a GEMM on Hopper -------------===//
#include "WarpgroupMma.h"

#include "moe/Conversion/KernelProgram.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {
/// wgmma's reduction step for bf16, and the steps of one slice.
constexpr int64_t kWgmmaDepth = 16;
constexpr int64_t kSteps = kWgmmaSlice / kWgmmaDepth;
/// bf16 elements per 16-byte chunk, the unit of the 128-byte swizzle.
constexpr int64_t kChunk = 8;
/// Bytes of one staged tile of `rows` rows of one slice (128 bytes each): A's
/// tile has kWgmmaRows, B's the tile's columns. Both are laid out alike.
constexpr int64_t tileBytes(int64_t rows) { return rows * kWgmmaSlice * 2; }
/// A wait for TMA's bytes suspends up to kWaitNs per try and traps at the
/// kMaxWaitTries-th try: after half a minute or so, far beyond any load, so
/// that a load that never lands (a bad tensor map: a bug) fails the run
/// instead of hanging the GPU.
constexpr int64_t kWaitNs = 1000000;
constexpr int64_t kMaxWaitTries = int64_t(1) << 15;
/// The runtime's tensor-map encoder (runtime/src/CudaBackend.cpp).
constexpr StringLiteral kTensorMapFunction = "moert_cuda_tensor_map_bf16_3d";

Value i64(KernelBody &k, int64_t v) {
  return arith::ConstantIntOp::create(k.b, v, 64);
}

/// The block's dynamic shared memory from its first 1024-byte aligned byte
/// on (the swizzled tiles need that alignment, which the window's start is
/// not promised: the launch asks for kSharedAlignment bytes more), carved
/// into typed buffers at byte offsets that may depend on the stage.
class SharedWindow {
public:
  explicit SharedWindow(KernelBody &k) : k(k) {
    MLIRContext *ctx = k.b.getContext();
    workgroup = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
    bytes = gpu::DynamicSharedMemoryOp::create(
        k.b, MemRefType::get({ShapedType::kDynamic}, k.b.getI8Type(),
                             MemRefLayoutAttrInterface(), workgroup));
    Value start = memref::ExtractAlignedPointerAsIndexOp::create(k.b, bytes);
    Value align = k.index(kSharedAlignment);
    Value past = k.rem(start, align);
    shift = k.rem(arith::SubIOp::create(k.b, align, past), align);
  }
  /// `size` elements of `element` at byte `offset` (a multiple of the
  /// element's size) from the aligned start.
  Value buffer(Value offset, Type element, int64_t size) {
    auto type = MemRefType::get({size}, element, MemRefLayoutAttrInterface(),
                                workgroup);
    return memref::ViewOp::create(k.b, type, bytes, k.add(shift, offset),
                                  ValueRange());
  }

private:
  KernelBody &k;
  Attribute workgroup;
  Value bytes, shift;
};

/// The shared-window address of a shared buffer, as i64.
Value sharedAddress(KernelBody &k, Value buffer) {
  Value p = memref::ExtractAlignedPointerAsIndexOp::create(k.b, buffer);
  return arith::IndexCastUIOp::create(k.b, k.b.getI64Type(), p);
}

/// The same address as a pointer to shared memory, as TMA and mbarrier
/// operations take it.
Value sharedPointer(KernelBody &k, Value buffer) {
  return LLVM::IntToPtrOp::create(
      k.b, LLVM::LLVMPointerType::get(k.b.getContext(), 3),
      sharedAddress(k, buffer));
}

/// The same address as TMA's shared::cluster destination takes it (the
/// block's own shared memory is part of its cluster's: PTX 7.8).
Value clusterPointer(KernelBody &k, Value buffer) {
  return LLVM::AddrSpaceCastOp::create(
      k.b, LLVM::LLVMPointerType::get(k.b.getContext(), 7),
      sharedPointer(k, buffer));
}

/// The wgmma matrix descriptor of a K-major bf16 tile at shared `address`
/// stored with the 128-byte swizzle: bits 0-13 address / 16, 16-29 leading
/// byte offset / 16 (unused by this layout: 1), 32-45 stride byte offset /
/// 16 (1024: eight 128-byte rows), 62-63 swizzle mode (1: 128 bytes). The
/// base-offset bits stay 0: tiles start 1024-byte aligned.
Value matrixDescriptor(KernelBody &k, Value address) {
  Value start = arith::AndIOp::create(
      k.b, arith::ShRUIOp::create(k.b, address, i64(k, 4)), i64(k, 0x3FFF));
  uint64_t fixed =
      (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
  return arith::OrIOp::create(k.b, start, i64(k, static_cast<int64_t>(fixed)));
}

/// Waits until the phase of parity `parity` of the mbarrier at `barrier`
/// completes (the watchdog above).
void waitForPhase(KernelBody &k, Value barrier, Value parity) {
  Type i1 = k.b.getI1Type(), i32 = k.b.getI32Type();
  scf::WhileOp::create(
      k.b, TypeRange{i32, i1},
      ValueRange{k.i32(0), arith::ConstantIntOp::create(k.b, 0, 1)},
      [&](OpBuilder &nested, Location loc, ValueRange state) {
        Value notDone = arith::XOrIOp::create(
            nested, loc, state[1],
            arith::ConstantIntOp::create(nested, loc, 1, 1));
        Value stuck = arith::CmpIOp::create(
            nested, loc, arith::CmpIPredicate::uge, state[0],
            arith::ConstantIntOp::create(nested, loc, kMaxWaitTries, 32));
        scf::IfOp::create(nested, loc,
                          arith::AndIOp::create(nested, loc, notDone, stuck),
                          [&](OpBuilder &then, Location loc) {
                            LLVM::Trap::create(then, loc);
                            scf::YieldOp::create(then, loc);
                          });
        scf::ConditionOp::create(nested, loc, notDone, state);
      },
      [&](OpBuilder &nested, Location loc, ValueRange state) {
        Value done = NVVM::MBarrierTryWaitOp::create(
            nested, loc, i1, barrier, parity,
            arith::ConstantIntOp::create(nested, loc, kWaitNs, 32));
        Value one = arith::ConstantIntOp::create(nested, loc, 1, 32);
        scf::YieldOp::create(
            nested, loc,
            ValueRange{arith::AddIOp::create(nested, loc, state[0], one),
                       done});
      });
}

/// The thread's row and column of accumulator `i` (of one matrix).
std::pair<Value, Value> accumulatorPosition(KernelBody &k, Value thread,
                                            int64_t i) {
  Value warp = k.div(thread, k.index(32));
  Value lane = k.rem(thread, k.index(32));
  Value row = k.add(k.add(k.mul(warp, k.index(16)), k.div(lane, k.index(4))),
                    k.index(8 * ((i % 4) / 2)));
  Value col = k.add(k.index(8 * (i / 4) + i % 2),
                    k.mul(k.rem(lane, k.index(4)), k.index(2)));
  return {row, col};
}

/// Stores the thread's share of A's slice at `i0`: 16-byte chunks t, t +
/// 128, ... of the tile's 64 x 8, each at its swizzled place; the high bf16
/// parts in `high` and, when split, the remainders in `low`.
void stageA(KernelBody &k, Value thread, const WarpgroupTileGemm &g, Value i0,
            Value high, Value low) {
  auto chunkType = VectorType::get({kChunk}, k.b.getBF16Type());
  for (int64_t q = 0; q < kWgmmaRows * (kWgmmaSlice / kChunk);
       q += kWarpgroupThreads) {
    Value c = k.add(thread, k.index(q));
    Value row = k.div(c, k.index(kWgmmaSlice / kChunk));
    Value chunk = k.rem(c, k.index(kWgmmaSlice / kChunk));
    Value x = g.loadA(k, row, k.add(i0, k.mul(chunk, k.index(kChunk))));
    Value swizzled = arith::XOrIOp::create(k.b, chunk, k.rem(row, k.index(8)));
    Value at = k.add(k.mul(row, k.index(kWgmmaSlice)),
                     k.mul(swizzled, k.index(kChunk)));
    Value hi = arith::TruncFOp::create(k.b, chunkType, x);
    vector::StoreOp::create(k.b, hi, high, ValueRange{at});
    if (low) {
      Value rest = k.fsub(x, k.roundToBF16(x));
      vector::StoreOp::create(k.b,
                              arith::TruncFOp::create(k.b, chunkType, rest),
                              low, ValueRange{at});
    }
  }
}

SmallVector<Value> emulatedGemm(KernelBody &k, Value thread,
                                const WarpgroupTileGemm &g) {
  SmallVector<Value> out;
  for (size_t m = 0; m < g.b.size(); ++m) {
    for (int64_t i = 0; i < warpgroupAccumulators(g.cols); ++i) {
      std::pair<Value, Value> position = accumulatorPosition(k, thread, i);
      Value row = position.first, col = position.second;
      out.push_back(k.reduce(
          k.index(0), k.index(g.depth / kChunk), k.f32(0.0),
          [&](Value j, Value sum) -> Value {
            Value j0 = k.mul(j, k.index(kChunk));
            Value x = g.loadA(k, row, j0);
            Value hi = k.roundToBF16(x);
            Value rest = k.roundToBF16(k.fsub(x, hi));
            for (int64_t e = 0; e < kChunk; ++e) {
              SmallVector<Value> at = {k.add(g.colBase, col),
                                       k.add(j0, k.index(e))};
              if (g.expert)
                at.insert(at.begin(), g.expert);
              Value w = k.load(g.b[m], at);
              auto lane = [&](Value v) {
                return vector::ExtractOp::create(k.b, v, ArrayRef<int64_t>{e});
              };
              sum = k.fadd(sum, k.fmul(lane(hi), w));
              if (!k.options.bf16Activations)
                sum = k.fadd(sum, k.fmul(lane(rest), w));
            }
            return sum;
          }));
    }
  }
  return out;
}
} // namespace

SmallVector<Value>
mlir::moe::gpu_lowering::emitWarpgroupTileGemm(KernelBody &k, Value thread,
                                               const WarpgroupTileGemm &g) {
  if (k.options.emulateWarpOps)
    return emulatedGemm(k, thread, g);
  MLIRContext *ctx = k.b.getContext();
  Type f32 = k.b.getF32Type();
  bool split = !k.options.bf16Activations;
  int64_t matrices = static_cast<int64_t>(g.b.size());
  WarpgroupStaging staging =
      warpgroupStaging(k.options, matrices, g.depth, g.cols);
  int64_t accumulators = warpgroupAccumulators(g.cols);
  int64_t stages = staging.stages, slices = g.depth / kWgmmaSlice;
  int64_t aTiles = split ? 2 : 1;
  auto kernel =
      k.b.getInsertionBlock()->getParentOp()->getParentOfType<gpu::GPUFuncOp>();
  kernel->setAttr(kDynamicSharedAttr,
                  k.b.getI64IntegerAttr(staging.sharedBytes));

  // Stage s holds A's tiles (high part, remainder) then the B tiles; the
  // stages' mbarriers follow the last stage used.
  SharedWindow shared(k);
  auto stageBuffer = [&](Value stage, int64_t offset, int64_t rows) {
    Value at =
        k.add(k.mul(stage, k.index(staging.stageBytes)), k.index(offset));
    return shared.buffer(at, k.b.getBF16Type(), rows * kWgmmaSlice);
  };
  auto aTile = [&](Value stage, int64_t t) {
    return stageBuffer(stage, t * tileBytes(kWgmmaRows), kWgmmaRows);
  };
  auto bTile = [&](Value stage, int64_t m) {
    return stageBuffer(
        stage, aTiles * tileBytes(kWgmmaRows) + m * tileBytes(g.cols), g.cols);
  };
  auto barrierOf = [&](Value stage) {
    Value offset = k.add(k.index(staging.usedStages * staging.stageBytes),
                         k.mul(stage, k.index(8)));
    return sharedPointer(k, shared.buffer(offset, k.b.getI64Type(), 1));
  };
  Value isLeader = k.cmp(arith::CmpIPredicate::eq, thread, k.index(0));

  // One thread arms each stage's barrier (one arrival per phase: its own,
  // with the bytes TMA delivers); the block sees them initialised after
  // bar.sync.
  k.ifThen(isLeader, [&] {
    for (int64_t s = 0; s < staging.usedStages; ++s)
      NVVM::MBarrierInitOp::create(k.b, barrierOf(k.index(s)), k.i32(1),
                                   Value());
    NVVM::FenceMbarrierInitOp::create(k.b);
    // The host copied the tensor maps to global memory: a thread that hands
    // one to TMA must first acquire it for the tensormap proxy (CUDA
    // Programming Guide, "tensor map in global memory"), or TMA may use a
    // stale descriptor cached for that address.
    for (Value map : g.bMaps)
      NVVM::FenceProxyAcquireOp::create(
          k.b, NVVM::MemScopeKind::SYS, map, k.i32(128),
          NVVM::ProxyKind::GENERIC, NVVM::ProxyKind::TENSORMAP);
  });

  // Loads slice `slice` into its stage: B's tiles by TMA (coordinates
  // innermost first), completing on the stage's barrier, and A's tile by
  // the threads, fenced for the async proxy that wgmma reads through.
  auto load = [&](Value slice) {
    Value stage = k.rem(slice, k.index(stages));
    Value i0 = k.mul(slice, k.index(kWgmmaSlice));
    k.ifThen(isLeader, [&] {
      Value barrier = barrierOf(stage);
      NVVM::MBarrierArriveExpectTxOp::create(
          k.b, Type(), barrier, k.i32(tileBytes(g.cols) * matrices),
          NVVM::MemScopeKind::CTA, /*relaxed=*/false, Value());
      SmallVector<Value> box = {k.toI32(i0), k.toI32(g.colBase),
                                g.expert ? k.toI32(g.expert) : k.i32(0)};
      for (int64_t m = 0; m < matrices; ++m)
        NVVM::CpAsyncBulkTensorGlobalToSharedClusterOp::create(
            k.b, clusterPointer(k, bTile(stage, m)), g.bMaps[m], box, barrier,
            ValueRange(), Value(), Value(), NVVM::TMALoadMode::TILE,
            /*isCTAOnly=*/false, NVVM::CTAGroupKindAttr(), Value());
    });
    stageA(k, thread, g, i0, aTile(stage, 0),
           split ? aTile(stage, 1) : Value());
    NVVM::FenceProxyOp::create(
        k.b, NVVM::ProxyKind::async_shared,
        NVVM::SharedSpaceAttr::get(ctx, NVVM::SharedSpace::shared_cta));
  };

  // The pipeline runs stages - 1 slices ahead: the first are loaded here;
  // after slice j's wgmmas are issued, the threads load slice j + stages - 1
  // into the stage slice j - 1 used (its wgmmas are done) while the tensor
  // cores work.
  for (int64_t s = 0; s < std::min(stages - 1, slices); ++s)
    load(k.index(s));
  // The barriers' initialisation and the first slices' A stores, for all.
  gpu::BarrierOp::create(k.b);

  auto accType = LLVM::LLVMStructType::getLiteral(
      ctx, SmallVector<Type>(accumulators, f32));
  Value zeroAcc = LLVM::UndefOp::create(k.b, accType);
  for (int64_t i = 0; i < accumulators; ++i)
    zeroAcc = LLVM::InsertValueOp::create(k.b, zeroAcc, k.f32(0.0), i);
  SmallVector<Value> inits(matrices, zeroAcc);

  SmallVector<Value> accs = k.reduceAll(
      k.index(0), k.index(slices), inits,
      [&](Value slice, ValueRange acc) -> SmallVector<Value> {
        // Slice j is stage j % stages's (j / stages)-th load: its barrier's
        // phase of that parity completes when B's bytes have landed.
        Value stage = k.rem(slice, k.index(stages));
        Value parity =
            k.toI32(k.rem(k.div(slice, k.index(stages)), k.index(2)));
        waitForPhase(k, barrierOf(stage), parity);

        NVVM::WgmmaFenceAlignedOp::create(k.b);
        SmallVector<Value> aBases;
        for (int64_t t = 0; t < aTiles; ++t)
          aBases.push_back(sharedAddress(k, aTile(stage, t)));
        SmallVector<Value> bBases;
        for (int64_t m = 0; m < matrices; ++m)
          bBases.push_back(sharedAddress(k, bTile(stage, m)));
        SmallVector<Value> next(acc);
        for (int64_t s = 0; s < kSteps; ++s) {
          // 16 bf16 of each row: 32 bytes further along the swizzled rows.
          Value step = i64(k, s * kWgmmaDepth * 2);
          for (int64_t m = 0; m < matrices; ++m) {
            Value bDesc = matrixDescriptor(
                k, arith::AddIOp::create(k.b, bBases[m], step));
            for (Value aBase : aBases) {
              Value aDesc =
                  matrixDescriptor(k, arith::AddIOp::create(k.b, aBase, step));
              next[m] = NVVM::WgmmaMmaAsyncOp::create(
                  k.b, accType, next[m], aDesc, bDesc,
                  NVVM::MMAShapeAttr::get(ctx, kWgmmaRows, g.cols, kWgmmaDepth),
                  NVVM::WGMMATypes::bf16, NVVM::WGMMATypes::bf16,
                  NVVM::WGMMATypes::f32, NVVM::WGMMAScaleOut::one,
                  NVVM::WGMMAScaleIn::one, NVVM::WGMMAScaleIn::one,
                  NVVM::MMALayout::row, NVVM::MMALayout::col,
                  NVVM::MMAIntOverflowAttr());
            }
          }
        }
        NVVM::WgmmaGroupSyncAlignedOp::create(k.b);
        Value ahead = k.add(slice, k.index(stages - 1));
        k.ifThen(k.cmp(arith::CmpIPredicate::ult, ahead, k.index(slices)),
                 [&] { load(ahead); });
        NVVM::WgmmaWaitGroupSyncOp::create(k.b, 0);
        // Every thread's wgmmas have read this stage, and its A stores of
        // the slice ahead are fenced, before any thread goes on: the next
        // load into this stage, and the wgmmas of that slice, come after.
        gpu::BarrierOp::create(k.b);
        return next;
      });
  SmallVector<Value> out;
  for (Value acc : accs)
    for (int64_t i = 0; i < accumulators; ++i)
      out.push_back(LLVM::ExtractValueOp::create(k.b, acc, i));
  return out;
}

WarpgroupStaging
mlir::moe::gpu_lowering::warpgroupStaging(const GPUKernelOptions &options,
                                          int64_t matrices, int64_t depth,
                                          int64_t cols) {
  if (options.emulateWarpOps)
    return {0, 0, 0, 0};
  int64_t aTiles = options.bf16Activations ? 1 : 2;
  int64_t stageBytes =
      aTiles * tileBytes(kWgmmaRows) + matrices * tileBytes(cols);
  // As many stages as fit the budget (with their barriers and the
  // alignment slack), between 2 (the pipeline's structure needs a stage to
  // load into while another is read) and the slices there are.
  int64_t slices = depth / kWgmmaSlice;
  int64_t perStage = stageBytes + 8;
  int64_t fit = (kWarpgroupSharedBudget - kSharedAlignment) / perStage;
  int64_t stages =
      std::max<int64_t>(2, std::min({fit, kMaxWarpgroupStages, slices}));
  // A single slice uses one stage of the two.
  int64_t used = std::min(stages, slices);
  return {stages, used, stageBytes, used * perStage + kSharedAlignment};
}

bool mlir::moe::gpu_lowering::mayUseWarpgroups(GPUProgram &p,
                                               ArrayRef<Value> weights) {
  const GPUKernelOptions &options = p.getOptions();
  if (!options.wgmma || !llvm::all_of(weights, [](Value w) {
        return cast<MemRefType>(w.getType()).getLayout().isIdentity();
      }))
    return false;
  return !p.inResidentPassLoop();
}

WarpgroupTask mlir::moe::gpu_lowering::warpgroupTask(KernelBody &k, Value gid,
                                                     int64_t cols,
                                                     int64_t tileCols) {
  Value block = k.div(gid, k.index(kWarpgroupThreads));
  Value colTiles = k.index(cols / tileCols);
  return {k.rem(gid, k.index(kWarpgroupThreads)), k.div(block, colTiles),
          k.mul(k.rem(block, colTiles), k.index(tileCols))};
}

Value mlir::moe::gpu_lowering::loadChunkOrZeros(KernelBody &k, Value source,
                                                Value row, Value i0,
                                                Value used) {
  Value v = k.loadVector(source, {row, i0}, kChunk, /*alignedIndex=*/true);
  Value zeros = arith::ConstantOp::create(
      k.b, DenseElementsAttr::get(cast<ShapedType>(v.getType()), 0.0f));
  return arith::SelectOp::create(k.b, used, v, zeros);
}

void mlir::moe::gpu_lowering::forEachWarpgroupAccumulator(
    KernelBody &k, Value thread, int64_t cols,
    function_ref<void(int64_t at, Value row, Value col)> body) {
  for (int64_t i = 0; i < warpgroupAccumulators(cols); ++i) {
    auto [row, col] = accumulatorPosition(k, thread, i);
    body(i, row, col);
  }
}

Value mlir::moe::gpu_lowering::createWeightTensorMap(GPUProgram &p, Value w,
                                                     int64_t tileCols,
                                                     Value rows) {
  OpBuilder &b = p.host();
  Location loc = p.getLoc();
  auto module =
      b.getInsertionBlock()->getParentOp()->getParentOfType<ModuleOp>();
  MLIRContext *ctx = b.getContext();
  auto ptr = LLVM::LLVMPointerType::get(ctx);
  Type i64 = b.getI64Type();
  auto fnType = b.getFunctionType({ptr, i64, i64, i64, i64, i64}, {ptr});
  if (!module.lookupSymbol(kTensorMapFunction)) {
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(module.getBody());
    func::FuncOp::create(b, loc, kTensorMapFunction, fnType).setPrivate();
  }
  // The weights' device address: the buffer's aligned start plus the
  // view's offset.
  auto meta = memref::ExtractStridedMetadataOp::create(b, loc, w);
  Value start = memref::ExtractAlignedPointerAsIndexOp::create(b, loc, w);
  int64_t bytes = cast<MemRefType>(w.getType()).getElementTypeBitWidth() / 8;
  Value address = arith::AddIOp::create(
      b, loc, start, p.hostMul(meta.getOffset(), p.hostIndex(bytes)));
  Value address64 = arith::IndexCastUIOp::create(b, loc, i64, address);
  Value base = LLVM::IntToPtrOp::create(b, loc, ptr, address64);
  // Dims innermost first; weights without an experts dimension are one
  // expert.
  SmallVector<int64_t> dims = llvm::to_vector(llvm::reverse(shapeOf(w)));
  if (dims.size() == 2)
    dims.push_back(1);
  auto constant = [&](int64_t v) {
    return arith::ConstantIntOp::create(b, loc, v, 64).getResult();
  };
  SmallVector<Value> args = {base,
                             constant(dims[0]),
                             constant(dims[1]),
                             constant(dims[2]),
                             constant(kWgmmaSlice),
                             constant(tileCols)};
  Value any = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::ugt, rows,
                                    p.hostIndex(0));
  auto ifAny = scf::IfOp::create(
      b, loc, any,
      [&](OpBuilder &then, Location loc) {
        Value map = func::CallOp::create(then, loc, kTensorMapFunction,
                                         TypeRange{ptr}, args)
                        .getResult(0);
        scf::YieldOp::create(then, loc, map);
      },
      [&](OpBuilder &otherwise, Location loc) {
        scf::YieldOp::create(
            otherwise, loc, LLVM::ZeroOp::create(otherwise, loc, ptr).getRes());
      });
  return ifAny.getResult(0);
}
