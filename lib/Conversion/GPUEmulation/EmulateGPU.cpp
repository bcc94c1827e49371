//===- EmulateGPU.cpp - run gpu.module kernels on the CPU -----------------===//
//
// The GPU kernels of convert-moe-to-gpu are grids of independent threads, so
// running the threads one after another on the CPU computes what the GPU
// computes (up to the order of atomic updates). A resident loop kernel,
// whose threads wait for each other at barriers, is emulated as a grid of
// one thread, which does every thread's work in turn. Their warp-collective
// operations (mma.sync, shuffles) must have been emitted as per-lane
// arithmetic (convert-moe-to-gpu{emulate-warp-ops}). This lets the suite check
// the generated kernels' arithmetic against the NumPy reference on machines
// without a GPU; the NVVM lowering itself is checked by ptxas.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Matchers.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEEMULATEGPU
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;

namespace {
/// What an emulated kernel calls, with its name, instead of an access
/// outside a buffer (runtime/include/moert/GpuEmulation.h).
constexpr StringLiteral kOutOfBounds = "moert_emulated_out_of_bounds";

/// The buffer, indices and width (elements along the innermost index) of a
/// memory access, if `op` is one.
struct Access {
  Value memref;
  ValueRange indices;
  int64_t width = 1;
};
std::optional<Access> accessOf(Operation *op) {
  if (auto load = dyn_cast<memref::LoadOp>(op))
    return Access{load.getMemref(), load.getIndices()};
  if (auto store = dyn_cast<memref::StoreOp>(op))
    return Access{store.getMemref(), store.getIndices()};
  if (auto rmw = dyn_cast<memref::AtomicRMWOp>(op))
    return Access{rmw.getMemref(), rmw.getIndices()};
  if (auto rmw = dyn_cast<memref::GenericAtomicRMWOp>(op))
    return Access{rmw.getMemref(), rmw.getIndices()};
  if (auto load = dyn_cast<vector::LoadOp>(op))
    if (load.getVectorType().getRank() == 1)
      return Access{load.getBase(), load.getIndices(),
                    load.getVectorType().getNumElements()};
  if (auto store = dyn_cast<vector::StoreOp>(op))
    if (store.getVectorType().getRank() == 1)
      return Access{store.getBase(), store.getIndices(),
                    store.getVectorType().getNumElements()};
  return std::nullopt;
}

/// Makes every buffer access of the emulated kernel `fn` (named `name`)
/// check its indices: one outside the buffer is not made (a load gives 0)
/// and calls kOutOfBounds with the kernel's name, for the run to fail. On a
/// GPU such an access reads another allocation or faults, and on the CPU it
/// may go unnoticed, so the suite would not catch it otherwise.
void checkAccesses(func::FuncOp fn, StringRef name, ModuleOp module) {
  SmallVector<std::pair<Operation *, Access>> accesses;
  fn.walk([&](Operation *op) {
    if (std::optional<Access> access = accessOf(op))
      accesses.push_back({op, *access});
  });
  if (accesses.empty())
    return;
  MLIRContext *ctx = module.getContext();
  auto ptr = LLVM::LLVMPointerType::get(ctx);
  OpBuilder top = OpBuilder::atBlockBegin(module.getBody());
  if (!module.lookupSymbol(kOutOfBounds))
    func::FuncOp::create(top, module.getLoc(), kOutOfBounds,
                         top.getFunctionType({ptr}, {}))
        .setPrivate();
  std::string text = (name + Twine('\0')).str();
  auto nameType =
      LLVM::LLVMArrayType::get(IntegerType::get(ctx, 8), text.size());
  std::string global = (fn.getSymName() + "_name").str();
  LLVM::GlobalOp::create(top, module.getLoc(), nameType, /*isConstant=*/true,
                         LLVM::Linkage::Internal, global,
                         top.getStringAttr(text));
  for (auto &entry : accesses) {
    // Not a structured binding: the lambdas below capture `op` (C++17).
    Operation *op = entry.first;
    auto &access = entry.second;
    OpBuilder b(op);
    Location loc = op->getLoc();
    Value inBounds;
    for (auto [d, index] : llvm::enumerate(access.indices)) {
      Value size = memref::DimOp::create(b, loc, access.memref, d);
      bool innermost = d + 1 == access.indices.size();
      Value end = innermost && access.width > 1
                      ? arith::AddIOp::create(b, loc, index,
                                              arith::ConstantIndexOp::create(
                                                  b, loc, access.width))
                      : Value();
      Value fits = end ? arith::CmpIOp::create(
                             b, loc, arith::CmpIPredicate::ule, end, size)
                       : arith::CmpIOp::create(
                             b, loc, arith::CmpIPredicate::ult, index, size);
      inBounds =
          inBounds ? arith::AndIOp::create(b, loc, inBounds, fits) : fits;
    }
    if (!inBounds) // rank 0: always in bounds
      continue;
    auto guarded = scf::IfOp::create(
        b, loc, inBounds,
        [&](OpBuilder &then, Location loc) {
          Operation *copy = then.clone(*op);
          scf::YieldOp::create(then, loc, copy->getResults());
        },
        [&](OpBuilder &otherwise, Location loc) {
          Value at = LLVM::AddressOfOp::create(otherwise, loc, ptr, global);
          func::CallOp::create(otherwise, loc, kOutOfBounds, TypeRange{},
                               ValueRange{at});
          SmallVector<Value> zeros;
          for (Type t : op->getResultTypes())
            zeros.push_back(arith::ConstantOp::create(
                otherwise, loc, cast<TypedAttr>(otherwise.getZeroAttr(t))));
          scf::YieldOp::create(otherwise, loc, zeros);
        });
    op->replaceAllUsesWith(guarded.getResults());
    op->erase();
  }
}

/// An emulated kernel, and whether its threads wait for each other
/// (gpu.barrier): then only one-thread launches can be emulated.
struct EmulatedKernel {
  func::FuncOp fn;
  bool hasBarrier = false;
};

/// Turns `kernel` into a host function `@<module>_<kernel>(args..., block
/// id, block size, thread id, grid size)` inserted before `module`.
FailureOr<EmulatedKernel> emulateKernel(gpu::GPUFuncOp kernel,
                                        gpu::GPUModuleOp module) {
  if (!kernel.getWorkgroupAttributions().empty() ||
      !kernel.getPrivateAttributions().empty())
    return kernel.emitError("moe-emulate-gpu: kernels with memory "
                            "attributions cannot be emulated");
  OpBuilder b(module);
  Type indexType = b.getIndexType();
  SmallVector<Type> inputs(kernel.getArgumentTypes());
  inputs.append(4, indexType);
  auto fn = func::FuncOp::create(
      b, kernel.getLoc(), (module.getName() + "_" + kernel.getName()).str(),
      b.getFunctionType(inputs, {}));
  fn.setPrivate();
  Region &body = fn.getBody();
  body.takeBody(kernel.getBody());
  Block &entry = body.front();
  Value blockId = entry.addArgument(indexType, kernel.getLoc());
  Value blockSize = entry.addArgument(indexType, kernel.getLoc());
  Value threadId = entry.addArgument(indexType, kernel.getLoc());
  Value gridSize = entry.addArgument(indexType, kernel.getLoc());
  bool hasBarrier = false;

  WalkResult result = fn.walk([&](Operation *op) -> WalkResult {
    auto dimensionX = [&](gpu::Dimension d) -> LogicalResult {
      if (d == gpu::Dimension::x)
        return success();
      return op->emitError("moe-emulate-gpu: only one-dimensional kernels "
                           "can be emulated");
    };
    if (auto id = dyn_cast<gpu::BlockIdOp>(op)) {
      if (failed(dimensionX(id.getDimension())))
        return WalkResult::interrupt();
      id.replaceAllUsesWith(blockId);
      id.erase();
    } else if (auto dim = dyn_cast<gpu::BlockDimOp>(op)) {
      if (failed(dimensionX(dim.getDimension())))
        return WalkResult::interrupt();
      dim.replaceAllUsesWith(blockSize);
      dim.erase();
    } else if (auto tid = dyn_cast<gpu::ThreadIdOp>(op)) {
      if (failed(dimensionX(tid.getDimension())))
        return WalkResult::interrupt();
      tid.replaceAllUsesWith(threadId);
      tid.erase();
    } else if (auto grid = dyn_cast<gpu::GridDimOp>(op)) {
      if (failed(dimensionX(grid.getDimension())))
        return WalkResult::interrupt();
      grid.replaceAllUsesWith(gridSize);
      grid.erase();
    } else if (isa<gpu::BarrierOp>(op)) {
      // Nothing to wait for in a block of one thread (checked at launch).
      hasBarrier = true;
      op->erase();
    } else if (auto ret = dyn_cast<gpu::ReturnOp>(op)) {
      OpBuilder rb(ret);
      func::ReturnOp::create(rb, ret.getLoc());
      ret.erase();
    } else if (isa<gpu::ShuffleOp>(op) ||
               isa_and_nonnull<NVVM::NVVMDialect>(op->getDialect())) {
      // Warp-collective: needs the warp's other lanes, which run later.
      op->emitError("moe-emulate-gpu: cannot emulate a warp-collective "
                    "operation one thread at a time (build the kernels with "
                    "convert-moe-to-gpu{emulate-warp-ops})");
      return WalkResult::interrupt();
    } else if (isa_and_nonnull<gpu::GPUDialect>(op->getDialect())) {
      op->emitError("moe-emulate-gpu: cannot emulate this operation");
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  if (result.wasInterrupted())
    return failure();
  checkAccesses(fn, kernel.getName(), module->getParentOfType<ModuleOp>());
  return EmulatedKernel{fn, hasBarrier};
}

/// Rewrites the host side: launches become loops over blocks and threads,
/// device memory ops their memref counterparts, and stream tokens vanish.
LogicalResult
emulateHost(ModuleOp module,
            const DenseMap<Operation *, EmulatedKernel> &kernels) {
  SmallVector<Operation *> erase;
  WalkResult result = module.walk<WalkOrder::PreOrder>([&](Operation *op)
                                                           -> WalkResult {
    if (isa<gpu::GPUModuleOp>(op))
      return WalkResult::skip();
    OpBuilder b(op);
    Location loc = op->getLoc();
    if (auto launch = dyn_cast<gpu::LaunchFuncOp>(op)) {
      Operation *kernel =
          SymbolTable::lookupNearestSymbolFrom(op, launch.getKernel());
      auto emulated = kernels.find(kernel);
      func::FuncOp fn =
          emulated == kernels.end() ? func::FuncOp() : emulated->second.fn;
      gpu::KernelDim3 grid = launch.getGridSizeOperandValues();
      gpu::KernelDim3 block = launch.getBlockSizeOperandValues();
      if (fn && emulated->second.hasBarrier &&
          !(matchPattern(grid.x, m_One()) && matchPattern(block.x, m_One()))) {
        // Threads run one after another: one waiting for a later one at a
        // barrier would wait forever.
        launch.emitError("moe-emulate-gpu: a kernel with barriers can be "
                         "emulated only in a grid of one thread");
        return WalkResult::interrupt();
      }
      if (!fn || !matchPattern(grid.y, m_One()) ||
          !matchPattern(grid.z, m_One()) || !matchPattern(block.y, m_One()) ||
          !matchPattern(block.z, m_One())) {
        launch.emitError("moe-emulate-gpu: only launches of emulated "
                         "one-dimensional kernels can be emulated");
        return WalkResult::interrupt();
      }
      Value zero = arith::ConstantIndexOp::create(b, loc, 0);
      Value one = arith::ConstantIndexOp::create(b, loc, 1);
      SmallVector<Value> operands(launch.getKernelOperands());
      scf::ForOp::create(
          b, loc, zero, grid.x, one, ValueRange{},
          [&](OpBuilder &ob, Location l, Value blockId, ValueRange) {
            scf::ForOp::create(
                ob, l, zero, block.x, one, ValueRange{},
                [&](OpBuilder &ib, Location il, Value threadId, ValueRange) {
                  SmallVector<Value> args(operands);
                  llvm::append_range(
                      args, ValueRange{blockId, block.x, threadId, grid.x});
                  func::CallOp::create(ib, il, fn, args);
                  scf::YieldOp::create(ib, il);
                });
            scf::YieldOp::create(ob, l);
          });
    } else if (auto alloc = dyn_cast<gpu::AllocOp>(op)) {
      auto buffer = memref::AllocOp::create(b, loc, alloc.getType(),
                                            alloc.getDynamicSizes());
      alloc.getMemref().replaceAllUsesWith(buffer);
    } else if (auto dealloc = dyn_cast<gpu::DeallocOp>(op)) {
      memref::DeallocOp::create(b, loc, dealloc.getMemref());
    } else if (auto copy = dyn_cast<gpu::MemcpyOp>(op)) {
      memref::CopyOp::create(b, loc, copy.getSrc(), copy.getDst());
    } else if (auto memset = dyn_cast<gpu::MemsetOp>(op)) {
      auto type = cast<MemRefType>(memset.getDst().getType());
      if (type.getRank() != 1) {
        memset.emitError("moe-emulate-gpu: only one-dimensional memsets can "
                         "be emulated");
        return WalkResult::interrupt();
      }
      Value zero = arith::ConstantIndexOp::create(b, loc, 0);
      Value one = arith::ConstantIndexOp::create(b, loc, 1);
      Value size = memref::DimOp::create(b, loc, memset.getDst(), zero);
      scf::ForOp::create(b, loc, zero, size, one, ValueRange{},
                         [&](OpBuilder &fb, Location l, Value i, ValueRange) {
                           memref::StoreOp::create(fb, l, memset.getValue(),
                                                   memset.getDst(),
                                                   ValueRange{i});
                           scf::YieldOp::create(fb, l);
                         });
    } else if (!isa<gpu::WaitOp>(op)) {
      if (isa_and_nonnull<gpu::GPUDialect>(op->getDialect())) {
        op->emitError("moe-emulate-gpu: cannot emulate this operation");
        return WalkResult::interrupt();
      }
      return WalkResult::advance();
    }
    erase.push_back(op);
    return WalkResult::advance();
  });
  if (result.wasInterrupted())
    return failure();
  // Consumers of a token come after its producer: erase them first.
  for (Operation *op : llvm::reverse(erase))
    op->erase();
  return success();
}

struct MoEEmulateGPUPass
    : public moe::impl::MoEEmulateGPUBase<MoEEmulateGPUPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    DenseMap<Operation *, EmulatedKernel> kernels;
    for (auto gpuModule : module.getOps<gpu::GPUModuleOp>())
      for (auto kernel : gpuModule.getOps<gpu::GPUFuncOp>()) {
        FailureOr<EmulatedKernel> fn = emulateKernel(kernel, gpuModule);
        if (failed(fn))
          return signalPassFailure();
        kernels[kernel] = *fn;
      }
    if (failed(emulateHost(module, kernels)))
      return signalPassFailure();
    for (auto gpuModule : llvm::to_vector(module.getOps<gpu::GPUModuleOp>()))
      gpuModule.erase();
    module->removeAttr(gpu::GPUDialect::getContainerModuleAttrName());
  }
};
} // namespace
