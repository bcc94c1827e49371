//===- ConvertMoEToCPU.cpp - moe model to buffers and kernel calls --------===//
//
// The CPU backend is a set of hand-optimised kernels (grouped expert GEMMs,
// routers) in the runtime; this pass emits the program around them: buffer
// allocation, the pass loop, token compaction and the routing trace. Each
// tensor value gets one buffer sized for all tokens; inside a loop, ops work
// on the prefix of rows that holds the still-active tokens.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETOCPU
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {
constexpr StringLiteral kCInterface = "llvm.emit_c_interface";

/// The kernels take any strided view, so call operands are cast to a memref
/// type with dynamic sizes, strides and offset: one declaration fits all.
MemRefType anyView(Type elementType, int64_t rank) {
  SmallVector<int64_t> dynamic(rank, ShapedType::kDynamic);
  return MemRefType::get(
      dynamic, elementType,
      StridedLayoutAttr::get(elementType.getContext(), ShapedType::kDynamic,
                             dynamic));
}

/// Lowers one model function. Tensor values map to buffers with one row per
/// token; `rows` is the number of rows the current ops work on.
class ModelLowering {
public:
  ModelLowering(ModuleOp module, ArrayRef<WeightOp> weights)
      : module(module), weights(weights), builder(module.getContext()) {}

  LogicalResult lower(func::FuncOp func);

private:
  LogicalResult checkForm(func::FuncOp func);
  LogicalResult emitOp(Operation *op);
  LogicalResult emitLoop(LoopOp loop);

  Value view(Value tensor);
  Value define(Value tensor);
  Value allocate(MemRefType type);
  Value weight(FlatSymbolRefAttr symbol) { return weightArgs.lookup(symbol.getAttr()); }
  Operation *call(StringRef kernel, ValueRange operands, TypeRange results = {});
  Value constI32(int64_t v);
  Value constI64(int64_t v);
  Value constF32(APFloat v);

  ModuleOp module;
  ArrayRef<WeightOp> weights;
  OpBuilder builder;
  Location loc = builder.getUnknownLoc();
  /// Allocations go to the function entry, each after the previous one, so
  /// that loop passes reuse them.
  Operation *lastAllocation = nullptr;
  SmallVector<Value> allocations;

  DenseMap<Value, Value> buffers;
  DenseMap<StringAttr, Value> weightArgs;
  Value tokens, rows;
  Value exitLoopArg, traceIdsArg, traceGatesArg;
  // Trace steps of the loop being lowered: step = pass * layers + layer.
  Value passIndex, activeTokens;
  int64_t layersPerPass = 0, layerInPass = 0, topK = 0;
};
} // namespace

Value ModelLowering::constI32(int64_t v) {
  return arith::ConstantIntOp::create(builder, loc, v, 32);
}
Value ModelLowering::constI64(int64_t v) {
  return arith::ConstantIntOp::create(builder, loc, v, 64);
}
Value ModelLowering::constF32(APFloat v) {
  return arith::ConstantFloatOp::create(builder, loc, builder.getF32Type(), v);
}

Operation *ModelLowering::call(StringRef kernel, ValueRange operands,
                               TypeRange results) {
  SmallVector<Value> args;
  for (Value v : operands) {
    auto type = dyn_cast<MemRefType>(v.getType());
    if (!type) {
      args.push_back(v);
      continue;
    }
    MemRefType target = anyView(type.getElementType(), type.getRank());
    args.push_back(type == target
                       ? v
                       : memref::CastOp::create(builder, loc, target, v));
  }
  auto fnType = builder.getFunctionType(ValueRange(args).getTypes(), results);
  if (!module.lookupSymbol<func::FuncOp>(kernel)) {
    OpBuilder::InsertionGuard guard(builder);
    builder.setInsertionPointToStart(module.getBody());
    auto decl = func::FuncOp::create(builder, loc, kernel, fnType);
    decl.setPrivate();
    decl->setAttr(kCInterface, builder.getUnitAttr());
  }
  return func::CallOp::create(builder, loc, kernel, results, args);
}

/// The buffer of `tensor`, restricted to the rows in use.
Value ModelLowering::view(Value tensor) {
  Value buffer = buffers.lookup(tensor);
  if (rows == tokens)
    return buffer;
  auto type = cast<MemRefType>(buffer.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), builder.getIndexAttr(0));
  SmallVector<OpFoldResult> strides(type.getRank(), builder.getIndexAttr(1));
  SmallVector<OpFoldResult> sizes = {rows};
  for (int64_t d : type.getShape().drop_front())
    sizes.push_back(builder.getIndexAttr(d));
  return memref::SubViewOp::create(builder, loc, buffer, offsets, sizes,
                                   strides);
}

/// Allocates the buffer of a new tensor value and returns its view.
Value ModelLowering::define(Value tensor) {
  auto type = cast<RankedTensorType>(tensor.getType());
  // Masks are bytes for the kernels; activations are computed in f32.
  Type element = type.getElementType().isInteger(1)
                     ? builder.getI8Type()
                     : type.getElementType().isInteger(32)
                           ? type.getElementType()
                           : builder.getF32Type();
  SmallVector<int64_t> shape(type.getShape());
  shape[0] = ShapedType::kDynamic;
  buffers[tensor] = allocate(MemRefType::get(shape, element));
  return view(tensor);
}

/// Allocates a buffer with one row per token at the function entry.
Value ModelLowering::allocate(MemRefType type) {
  OpBuilder::InsertionGuard guard(builder);
  builder.setInsertionPointAfter(lastAllocation);
  auto buffer = memref::AllocOp::create(builder, loc, type, ValueRange{tokens});
  allocations.push_back(buffer);
  lastAllocation = buffer;
  return buffer;
}

LogicalResult ModelLowering::checkForm(func::FuncOp func) {
  FunctionType type = func.getFunctionType();
  auto hidden = type.getNumInputs() == 1
                    ? dyn_cast<RankedTensorType>(type.getInput(0))
                    : RankedTensorType();
  if (!hidden || type.getNumResults() != 2 ||
      type.getResult(0) != hidden ||
      !isa<RankedTensorType>(type.getResult(1)))
    return func.emitError("convert-moe-to-cpu expects a model function "
                          "(hidden) -> (hidden, exit_loop), as moe-import "
                          "emits");
  auto loops = llvm::to_vector(func.getBody().getOps<LoopOp>());
  if (loops.size() != 1)
    return func.emitError("convert-moe-to-cpu expects exactly one moe.loop "
                          "in a model function (a model without loops is a "
                          "loop of 1 pass)");
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  if (ret.getOperand(1) != loops[0].getExitLoop())
    return func.emitError("the second result must be the loop's exit_loop");
  for (ExpertsOp experts : func.getOps<ExpertsOp>())
    return experts.emitError("convert-moe-to-cpu expects every moe.experts "
                             "inside the moe.loop");
  for (Operation &op : loops[0].getBody().front()) {
    if (auto experts = dyn_cast<ExpertsOp>(op)) {
      int64_t k = cast<RankedTensorType>(experts.getIds().getType()).getDimSize(1);
      if (topK && k != topK)
        return experts.emitError("all layers must route the same top_k: the "
                                 "routing trace is [steps, tokens, top_k]");
      topK = k;
      ++layersPerPass;
    }
    if (auto exit = dyn_cast<ExitOp>(op))
      if (exit.getCriterion() != ExitCriterion::cosine &&
          exit.getCriterion() != ExitCriterion::relative_l2)
        return exit.emitError("the CPU backend supports the cosine and "
                              "relative_l2 exit criteria of moe_stack models");
  }
  return success();
}

LogicalResult ModelLowering::lower(func::FuncOp func) {
  if (failed(checkForm(func)))
    return failure();
  MLIRContext *ctx = func.getContext();
  loc = func.getLoc();
  auto hidden = cast<RankedTensorType>(func.getFunctionType().getInput(0));
  int64_t d = hidden.getDimSize(1);
  Type f32 = builder.getF32Type(), i32 = builder.getI32Type();
  int64_t dyn = ShapedType::kDynamic;

  SmallVector<Type> inputs = {MemRefType::get({dyn, d}, f32),
                              MemRefType::get({dyn, d}, f32),
                              MemRefType::get({dyn}, i32),
                              MemRefType::get({dyn, dyn, topK}, i32),
                              MemRefType::get({dyn, dyn, topK}, f32)};
  for (WeightOp w : weights)
    inputs.push_back(MemRefType::get(w.getTensorType().getShape(), f32));

  builder.setInsertionPoint(func);
  auto lowered = func::FuncOp::create(builder, loc, func.getName(),
                                      FunctionType::get(ctx, inputs, {}));
  lowered->setAttr(kCInterface, builder.getUnitAttr());
  Block *entry = lowered.addEntryBlock();
  builder.setInsertionPointToStart(entry);

  Value hiddenIn = entry->getArgument(0), hiddenOut = entry->getArgument(1);
  exitLoopArg = entry->getArgument(2);
  traceIdsArg = entry->getArgument(3);
  traceGatesArg = entry->getArgument(4);
  for (auto [w, arg] : llvm::zip(weights, entry->getArguments().drop_front(5)))
    weightArgs[WeightOp(w).getSymNameAttr()] = arg;

  tokens = memref::DimOp::create(builder, loc, hiddenIn, 0);
  rows = tokens;
  lastAllocation = tokens.getDefiningOp();
  buffers[func.getArgument(0)] = hiddenIn;

  for (Operation &op : func.getBody().front().without_terminator())
    if (failed(emitOp(&op)))
      return failure();

  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  memref::CopyOp::create(builder, loc, view(ret.getOperand(0)), hiddenOut);
  for (Value buffer : allocations)
    memref::DeallocOp::create(builder, loc, buffer);
  func::ReturnOp::create(builder, loc);
  func.erase();
  return success();
}

LogicalResult ModelLowering::emitOp(Operation *op) {
  return TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](RmsNormOp norm) {
        Value in = view(norm.getInput());
        call("moert_rms_norm", {in, weight(norm.getWeightAttr()),
                                define(norm.getResult()),
                                constF32(norm.getEps())});
        return success();
      })
      .Case([&](RouteOp route) {
        Value in = view(route.getInput());
        Value ids = define(route.getIds()), gates = define(route.getGates());
        call("moert_route",
             {in, weight(route.getRouterAttr()), ids, gates,
              constI32(static_cast<int64_t>(route.getScoring())),
              constI32(route.getNormalize()), constF32(route.getScaling())});
        return success();
      })
      .Case([&](ExpertsOp experts) {
        Value in = view(experts.getInput());
        Value ids = view(experts.getIds()), gates = view(experts.getGates());
        call("moert_experts",
             {in, ids, gates, weight(experts.getGateProjAttr()),
              weight(experts.getUpProjAttr()), weight(experts.getDownProjAttr()),
              define(experts.getResult()),
              constI32(static_cast<int64_t>(experts.getActivation()))});
        // Trace step = pass * layers + layer.
        Value step = arith::AddIOp::create(
            builder, loc,
            arith::MulIOp::create(builder, loc, passIndex,
                                  constI64(layersPerPass)),
            constI64(layerInPass++));
        call("moert_record_step",
             {ids, gates, activeTokens, traceIdsArg, traceGatesArg, step});
        return success();
      })
      .Case([&](arith::AddFOp add) -> LogicalResult {
        if (!isa<RankedTensorType>(add.getType()))
          return add.emitError("convert-moe-to-cpu handles tensor additions "
                               "(residuals) only");
        Value lhs = view(add.getLhs()), rhs = view(add.getRhs());
        call("moert_add", {lhs, rhs, define(add.getResult())});
        return success();
      })
      .Case([&](ExitOp exit) {
        Value h = view(exit.getHidden()), prev = view(exit.getPrevious());
        call("moert_exit_test",
             {h, prev, define(exit.getExits()),
              constI32(static_cast<int64_t>(exit.getCriterion())),
              constF32(exit.getThreshold())});
        return success();
      })
      .Case([&](LoopOp loop) { return emitLoop(loop); })
      .Default([&](Operation *other) {
        return other->emitError("convert-moe-to-cpu cannot lower this op");
      });
}

LogicalResult ModelLowering::emitLoop(LoopOp loop) {
  Value state = define(loop.getResult());
  memref::CopyOp::create(builder, loc, view(loop.getInit()), state);
  buffers[loop.getExitLoop()] = exitLoopArg;
  // Indices of the still-active tokens, compacted after every pass.
  Value activeAll = allocate(
      MemRefType::get({ShapedType::kDynamic}, builder.getI32Type()));
  int64_t passes = loop.getPasses();
  call("moert_loop_init", {activeAll, exitLoopArg, traceIdsArg, traceGatesArg,
                           constI64(passes)});

  Value zero = arith::ConstantIndexOp::create(builder, loc, 0);
  Value one = arith::ConstantIndexOp::create(builder, loc, 1);
  Value count = arith::ConstantIndexOp::create(builder, loc, passes);
  auto forOp = scf::ForOp::create(builder, loc, zero, count, one,
                                  ValueRange{tokens});
  OpBuilder::InsertionGuard guard(builder);
  builder.setInsertionPointToStart(forOp.getBody());
  rows = forOp.getRegionIterArgs()[0];
  passIndex = arith::IndexCastOp::create(builder, loc, builder.getI64Type(),
                                         forOp.getInductionVar());
  layerInPass = 0;

  // The active tokens are the first `rows` entries of activeAll.
  SmallVector<OpFoldResult> offset = {builder.getIndexAttr(0)};
  SmallVector<OpFoldResult> size = {rows}, stride = {builder.getIndexAttr(1)};
  activeTokens = memref::SubViewOp::create(builder, loc, activeAll, offset,
                                           size, stride);
  Value passInput = define(loop.getPassInput());
  call("moert_gather_rows", {state, activeTokens, passInput});

  for (Operation &op : loop.getBody().front().without_terminator())
    if (failed(emitOp(&op)))
      return failure();

  YieldOp yield = loop.getYield();
  call("moert_scatter_rows", {view(yield.getValues()[0]), activeTokens, state});
  Value remaining = rows;
  if (ExitOp exit = loop.getExit()) {
    Operation *update = call(
        "moert_exit_update",
        {view(exit.getExits()), activeAll, exitLoopArg, passIndex,
         constI64(exit.getMinPasses()), constI64(passes)},
        builder.getI64Type());
    remaining = arith::IndexCastOp::create(builder, loc, builder.getIndexType(),
                                           update->getResult(0));
  }
  scf::YieldOp::create(builder, loc, remaining);
  rows = tokens;
  return success();
}

namespace {
struct ConvertMoEToCPUPass
    : public moe::impl::ConvertMoEToCPUBase<ConvertMoEToCPUPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<WeightOp> weights(module.getOps<WeightOp>());
    SmallVector<func::FuncOp> models;
    for (func::FuncOp func : module.getOps<func::FuncOp>())
      if (!func.isExternal() && !func.getOps<LoopOp>().empty())
        models.push_back(func);
    for (func::FuncOp func : models)
      if (failed(ModelLowering(module, weights).lower(func)))
        return signalPassFailure();
    for (WeightOp w : weights)
      w.erase();
  }
};
} // namespace
