//===- ResidentLoop.cpp - a pass loop as one resident kernel --------------===//
//
// After GPUProgram has rewritten a pass loop (an scf.for marked
// kPassLoopAttr) into launches, its body is queued pass by pass from the
// host, which waits once per pass to read the number of tokens still active.
// makeLoopResident turns the whole loop into one kernel that stays on the
// GPU for all passes:
//  - every launch of the body becomes a grid-stride loop over the launch's
//    threads, inlined from its kernel, followed by a barrier across the
//    grid, so the next phase sees all of its writes;
//  - the host arithmetic of the body (row counts, views, grid sizes) is
//    cloned into the kernel, where every thread computes the same values;
//  - the active-token count that the host read back is loaded from device
//    memory after the barrier;
//  - the body's scratch buffers are allocated once, before the launch, at
//    the size the first pass (all tokens, the most) needs; each pass views
//    the prefix it uses.
// The grid barrier needs every block resident at once: the runtime launches
// kernels named kResidentKernelPrefix cooperatively, with no more blocks
// than fit (moert/GpuRuntime.h). The weights the passes share are then read
// from L2 after the first pass instead of being fetched per launch.
//
//===----------------------------------------------------------------------===//
#include "GPUProgram.h"

#include "moe/Conversion/KernelProgram.h"
#include "moert/GpuRuntime.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/Matchers.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "mlir/Transforms/RegionUtils.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {
/// Threads per block of the resident kernel and the blocks per SM ptxas must
/// make room for (at most 128 registers per thread): the kernel asks for
/// that many blocks per SM of the chip the cost model assumes (the runtime
/// lowers it to what fits), enough warps per SM to keep loads in flight
/// with few arrivals per barrier. Neither is tuned yet.
constexpr int64_t kResidentBlockThreads = 256;
constexpr int64_t kResidentBlocksPerSM = 2;

/// A grid barrier sleeps ~kBarrierPollNs between polls of its counter (each
/// an atomic of about a microsecond) and traps at the kBarrierMaxPolls-th:
/// after half a minute or so, far beyond any phase.
constexpr int64_t kBarrierPollNs = 32;
constexpr int64_t kBarrierMaxPolls = int64_t(1) << 25;

/// The most kernel parameter bytes that PTX ISA 8.1 (moe-cuda-pipeline's
/// version) allows on sm_70 and later.
constexpr int64_t kMaxParameterBytes = 32764;

/// The bytes of kernel parameters a value takes: a memref is passed as its
/// descriptor (two pointers, the offset, sizes and strides).
int64_t parameterBytes(Type type) {
  if (auto memref = dyn_cast<MemRefType>(type))
    return (3 + 2 * memref.getRank()) * 8;
  if (type.isIndex())
    return 8;
  return std::max<int64_t>(type.getIntOrFloatBitWidth() / 8, 4);
}

/// Whether `op` is host arithmetic that can be recomputed in the kernel.
bool isClonable(Operation *op) {
  return op->getNumRegions() == 0 && isMemoryEffectFree(op);
}

/// `whole`, a buffer of `type` allocated for the largest pass, seen as one
/// of `type` with the dynamic sizes `sizes` (row-major: the elements it
/// covers lead the buffer).
Value emitLeadingView(KernelBody &k, Value whole, MemRefType type,
                      ValueRange sizes) {
  ImplicitLocOpBuilder &b = k.b;
  SmallVector<OpFoldResult> mixedSizes, strides(type.getRank());
  SmallVector<Value> sizeValues;
  unsigned dynamic = 0;
  for (int64_t dim : type.getShape()) {
    bool isDynamic = ShapedType::isDynamic(dim);
    Value size = isDynamic ? sizes[dynamic++] : k.index(dim);
    sizeValues.push_back(size);
    mixedSizes.push_back(isDynamic ? OpFoldResult(size)
                                   : OpFoldResult(b.getIndexAttr(dim)));
  }
  // Static strides where the type has them (the verifier wants them so),
  // else the product of the sizes after the dimension.
  SmallVector<int64_t> typeStrides;
  int64_t typeOffset;
  (void)type.getStridesAndOffset(typeStrides, typeOffset);
  Value running = k.index(1);
  for (int64_t d = type.getRank() - 1; d >= 0; --d) {
    strides[d] = ShapedType::isDynamic(typeStrides[d])
                     ? OpFoldResult(running)
                     : OpFoldResult(b.getIndexAttr(typeStrides[d]));
    running = k.mul(running, sizeValues[d]);
  }
  return memref::ReinterpretCastOp::create(b, type, whole, b.getIndexAttr(0),
                                           mixedSizes, strides);
}

class ResidentLoopBuilder {
public:
  ResidentLoopBuilder(GPUProgram &program, scf::ForOp loop)
      : program(program), loop(loop), options(program.getOptions()) {}

  LogicalResult build();

private:
  /// Checks that the body can run in a kernel and finds its read-back
  /// slots.
  LogicalResult scanBody();
  FailureOr<Value> hoistedValue(Value v, IRMapping &hoisted);
  Value kernelValue(Value hostValue);
  LogicalResult emitBody(KernelBody &k, ImplicitLocOpBuilder &b);
  LogicalResult emitPhase(KernelBody &k, ImplicitLocOpBuilder &b,
                          gpu::LaunchFuncOp launch);
  void emitGridBarrier(KernelBody &k, ImplicitLocOpBuilder &b);

  GPUProgram &program;
  scf::ForOp loop;
  const GPUKernelOptions &options;
  /// The body's gpu.alloc ops and the buffers allocated for them before
  /// the launch.
  llvm::MapVector<Operation *, Value> scratch;
  /// Host slots the body reads a device result into, and that result.
  DenseMap<Value, Value> readBackSlots;
  /// Host value -> kernel value, while the kernel body is emitted.
  IRMapping map;
  Value threadId, globalId, gridThreads, gridBlocks, barrierCounter;
};

LogicalResult ResidentLoopBuilder::scanBody() {
  for (Value result : loop.getResults())
    if (!result.use_empty())
      return loop.emitError("convert-moe-to-gpu: a resident pass loop's "
                            "results must be unused");
  for (Operation &op : loop.getBody()->without_terminator()) {
    if (isa<gpu::WaitOp, gpu::AllocOp, gpu::DeallocOp, gpu::LaunchFuncOp>(op) ||
        isClonable(&op))
      continue;
    if (auto copy = dyn_cast<gpu::MemcpyOp>(op))
      if (copy.getDst().getDefiningOp<memref::AllocaOp>()) {
        readBackSlots[copy.getDst()] = copy.getSrc();
        continue;
      }
    if (auto load = dyn_cast<memref::LoadOp>(op))
      if (readBackSlots.count(load.getMemref()))
        continue;
    return op.emitError("convert-moe-to-gpu: this host operation cannot be "
                        "part of a resident loop kernel");
  }
  return success();
}

/// `v` as the host computes it before the loop, for the first pass: the
/// loop's row count is then its initial value (all tokens). Sizes of the
/// body's buffers grow with the row count, so these are the largest.
FailureOr<Value> ResidentLoopBuilder::hoistedValue(Value v,
                                                   IRMapping &hoisted) {
  if (hoisted.contains(v))
    return hoisted.lookup(v);
  if (!loop.getRegion().isAncestor(v.getParentRegion()))
    return v;
  if (v == loop.getInductionVar())
    return loop.getLowerBound();
  if (auto arg = dyn_cast<BlockArgument>(v))
    return loop.getInitArgs()[arg.getArgNumber() - 1];
  Operation *def = v.getDefiningOp();
  if (!isClonable(def))
    return def->emitError("convert-moe-to-gpu: a resident loop kernel's "
                          "buffer size depends on a value read at run time");
  for (Value operand : def->getOperands()) {
    FailureOr<Value> h = hoistedValue(operand, hoisted);
    if (failed(h))
      return failure();
    hoisted.map(operand, *h);
  }
  OpBuilder b(loop);
  Operation *clone = b.clone(*def, hoisted);
  return clone->getResult(cast<OpResult>(v).getResultNumber());
}

/// The kernel's value for a host value the body uses: a kernel argument, a
/// constant cloned at the kernel's entry, or what the body's clone made.
Value ResidentLoopBuilder::kernelValue(Value hostValue) {
  return map.lookup(hostValue);
}

void ResidentLoopBuilder::emitGridBarrier(KernelBody &k,
                                          ImplicitLocOpBuilder &b) {
  // Every block's threads finish the phase; one thread per block arrives
  // on the counter and waits until the whole grid has. The counter only
  // grows: this barrier is complete at the next multiple of the grid size.
  gpu::BarrierOp::create(b);
  k.ifThen(k.cmp(arith::CmpIPredicate::eq, threadId, k.index(0)), [&] {
    // The fences make the block's writes visible to the whole GPU before
    // it arrives, and the others' visible to it after; a block of one
    // thread (emulation) needs none.
    if (!options.emulateWarpOps)
      NVVM::MembarOp::create(b, NVVM::MemScopeKind::GPU);
    Value grid = k.toI32(gridBlocks);
    Value arrived =
        memref::AtomicRMWOp::create(b, arith::AtomicRMWKind::addi, k.i32(1),
                                    barrierCounter, ValueRange{k.index(0)});
    Value target = arith::MulIOp::create(
        b,
        arith::AddIOp::create(b, arith::DivUIOp::create(b, arrived, grid),
                              k.i32(1)),
        grid);
    // On the GPU the wait sleeps a little between polls, and the
    // kBarrierMaxPolls-th poll traps: a kernel that cannot complete its
    // barrier (a bug) fails the run instead of hanging it.
    bool onGpu = !options.emulateWarpOps;
    Type i32 = b.getI32Type();
    scf::WhileOp::create(
        b, TypeRange{i32}, ValueRange{k.i32(0)},
        [&](OpBuilder &nested, Location loc, ValueRange polls) {
          Value zero = arith::ConstantIndexOp::create(nested, loc, 0);
          Value none = arith::ConstantIntOp::create(nested, loc, 0, 32);
          Value now = memref::AtomicRMWOp::create(
              nested, loc, arith::AtomicRMWKind::addi, none, barrierCounter,
              ValueRange{zero});
          Value waiting = arith::CmpIOp::create(
              nested, loc, arith::CmpIPredicate::ult, now, target);
          if (onGpu) {
            Value stuck = arith::CmpIOp::create(
                nested, loc, arith::CmpIPredicate::uge, polls[0],
                arith::ConstantIntOp::create(nested, loc, kBarrierMaxPolls,
                                             32));
            scf::IfOp::create(nested, loc, stuck,
                              [&](OpBuilder &then, Location loc) {
                                LLVM::Trap::create(then, loc);
                                scf::YieldOp::create(then, loc);
                              });
          }
          scf::ConditionOp::create(nested, loc, waiting, polls);
        },
        [&](OpBuilder &nested, Location loc, ValueRange polls) {
          if (onGpu)
            NVVM::NanosleepOp::create(
                nested, loc,
                arith::ConstantIntOp::create(nested, loc, kBarrierPollNs, 32));
          Value one = arith::ConstantIntOp::create(nested, loc, 1, 32);
          scf::YieldOp::create(
              nested, loc,
              ValueRange{arith::AddIOp::create(nested, loc, polls[0], one)});
        });
    if (!options.emulateWarpOps)
      NVVM::MembarOp::create(b, NVVM::MemScopeKind::GPU);
  });
  gpu::BarrierOp::create(b);
}

/// One launch of the body, run by the resident grid: its kernel's body for
/// every thread index below the launch's count, then a grid barrier. The
/// count is the same in every thread, so all blocks skip an empty phase
/// together, and warps stay whole: warp kernels' counts are multiples of
/// 32, as is the grid's size (a single thread when emulated, which emits
/// warp operations per lane).
LogicalResult ResidentLoopBuilder::emitPhase(KernelBody &k,
                                             ImplicitLocOpBuilder &b,
                                             gpu::LaunchFuncOp launch) {
  auto callee = SymbolTable::lookupNearestSymbolFrom<gpu::GPUFuncOp>(
      launch, launch.getKernel());
  Block &entry = callee.getBody().front();
  auto guard =
      llvm::find_if(entry, [](Operation &op) { return isa<scf::IfOp>(op); });
  auto ifOp = guard == entry.end() ? scf::IfOp() : cast<scf::IfOp>(*guard);
  auto bound = ifOp ? ifOp.getCondition().getDefiningOp<arith::CmpIOp>()
                    : arith::CmpIOp();
  if (!bound || bound.getRhs() != entry.getArgument(0))
    return callee.emitError("convert-moe-to-gpu: not a kernel of "
                            "GPUProgram::kernel form (gid < n guard)");
  Value calleeGid = bound.getLhs();
  llvm::SetVector<Value> captured;
  getUsedValuesDefinedAbove(ifOp.getThenRegion(), captured);
  for (Value v : captured)
    if (v != calleeGid && !llvm::is_contained(entry.getArguments(), v))
      return callee.emitError("convert-moe-to-gpu: a kernel body uses a "
                              "value computed outside its guard");

  Value count = kernelValue(launch.getKernelOperands()[0]);
  SmallVector<Value> operands;
  for (Value operand : launch.getKernelOperands())
    operands.push_back(kernelValue(operand));
  k.ifThen(k.cmp(arith::CmpIPredicate::ugt, count, k.index(0)), [&] {
    auto threads = scf::ForOp::create(b, globalId, count, gridThreads);
    {
      OpBuilder::InsertionGuard loopGuard(b);
      b.setInsertionPoint(threads.getBody()->getTerminator());
      IRMapping inner;
      inner.map(entry.getArguments(), operands);
      inner.map(calleeGid, threads.getInductionVar());
      for (Operation &op : ifOp.thenBlock()->without_terminator())
        b.clone(op, inner);
    }
    emitGridBarrier(k, b);
  });
  return success();
}

LogicalResult ResidentLoopBuilder::emitBody(KernelBody &k,
                                            ImplicitLocOpBuilder &b) {
  for (Operation &op : loop.getBody()->without_terminator()) {
    if (isa<gpu::WaitOp, gpu::DeallocOp, gpu::MemcpyOp>(op))
      continue;
    if (auto launch = dyn_cast<gpu::LaunchFuncOp>(op)) {
      if (failed(emitPhase(k, b, launch)))
        return failure();
      continue;
    }
    if (auto alloc = dyn_cast<gpu::AllocOp>(op)) {
      // The pass's view of the buffer allocated before the launch.
      Value whole = kernelValue(scratch.lookup(alloc));
      MemRefType type = alloc.getType();
      if (type.hasStaticShape()) {
        map.map(alloc.getMemref(), whole);
        continue;
      }
      SmallVector<Value> sizes;
      for (Value size : alloc.getDynamicSizes())
        sizes.push_back(kernelValue(size));
      Value view = emitLeadingView(k, whole, type, sizes);
      map.map(alloc.getMemref(), view);
      continue;
    }
    if (auto load = dyn_cast<memref::LoadOp>(op);
        load && readBackSlots.count(load.getMemref())) {
      // The read-back result, loaded in every thread: the phase that wrote
      // it ended with a grid barrier. This reads the live buffer, not the
      // host's snapshot, which is the same only because the lowering puts
      // no launch between the copy and its loads, and because the buffer's
      // next writer (the next pass's exit_update_init) comes after at least
      // two phases that always run (plan_init, plan_scan), hence two grid
      // barriers: otherwise blocks could read different counts, take
      // different phases and never meet at a barrier.
      SmallVector<Value> indices;
      for (Value i : load.getIndices())
        indices.push_back(kernelValue(i));
      map.map(
          load.getResult(),
          memref::LoadOp::create(
              b, kernelValue(readBackSlots.lookup(load.getMemref())), indices));
      continue;
    }
    b.clone(op, map);
  }
  return success();
}

LogicalResult ResidentLoopBuilder::build() {
  if (failed(scanBody()))
    return failure();
  Location loc = loop.getLoc();

  // The kernel's arguments: what the body uses from outside (constants are
  // rematerialised instead), the loop bounds, then the scratch buffers and
  // the barrier counter, allocated below.
  llvm::SetVector<Value> used;
  getUsedValuesDefinedAbove(loop.getRegion(), used);
  used.insert(loop.getLowerBound());
  used.insert(loop.getUpperBound());
  used.insert(loop.getStep());
  for (Value init : loop.getInitArgs())
    used.insert(init);
  SmallVector<Value> args;
  SmallVector<Value> constants;
  for (Value v : used) {
    if (readBackSlots.count(v))
      continue;
    if (matchPattern(v, m_Constant())) {
      constants.push_back(v);
      continue;
    }
    if (!isa<MemRefType, IndexType, IntegerType, FloatType>(v.getType()))
      return loop.emitError("convert-moe-to-gpu: a resident loop kernel "
                            "cannot take a value of type ")
             << v.getType();
    args.push_back(v);
  }
  auto counterType =
      MemRefType::get({1}, IntegerType::get(loop.getContext(), 32));
  int64_t bytes = parameterBytes(counterType);
  for (Value v : args)
    bytes += parameterBytes(v.getType());
  for (auto alloc : loop.getBody()->getOps<gpu::AllocOp>())
    bytes += parameterBytes(alloc.getType());
  if (bytes > kMaxParameterBytes) {
    // Too many buffers (many layers per pass) for one kernel's parameters.
    emitRemark(loc, "convert-moe-to-gpu: this resident loop stays a host "
                    "loop of launches: its kernel would take ")
        << bytes << " bytes of parameters, over the " << kMaxParameterBytes
        << " that PTX ISA 8.1 allows";
    return success();
  }

  OpBuilder &host = program.host();
  host.setInsertionPoint(loop);

  // The body's buffers, allocated once at their first-pass sizes.
  Value token =
      gpu::WaitOp::create(host, loc, host.getType<gpu::AsyncTokenType>(), {})
          .getAsyncToken();
  Type tokenType = host.getType<gpu::AsyncTokenType>();
  for (auto alloc : loop.getBody()->getOps<gpu::AllocOp>()) {
    IRMapping hoisted;
    SmallVector<Value> sizes;
    for (Value size : alloc.getDynamicSizes()) {
      FailureOr<Value> h = hoistedValue(size, hoisted);
      if (failed(h))
        return failure();
      sizes.push_back(*h);
    }
    host.setInsertionPoint(loop);
    auto buffer = gpu::AllocOp::create(host, loc, alloc.getType(), tokenType,
                                       {token}, sizes, {});
    token = buffer.getAsyncToken();
    scratch[alloc] = buffer.getMemref();
  }
  auto counter =
      gpu::AllocOp::create(host, loc, counterType, tokenType, {token}, {}, {});
  Value zero = arith::ConstantIntOp::create(host, loc, 0, 32);
  token = gpu::MemsetOp::create(host, loc, tokenType, {counter.getAsyncToken()},
                                counter.getMemref(), zero)
              .getAsyncToken();
  for (auto &entry : scratch)
    args.push_back(entry.second);
  args.push_back(counter.getMemref());

  SmallVector<Type> argTypes;
  for (Value v : args)
    argTypes.push_back(v.getType());
  OpBuilder::InsertionGuard guard(host);
  host.setInsertionPointToEnd(program.getKernelModule().getBody());
  ImplicitLocOpBuilder b(loc, host);
  auto fn = gpu::GPUFuncOp::create(
      b, program.newKernelName(moert::cuda::kResidentKernelPrefix),
      host.getFunctionType(argTypes, {}));
  fn->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), host.getUnitAttr());
  // The kernel holds the registers of its largest phase all along; without
  // a bound that can leave room for one block per SM.
  if (!options.emulateWarpOps) {
    fn->setAttr(NVVM::NVVMDialect::getMaxntidAttrName(),
                host.getDenseI32ArrayAttr({kResidentBlockThreads, 1, 1}));
    fn->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                host.getI32IntegerAttr(kResidentBlocksPerSM));
  }
  b.setInsertionPointToStart(&fn.getBody().front());
  KernelBody k(b, options);
  for (auto [host, arg] : llvm::zip(args, fn.getArguments()))
    map.map(host, arg);
  for (Value c : constants)
    map.map(c, b.clone(*c.getDefiningOp())->getResult(0));
  barrierCounter = fn.getArguments().back();
  threadId = gpu::ThreadIdOp::create(b, gpu::Dimension::x);
  Value blockThreads = gpu::BlockDimOp::create(b, gpu::Dimension::x);
  gridBlocks = gpu::GridDimOp::create(b, gpu::Dimension::x);
  globalId =
      k.add(k.mul(gpu::BlockIdOp::create(b, gpu::Dimension::x), blockThreads),
            threadId);
  gridThreads = k.mul(gridBlocks, blockThreads);

  auto passes = scf::ForOp::create(
      b, kernelValue(loop.getLowerBound()), kernelValue(loop.getUpperBound()),
      kernelValue(loop.getStep()),
      llvm::map_to_vector(loop.getInitArgs(),
                          [&](Value v) { return kernelValue(v); }));
  map.map(loop.getInductionVar(), passes.getInductionVar());
  map.map(loop.getRegionIterArgs(), passes.getRegionIterArgs());
  {
    OpBuilder::InsertionGuard bodyGuard(b);
    b.setInsertionPointToStart(passes.getBody());
    if (failed(emitBody(k, b)))
      return failure();
    auto yield = cast<scf::YieldOp>(loop.getBody()->getTerminator());
    scf::YieldOp::create(
        b, llvm::map_to_vector(yield.getOperands(),
                               [&](Value v) { return kernelValue(v); }));
  }
  gpu::ReturnOp::create(b);

  // The launch, then the buffers' release; the host continues after the
  // kernel (the loop's region had its own stream).
  host.setInsertionPoint(loop);
  int64_t blocks = options.emulateWarpOps
                       ? 1
                       : kResidentBlocksPerSM * options.chip.multiprocessors;
  int64_t threads = options.emulateWarpOps ? 1 : kResidentBlockThreads;
  Value one = arith::ConstantIndexOp::create(host, loc, 1);
  auto launch = gpu::LaunchFuncOp::create(
      host, loc, fn,
      {arith::ConstantIndexOp::create(host, loc, blocks), one, one},
      {arith::ConstantIndexOp::create(host, loc, threads), one, one}, Value(),
      args, tokenType, {token});
  token = launch.getAsyncToken();
  for (auto &entry : scratch)
    token = gpu::DeallocOp::create(host, loc, tokenType, {token}, entry.second)
                .getAsyncToken();
  token =
      gpu::DeallocOp::create(host, loc, tokenType, {token}, counter.getMemref())
          .getAsyncToken();
  gpu::WaitOp::create(host, loc, Type(), {token});
  loop.erase();
  for (auto &entry : readBackSlots)
    if (entry.first.use_empty())
      entry.first.getDefiningOp()->erase();
  return success();
}
} // namespace

LogicalResult mlir::moe::gpu_lowering::makeLoopResident(GPUProgram &program,
                                                        scf::ForOp loop) {
  return ResidentLoopBuilder(program, loop).build();
}
