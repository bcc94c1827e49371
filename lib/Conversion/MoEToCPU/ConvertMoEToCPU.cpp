//===- ConvertMoEToCPU.cpp - moe model to buffers and kernel calls --------===//
//
// The CPU backend is a set of hand-optimised kernels (grouped expert GEMMs,
// routers) in the runtime; this pass emits the program around them: buffer
// allocation, the pass loop, token compaction and the routing trace. Each
// tensor value gets one buffer sized for all tokens; inside a compacting
// loop, ops work on the prefix of rows that holds the still-active tokens.
// Plan-ordered tensors have planRows(rows) rows instead.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/KernelProgram.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringSet.h"
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
  return MemRefType::get(dynamic, elementType,
                         StridedLayoutAttr::get(elementType.getContext(),
                                                ShapedType::kDynamic, dynamic));
}

/// The buffers of a !moe.plan value (see moert/CpuPlanKernels.h).
struct PlanBuffers {
  Value offsets, rowToken, slotRow;
};

/// Lowers one model function. Tensor values map to buffers; `rows` is the
/// number of token rows the current ops work on.
class ModelLowering {
public:
  ModelLowering(ModuleOp module, ArrayRef<WeightOp> weights,
                const KernelProgramOptions &options,
                const DenseSet<StringAttr> &bf16Buffers)
      : module(module), weights(weights), options(options),
        bf16Buffers(bf16Buffers), builder(module.getContext()) {}

  LogicalResult lower(func::FuncOp func);
  LogicalResult lowerDecoder(func::FuncOp func);

private:
  Block *createLoweredFunction(func::FuncOp func, SmallVector<Type> inputs);
  LogicalResult checkForm(func::FuncOp func);
  LogicalResult checkLoopBody(LoopOp loop);
  LogicalResult emitOp(Operation *op);
  LogicalResult emitLoop(LoopOp loop);
  FailureOr<Value> emitPass(LoopOp loop, Value pass,
                            std::optional<int64_t> staticPass, Value count,
                            Value activeAll);
  void recordStep(Value ids, Value gates);
  bool exitCanFire(ExitOp exit, int64_t pass) const;

  Value rowsOf(Value rowCount, std::optional<PlanType> plan);
  Value view(Value tensor);
  Value define(Value tensor, std::optional<PlanType> plan = std::nullopt);
  Value allocate(MemRefType type, std::optional<PlanType> plan = std::nullopt);
  Value prefix(Value buffer, Value size);
  Value weight(FlatSymbolRefAttr symbol) {
    return weightArgs.lookup(symbol.getAttr());
  }
  /// `kernel`, or its CPU form for bf16 weights (`<kernel>_bf16`) when
  /// `symbol` is bound bf16; the GPU kernels take either element type.
  std::string kernelFor(StringRef kernel, FlatSymbolRefAttr symbol) const {
    bool bf16 = !options.bf16Weights && bf16Buffers.contains(symbol.getAttr());
    return (kernel + (bf16 ? "_bf16" : "")).str();
  }
  Operation *call(StringRef kernel, ValueRange operands,
                  TypeRange results = {});
  Value constI32(int64_t v);
  Value constI64(int64_t v);
  Value constIndex(int64_t v);
  Value constF32(APFloat v);

  ModuleOp module;
  ArrayRef<WeightOp> weights;
  KernelProgramOptions options;
  /// The weights bound as bf16 buffers.
  const DenseSet<StringAttr> &bf16Buffers;
  OpBuilder builder;
  Location loc = builder.getUnknownLoc();
  /// Allocations go to the function entry, each after the previous one, so
  /// that loop passes reuse them.
  Operation *lastAllocation = nullptr;
  SmallVector<Value> allocations;
  llvm::StringSet<> declaredKernels;

  DenseMap<Value, Value> buffers;
  /// Plan-ordered tensors and the plan that orders their rows.
  DenseMap<Value, PlanType> planRows;
  DenseMap<Value, PlanBuffers> plans;
  DenseMap<StringAttr, Value> weightArgs;
  Value tokens, rows;
  Value exitLoopArg, traceIdsArg, traceGatesArg;
  // The pass being lowered: trace step = pass * layers + layer.
  Value passIndex, activeTokens;
  std::optional<int64_t> staticPassIndex;
  bool byToken = false;
  int64_t layersPerPass = 0, layerInPass = 0, topK = 0;
  /// Decoders: the KV cache buffers of each attention op's cache slot, and
  /// a one-element stand-in for absent optional weights.
  DenseMap<int64_t, std::pair<Value, Value>> kvCaches;
  int64_t slotsPerPass = 0;
  /// The caches of attentions outside the loop follow the loop's.
  int64_t outerCacheBase = 0;
  Value absentWeightBuffer, unitNormBuffer;
  /// An empty weight: the kernels' norm without gain, and an absent
  /// attention bias.
  Value unitNormWeight() {
    if (!unitNormBuffer)
      unitNormBuffer = allocate(MemRefType::get({0}, builder.getF32Type()));
    return unitNormBuffer;
  }
  /// A one-element stand-in for an absent optional weight, allocated on
  /// first use.
  Value absentWeight() {
    if (!absentWeightBuffer)
      absentWeightBuffer = allocate(MemRefType::get({1}, builder.getF32Type()));
    return absentWeightBuffer;
  }
};
} // namespace

Value ModelLowering::constI32(int64_t v) {
  return arith::ConstantIntOp::create(builder, loc, v, 32);
}
Value ModelLowering::constI64(int64_t v) {
  return arith::ConstantIntOp::create(builder, loc, v, 64);
}
Value ModelLowering::constIndex(int64_t v) {
  return arith::ConstantIndexOp::create(builder, loc, v);
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
    args.push_back(
        type == target ? v : memref::CastOp::create(builder, loc, target, v));
  }
  auto fnType = builder.getFunctionType(ValueRange(args).getTypes(), results);
  // Declared once per module; a set, not a symbol-table scan per call.
  if (declaredKernels.insert(kernel).second &&
      !module.lookupSymbol<func::FuncOp>(kernel)) {
    OpBuilder::InsertionGuard guard(builder);
    builder.setInsertionPointToStart(module.getBody());
    auto decl = func::FuncOp::create(builder, loc, kernel, fnType);
    decl.setPrivate();
    decl->setAttr(kCInterface, builder.getUnitAttr());
  }
  return func::CallOp::create(builder, loc, kernel, results, args);
}

/// Rows of a buffer for `rowCount` tokens: the tokens themselves, or the
/// rows of a plan over them.
Value ModelLowering::rowsOf(Value rowCount, std::optional<PlanType> plan) {
  if (!plan)
    return rowCount;
  Value slots = arith::MulIOp::create(builder, loc, rowCount,
                                      constIndex(plan->getTopK()));
  return arith::AddIOp::create(
      builder, loc, slots,
      constIndex(plan->getExperts() * (plan->getTile() - 1)));
}

/// The first `size` rows of `buffer`.
Value ModelLowering::prefix(Value buffer, Value size) {
  auto type = cast<MemRefType>(buffer.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), builder.getIndexAttr(0));
  SmallVector<OpFoldResult> strides(type.getRank(), builder.getIndexAttr(1));
  SmallVector<OpFoldResult> sizes = {size};
  for (int64_t d : type.getShape().drop_front())
    sizes.push_back(builder.getIndexAttr(d));
  return memref::SubViewOp::create(builder, loc, buffer, offsets, sizes,
                                   strides);
}

/// The buffer of `tensor`, restricted to the rows in use.
Value ModelLowering::view(Value tensor) {
  Value buffer = buffers.lookup(tensor);
  if (rows == tokens)
    return buffer;
  auto plan = planRows.find(tensor);
  return prefix(buffer, rowsOf(rows, plan == planRows.end()
                                         ? std::nullopt
                                         : std::optional(plan->second)));
}

/// Allocates the buffer of a new tensor value and returns its view.
Value ModelLowering::define(Value tensor, std::optional<PlanType> plan) {
  auto type = cast<RankedTensorType>(tensor.getType());
  // Masks are bytes for the kernels; activations are computed in f32.
  Type element = type.getElementType().isInteger(1)    ? builder.getI8Type()
                 : type.getElementType().isInteger(32) ? type.getElementType()
                                                       : builder.getF32Type();
  SmallVector<int64_t> shape(type.getShape());
  shape[0] = ShapedType::kDynamic;
  if (plan)
    planRows[tensor] = *plan;
  // Unrolled passes lower the body once per pass; they share its buffers.
  if (!buffers.count(tensor))
    buffers[tensor] = allocate(MemRefType::get(shape, element), plan);
  return view(tensor);
}

/// Allocates a buffer at the function entry; a dynamic first dimension has
/// one row per token, or the rows of `plan` over all tokens.
Value ModelLowering::allocate(MemRefType type, std::optional<PlanType> plan) {
  OpBuilder::InsertionGuard guard(builder);
  builder.setInsertionPointAfter(lastAllocation);
  SmallVector<Value> sizes;
  if (type.getNumDynamicDims())
    sizes.push_back(rowsOf(tokens, plan));
  auto buffer = memref::AllocOp::create(builder, loc, type, sizes);
  allocations.push_back(buffer);
  lastAllocation = buffer;
  return buffer;
}

LogicalResult ModelLowering::checkLoopBody(LoopOp loop) {
  for (Operation &op : loop.getBody().front()) {
    // A compacted pass reorders token rows, so every value the body reads
    // must come from the pass itself.
    for (Value operand : op.getOperands())
      if (!loop.getBody().isAncestor(operand.getParentRegion()))
        return op.emitError() << options.passName
                              << ": a loop body may only use "
                                 "values of its own pass";
    if (isExpertLayer(&op)) {
      Value ids = getExpertLayerIds(&op);
      if (!ids)
        return op.emitError() << options.passName
                              << ": the plan of a layer must "
                                 "come from moe.plan in the loop body";
      int64_t k = cast<RankedTensorType>(ids.getType()).getDimSize(1);
      if (topK && k != topK)
        return op.emitError("all layers must route the same top_k: the "
                            "routing trace is [steps, tokens, top_k]");
      topK = k;
      ++layersPerPass;
    }
  }
  return success();
}

LogicalResult ModelLowering::checkForm(func::FuncOp func) {
  FunctionType type = func.getFunctionType();
  auto hidden = type.getNumInputs() == 1
                    ? dyn_cast<RankedTensorType>(type.getInput(0))
                    : RankedTensorType();
  if (!hidden || type.getNumResults() != 2 || type.getResult(0) != hidden ||
      !isa<RankedTensorType>(type.getResult(1)))
    return func.emitError() << options.passName
                            << " expects a model function "
                               "(hidden) -> (hidden, exit_loop), as moe-import "
                               "emits";
  auto loops = llvm::to_vector(func.getBody().getOps<LoopOp>());
  if (loops.size() != 1)
    return func.emitError()
           << options.passName
           << " expects exactly one moe.loop "
              "in a model function (a model without loops is a "
              "loop of 1 pass)";
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  if (ret.getOperand(1) != loops[0].getExitLoop())
    return func.emitError("the second result must be the loop's exit_loop");
  for (Operation &op : func.getBody().front())
    if (isExpertLayer(&op))
      return op.emitError() << options.passName
                            << " expects every expert group "
                               "inside the moe.loop";
  return checkLoopBody(loops[0]);
}

LogicalResult ModelLowering::lower(func::FuncOp func) {
  if (failed(checkForm(func)))
    return failure();
  loc = func.getLoc();
  auto hidden = cast<RankedTensorType>(func.getFunctionType().getInput(0));
  int64_t d = hidden.getDimSize(1);
  Type f32 = builder.getF32Type(), i32 = builder.getI32Type();
  int64_t dyn = ShapedType::kDynamic;

  SmallVector<Type> inputs = {
      MemRefType::get({dyn, d}, f32), MemRefType::get({dyn, d}, f32),
      MemRefType::get({dyn}, i32), MemRefType::get({dyn, dyn, topK}, i32),
      MemRefType::get({dyn, dyn, topK}, f32)};
  Block *entry = createLoweredFunction(func, inputs);

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

/// Creates the buffer-level function that replaces `func`: `inputs`, then
/// one buffer per weight (f32, or bf16 for the bf16 weights the options
/// keep), with MLIR's C interface; returns its entry block, with the
/// builder at its start.
Block *ModelLowering::createLoweredFunction(func::FuncOp func,
                                            SmallVector<Type> inputs) {
  for (WeightOp w : weights) {
    RankedTensorType type = w.getTensorType();
    Type element = bf16Buffers.contains(w.getSymNameAttr())
                       ? type.getElementType()
                       : builder.getF32Type();
    inputs.push_back(MemRefType::get(type.getShape(), element));
  }
  builder.setInsertionPoint(func);
  auto lowered =
      func::FuncOp::create(builder, loc, func.getName(),
                           FunctionType::get(func.getContext(), inputs, {}));
  lowered->setAttr(kCInterface, builder.getUnitAttr());
  Block *entry = lowered.addEntryBlock();
  builder.setInsertionPointToStart(entry);
  return entry;
}

/// A decoder `@f(tokens, positions) -> logits` becomes
/// `@f(tokens, positions, logits, k0, v0, k1, v1, ..., weights...)`: the
/// KV caches, [max positions, kv_heads * head_dim] each, in cache-slot order.
LogicalResult ModelLowering::lowerDecoder(func::FuncOp func) {
  loc = func.getLoc();
  FunctionType type = func.getFunctionType();
  auto logitsType = dyn_cast<RankedTensorType>(type.getResult(0));
  auto loops = llvm::to_vector(func.getBody().getOps<LoopOp>());
  if (type.getNumResults() != 2 || loops.size() != 1 ||
      type.getResult(1) != loops[0].getExitLoop().getType())
    return func.emitError()
           << options.passName
           << " expects a decoder function "
              "(tokens, positions) -> (logits, exit_loop) whose "
              "layers run in one moe.loop, as moe-import emits";
  LoopOp loop = loops[0];
  if (loop.getMode() != LoopMode::unroll)
    return loop.emitError() << options.passName
                            << ": a decoder loop must be "
                               "unrolled (each pass has its own KV caches)";
  if (loop.getCompactExits())
    return loop.emitError() << options.passName
                            << ": a decoder loop cannot compact "
                               "exited tokens (attention mixes tokens)";
  // Pass p's attention with cache slot s uses cache p * slotsPerPass + s.
  SmallVector<AttentionOp> attentions = loop.getAttentionsBySlot();
  slotsPerPass = attentions.size();
  Type f32 = builder.getF32Type(), i32 = builder.getI32Type();
  int64_t dyn = ShapedType::kDynamic;
  SmallVector<Type> inputs = {
      MemRefType::get({dyn}, i32), MemRefType::get({dyn}, i32),
      MemRefType::get({dyn, logitsType.getDimSize(1)}, f32),
      MemRefType::get({dyn}, i32)};
  // Attentions outside the loop (LoopLM's head and tail layers) have one
  // cache each, after the loop's, in their own slot order.
  SmallVector<AttentionOp> outer(func.getBody().getOps<AttentionOp>());
  llvm::sort(outer, [](AttentionOp a, AttentionOp b) {
    return a.getCacheSlot() < b.getCacheSlot();
  });
  for (auto [index, a] : llvm::enumerate(outer))
    if (a.getCacheSlot() != index)
      return a.emitError() << options.passName
                           << ": the attentions outside the "
                              "loop must number their cache slots 0.."
                           << outer.size() - 1;
  auto appendCache = [&](AttentionOp a) {
    int64_t width = a.getNumKvHeads() * a.getHeadDim();
    inputs.append(2, MemRefType::get({dyn, width}, f32));
  };
  for (int64_t pass = 0; pass < static_cast<int64_t>(loop.getPasses()); ++pass)
    for (AttentionOp a : attentions)
      appendCache(a);
  for (AttentionOp a : outer)
    appendCache(a);
  Block *entry = createLoweredFunction(func, inputs);
  outerCacheBase = loop.getPasses() * slotsPerPass;
  int64_t caches = outerCacheBase + outer.size();
  for (int64_t slot = 0; slot < caches; ++slot)
    kvCaches[slot] = {entry->getArgument(4 + 2 * slot),
                      entry->getArgument(5 + 2 * slot)};
  for (auto [w, arg] :
       llvm::zip(weights, entry->getArguments().drop_front(4 + 2 * caches)))
    weightArgs[WeightOp(w).getSymNameAttr()] = arg;
  exitLoopArg = entry->getArgument(3);

  tokens = memref::DimOp::create(builder, loc, entry->getArgument(0), 0);
  rows = tokens;
  lastAllocation = tokens.getDefiningOp();
  buffers[func.getArgument(0)] = entry->getArgument(0);
  buffers[func.getArgument(1)] = entry->getArgument(1);

  for (Operation &op : func.getBody().front().without_terminator())
    if (failed(emitOp(&op)))
      return failure();
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  memref::CopyOp::create(builder, loc, view(ret.getOperand(0)),
                         entry->getArgument(2));
  if (ret.getOperand(1) != loop.getExitLoop())
    return func.emitError("the second result must be the loop's exit_loop");
  for (Value buffer : allocations)
    memref::DeallocOp::create(builder, loc, buffer);
  func::ReturnOp::create(builder, loc);
  func.erase();
  return success();
}

/// Records the routing of the current layer in the trace.
void ModelLowering::recordStep(Value ids, Value gates) {
  if (!traceIdsArg) // decoders return logits, not a routing trace
    return;
  Value step = staticPassIndex
                   ? constI64(*staticPassIndex * layersPerPass + layerInPass)
                   : arith::AddIOp::create(
                         builder, loc,
                         arith::MulIOp::create(builder, loc, passIndex,
                                               constI64(layersPerPass)),
                         constI64(layerInPass));
  ++layerInPass;
  call("moert_record_step", {ids, gates, activeTokens, traceIdsArg,
                             traceGatesArg, step, constI32(byToken)});
}

/// Whether the contract tests exits after pass `pass`.
bool ModelLowering::exitCanFire(ExitOp exit, int64_t pass) const {
  auto loop = cast<LoopOp>(exit->getParentOp());
  return pass + 1 >= static_cast<int64_t>(exit.getMinPasses()) &&
         pass < static_cast<int64_t>(loop.getPasses()) - 1;
}

LogicalResult ModelLowering::emitOp(Operation *op) {
  return TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](RmsNormOp norm) {
        Value in = view(norm.getInput());
        call("moert_rms_norm",
             {in,
              norm.getWeightAttr() ? weight(norm.getWeightAttr())
                                   : unitNormWeight(),
              define(norm.getResult()), constF32(norm.getEps())});
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
              weight(experts.getUpProjAttr()),
              weight(experts.getDownProjAttr()), define(experts.getResult()),
              constI32(static_cast<int64_t>(experts.getActivation()))});
        recordStep(ids, gates);
        return success();
      })
      .Case([&](MlpOp mlp) {
        call(kernelFor("moert_mlp", mlp.getGateProjAttr()),
             {view(mlp.getInput()), weight(mlp.getGateProjAttr()),
              weight(mlp.getUpProjAttr()), weight(mlp.getDownProjAttr()),
              define(mlp.getResult()),
              constI32(static_cast<int64_t>(mlp.getActivation()))});
        return success();
      })
      .Case([&](PlanOp planOp) {
        PlanType type = planOp.getPlan().getType();
        Value ids = view(planOp.getIds());
        if (!plans.count(planOp.getPlan())) {
          Type i32 = builder.getI32Type();
          plans[planOp.getPlan()] = {
              allocate(MemRefType::get({type.getExperts() + 1}, i32)),
              allocate(MemRefType::get({ShapedType::kDynamic}, i32), type),
              allocate(MemRefType::get({ShapedType::kDynamic, type.getTopK()},
                                       i32))};
        }
        const PlanBuffers &plan = plans[planOp.getPlan()];
        call("moert_plan",
             {ids, plan.offsets, prefix(plan.rowToken, rowsOf(rows, type)),
              prefix(plan.slotRow, rows), constI64(type.getTile())});
        return success();
      })
      .Case([&](DispatchOp dispatch) {
        PlanType type = dispatch.getPlan().getType();
        const PlanBuffers &plan = plans[dispatch.getPlan()];
        Value in = view(dispatch.getInput());
        call("moert_dispatch",
             {in, prefix(plan.rowToken, rowsOf(rows, type)), plan.offsets,
              define(dispatch.getResult(), type)});
        return success();
      })
      .Case([&](GroupedMatmulOp matmul) {
        PlanType type = matmul.getPlan().getType();
        Value in = view(matmul.getInput());
        call("moert_grouped_matmul", {in, plans[matmul.getPlan()].offsets,
                                      weight(matmul.getWeightAttr()),
                                      define(matmul.getResult(), type)});
        return success();
      })
      .Case([&](GluOp glu) {
        auto plan = planRows.find(glu.getGate());
        Value g = view(glu.getGate()), u = view(glu.getUp());
        call("moert_glu",
             {g, u,
              define(glu.getResult(), plan == planRows.end()
                                          ? std::nullopt
                                          : std::optional(plan->second)),
              constI32(static_cast<int64_t>(glu.getActivation()))});
        return success();
      })
      .Case([&](CombineOp combine) {
        const PlanBuffers &plan = plans[combine.getPlan()];
        Value in = view(combine.getInput()), gates = view(combine.getGates());
        call("moert_combine", {in, prefix(plan.slotRow, rows), gates,
                               define(combine.getResult())});
        recordStep(view(getExpertLayerIds(combine)), gates);
        return success();
      })
      .Case([&](FusedExpertsOp fused) {
        PlanType type = fused.getPlan().getType();
        const PlanBuffers &plan = plans[fused.getPlan()];
        Value in = view(fused.getInput()), gates = view(fused.getGates());
        call(kernelFor("moert_fused_experts", fused.getGateProjAttr()),
             {in, prefix(plan.rowToken, rowsOf(rows, type)), plan.offsets,
              prefix(plan.slotRow, rows), gates,
              weight(fused.getGateProjAttr()), weight(fused.getUpProjAttr()),
              weight(fused.getDownProjAttr()), define(fused.getResult()),
              constI32(static_cast<int64_t>(fused.getActivation()))});
        recordStep(view(getExpertLayerIds(fused)), gates);
        return success();
      })
      .Case([&](arith::AddFOp add) -> LogicalResult {
        if (!isa<RankedTensorType>(add.getType()))
          return add.emitError() << options.passName
                                 << " handles tensor additions "
                                    "(residuals) only";
        Value lhs = view(add.getLhs()), rhs = view(add.getRhs());
        call("moert_add", {lhs, rhs, define(add.getResult())});
        return success();
      })
      .Case([&](ExitOp exit) {
        // An unrolled pass after which no exit can fire tests nothing.
        if (staticPassIndex && !exitCanFire(exit, *staticPassIndex))
          return success();
        Value h = view(exit.getHidden());
        Value criterion = constI32(static_cast<int64_t>(exit.getCriterion()));
        if (exit.getLmHeadAttr()) {
          bool hasNorm = bool(exit.getLmNormAttr());
          Value norm = hasNorm ? weight(exit.getLmNormAttr()) : absentWeight();
          // 1: the lm_norm weight, 2: a norm without gain, 0: none.
          int64_t normKind = hasNorm ? 1 : exit.getLmNormUnit() ? 2 : 0;
          call("moert_exit_test_lm",
               {h, norm, constI32(normKind), constF32(exit.getLmNormEps()),
                weight(exit.getLmHeadAttr()), define(exit.getExits()),
                criterion, constF32(exit.getThreshold())});
          return success();
        }
        Value prev = view(exit.getPrevious());
        call("moert_exit_test", {h, prev, define(exit.getExits()), criterion,
                                 constF32(exit.getThreshold())});
        return success();
      })
      .Case([&](LoopOp loop) { return emitLoop(loop); })
      .Case([&](EmbedOp embed) {
        Value tokenIds = view(embed.getTokens());
        call(kernelFor("moert_embed", embed.getTableAttr()),
             {tokenIds, weight(embed.getTableAttr()),
              define(embed.getResult())});
        return success();
      })
      .Case([&](UnembedOp unembed) {
        Value in = view(unembed.getInput());
        call(
            kernelFor("moert_unembed", unembed.getLmHeadAttr()),
            {in, weight(unembed.getLmHeadAttr()), define(unembed.getLogits())});
        return success();
      })
      .Case([&](AttentionOp attention) -> LogicalResult {
        int64_t slot = attention->getParentOfType<LoopOp>()
                           ? attention.getCacheSlot() +
                                 staticPassIndex.value_or(0) * slotsPerPass
                           : outerCacheBase + attention.getCacheSlot();
        auto cache = kvCaches.find(slot);
        if (cache == kvCaches.end())
          return attention.emitError() << options.passName
                                       << ": no KV cache for "
                                          "slot "
                                       << slot;
        // Norm kind 1: full-width norms (OLMoE); 2: per head (Qwen3).
        int64_t normKind = 0;
        if (auto qNorm = attention.getQNormAttr()) {
          auto w = SymbolTable::lookupNearestSymbolFrom<WeightOp>(
              attention, qNorm.getAttr());
          normKind = w.getTensorType().getDimSize(0) ==
                             static_cast<int64_t>(attention.getHeadDim())
                         ? 2
                         : 1;
        }
        auto optional = [&](FlatSymbolRefAttr sym) {
          return sym ? weight(sym) : absentWeight();
        };
        // An absent bias is an empty buffer.
        auto biasOrNone = [&](FlatSymbolRefAttr sym) {
          return sym ? weight(sym) : unitNormWeight();
        };
        Value in = view(attention.getInput());
        Value positions = view(attention.getPositions());
        RopeScalingAttr rope = attention.getRopeScalingAttr();
        auto ropeValue = [&](APFloat (RopeScalingAttr::*get)() const,
                             float absent) {
          return constF32(rope ? APFloat(float((rope.*get)().convertToDouble()))
                               : APFloat(absent));
        };
        float clip = attention.getClipQkv()
                         ? attention.getClipQkv()->convertToFloat()
                         : 0.0f;
        call(kernelFor("moert_attention", attention.getQProjAttr()),
             {in,
              positions,
              weight(attention.getQProjAttr()),
              weight(attention.getKProjAttr()),
              weight(attention.getVProjAttr()),
              weight(attention.getOProjAttr()),
              optional(attention.getQNormAttr()),
              optional(attention.getKNormAttr()),
              cache->second.first,
              cache->second.second,
              define(attention.getResult()),
              constI64(attention.getNumHeads()),
              constI64(attention.getNumKvHeads()),
              constI64(attention.getHeadDim()),
              constF32(attention.getRopeTheta()),
              constF32(APFloat(clip)),
              constI32(normKind),
              constF32(attention.getNormEps()),
              constF32(attention.getScale().value_or(APFloat(0.0f))),
              constI32(attention.getRopeInterleaved()),
              ropeValue(&RopeScalingAttr::getFactor, 1.0f),
              ropeValue(&RopeScalingAttr::getRampLow, 0.0f),
              ropeValue(&RopeScalingAttr::getRampHigh, 0.0f),
              ropeValue(&RopeScalingAttr::getAttentionFactor, 1.0f),
              constI64(attention.getSlidingWindow().value_or(0)),
              biasOrNone(attention.getQBiasAttr()),
              biasOrNone(attention.getKBiasAttr()),
              biasOrNone(attention.getVBiasAttr()),
              biasOrNone(attention.getOBiasAttr())});
        return success();
      })
      .Default([&](Operation *other) {
        return other->emitError()
               << options.passName << " cannot lower this op";
      });
}

/// Emits one pass over the first `count` tokens of `activeAll`; returns how
/// many are still active after it.
FailureOr<Value> ModelLowering::emitPass(LoopOp loop, Value pass,
                                         std::optional<int64_t> staticPass,
                                         Value count, Value activeAll) {
  passIndex = pass;
  staticPassIndex = staticPass;
  layerInPass = 0;
  byToken = !loop.getCompactExits();
  // A compacting pass works on the active tokens only; otherwise on all.
  rows = byToken ? tokens : count;
  activeTokens = prefix(activeAll, count);
  Value state = buffers.lookup(loop.getResult());
  Value passInput = define(loop.getPassInput());
  if (byToken)
    memref::CopyOp::create(builder, loc, state, buffers[loop.getPassInput()]);
  else
    call("moert_gather_rows", {state, activeTokens, passInput});

  for (Operation &op : loop.getBody().front().without_terminator())
    if (failed(emitOp(&op)))
      return failure();

  YieldOp yield = loop.getYield();
  call("moert_scatter_rows",
       {view(yield.getValues()[0]), activeTokens, state, constI32(byToken)});
  ExitOp exit = loop.getExit();
  if (!exit || (staticPass && !exitCanFire(exit, *staticPass)))
    return count;
  Operation *update = call(
      "moert_exit_update",
      {view(exit.getExits()), activeAll, exitLoopArg,
       arith::IndexCastOp::create(builder, loc, builder.getI64Type(), count),
       pass, constI64(exit.getMinPasses()), constI64(loop.getPasses()),
       constI32(byToken)},
      builder.getI64Type());
  return Value(arith::IndexCastOp::create(builder, loc, builder.getIndexType(),
                                          update->getResult(0)));
}

LogicalResult ModelLowering::emitLoop(LoopOp loop) {
  Value state = define(loop.getResult());
  memref::CopyOp::create(builder, loc, view(loop.getInit()), state);
  buffers[loop.getExitLoop()] = exitLoopArg;
  // Indices of the still-active tokens, compacted after every pass.
  Value activeAll =
      allocate(MemRefType::get({ShapedType::kDynamic}, builder.getI32Type()));
  int64_t passes = loop.getPasses();
  // Decoders record no routing trace: hand the kernel empty ones.
  Value traceIds = traceIdsArg, traceGates = traceGatesArg;
  if (!traceIds) {
    traceIds = allocate(MemRefType::get({0, 0, 1}, builder.getI32Type()));
    traceGates = allocate(MemRefType::get({0, 0, 1}, builder.getF32Type()));
  }
  call("moert_loop_init",
       {activeAll, exitLoopArg, traceIds, traceGates, constI64(passes)});

  if (loop.getMode() == LoopMode::unroll) {
    // Every pass specialised: constant pass index and trace steps, exit
    // tests only after the passes where one can fire.
    Value count = tokens;
    for (int64_t i = 0; i < passes; ++i) {
      FailureOr<Value> next = emitPass(loop, constI64(i), i, count, activeAll);
      if (failed(next))
        return failure();
      count = *next;
    }
  } else {
    auto forOp =
        scf::ForOp::create(builder, loc, constIndex(0), constIndex(passes),
                           constIndex(1), ValueRange{tokens});
    forOp->setAttr(kPassLoopAttr, builder.getUnitAttr());
    OpBuilder::InsertionGuard guard(builder);
    builder.setInsertionPointToStart(forOp.getBody());
    Value pass = arith::IndexCastOp::create(builder, loc, builder.getI64Type(),
                                            forOp.getInductionVar());
    FailureOr<Value> remaining = emitPass(
        loop, pass, std::nullopt, forOp.getRegionIterArgs()[0], activeAll);
    if (failed(remaining))
      return failure();
    scf::YieldOp::create(builder, loc, *remaining);
  }
  rows = tokens;
  staticPassIndex.reset();
  return success();
}

/// The weights that `op`'s CPU kernel can read as bf16, in groups that its
/// bf16 form (`moert_*_bf16`) takes alike: a fused group's three, an
/// attention's four projections (not its norms), a table, an LM head.
static SmallVector<SmallVector<StringAttr>> bf16KernelGroups(Operation *op) {
  auto names = [](ArrayRef<FlatSymbolRefAttr> refs) {
    return llvm::to_vector(llvm::map_range(
        refs, [](FlatSymbolRefAttr ref) { return ref.getAttr(); }));
  };
  if (auto fused = dyn_cast<FusedExpertsOp>(op))
    return {names({fused.getGateProjAttr(), fused.getUpProjAttr(),
                   fused.getDownProjAttr()})};
  if (auto mlp = dyn_cast<MlpOp>(op))
    return {names(
        {mlp.getGateProjAttr(), mlp.getUpProjAttr(), mlp.getDownProjAttr()})};
  if (auto attention = dyn_cast<AttentionOp>(op))
    return {names({attention.getQProjAttr(), attention.getKProjAttr(),
                   attention.getVProjAttr(), attention.getOProjAttr()})};
  if (auto embed = dyn_cast<EmbedOp>(op))
    return {names({embed.getTableAttr()})};
  if (auto unembed = dyn_cast<UnembedOp>(op))
    return {names({unembed.getLmHeadAttr()})};
  return {};
}

/// The bf16 weights to bind as bf16 buffers: all of them for the GPU; for the
/// CPU with bf16CpuWeights, those that every reader reads through a bf16
/// kernel group whose weights are all bf16 buffers.
static DenseSet<StringAttr>
bf16BufferWeights(ModuleOp module, ArrayRef<WeightOp> weights,
                  const KernelProgramOptions &options) {
  DenseSet<StringAttr> kept;
  if (!options.bf16Weights && !options.bf16CpuWeights)
    return kept;
  for (WeightOp w : weights) {
    if (!w.getTensorType().getElementType().isBF16())
      continue;
    StringAttr name = w.getSymNameAttr();
    std::optional<SymbolTable::UseRange> uses =
        SymbolTable::getSymbolUses(name, module);
    if (options.bf16Weights ||
        (uses && llvm::all_of(*uses, [&](const SymbolTable::SymbolUse &use) {
           // Every role the weight has in this op (at least one) is in a
           // bf16 group.
           int64_t roles = 0, groupRoles = 0;
           use.getUser()->getAttrDictionary().walk(
               [&](FlatSymbolRefAttr r) { roles += r.getAttr() == name; });
           for (ArrayRef<StringAttr> g : bf16KernelGroups(use.getUser()))
             groupRoles += llvm::count(g, name);
           return roles == groupRoles;
         })))
      kept.insert(name);
  }
  if (options.bf16Weights)
    return kept;
  // A group with one weight left f32 leaves all of it f32, which can leave
  // another group that shares one of them with a weight f32: to a fixed
  // point.
  SmallVector<SmallVector<StringAttr>> groups;
  module.walk(
      [&](Operation *op) { llvm::append_range(groups, bf16KernelGroups(op)); });
  for (bool changed = true; changed;) {
    changed = false;
    for (ArrayRef<StringAttr> group : groups) {
      if (llvm::all_of(group, [&](StringAttr n) { return kept.contains(n); }))
        continue;
      for (StringAttr n : group)
        changed |= kept.erase(n);
    }
  }
  return kept;
}

LogicalResult
mlir::moe::lowerModelsToKernelCalls(ModuleOp module,
                                    const KernelProgramOptions &options) {
  SmallVector<WeightOp> weights(module.getOps<WeightOp>());
  DenseSet<StringAttr> bf16Buffers =
      bf16BufferWeights(module, weights, options);
  SmallVector<func::FuncOp> models, decoders;
  for (func::FuncOp func : module.getOps<func::FuncOp>()) {
    if (func.isExternal())
      continue;
    // A function with moe ops is lowered as a model, which checks its form:
    // left alone, it would be left reading weights that are erased below.
    bool usesMoE = func.walk([](Operation *op) {
                         return isa<MoEDialect>(op->getDialect())
                                    ? WalkResult::interrupt()
                                    : WalkResult::advance();
                       })
                       .wasInterrupted();
    if (!func.getOps<EmbedOp>().empty())
      decoders.push_back(func);
    else if (usesMoE)
      models.push_back(func);
  }
  for (func::FuncOp func : models)
    if (failed(
            ModelLowering(module, weights, options, bf16Buffers).lower(func)))
      return failure();
  for (func::FuncOp func : decoders)
    if (failed(ModelLowering(module, weights, options, bf16Buffers)
                   .lowerDecoder(func)))
      return failure();
  if (!options.bf16Weights && !bf16Buffers.empty()) {
    SmallVector<int64_t> positions;
    for (auto [i, w] : llvm::enumerate(weights))
      if (bf16Buffers.contains(w.getSymNameAttr()))
        positions.push_back(i);
    module->setAttr(kHostBF16WeightsAttr,
                    DenseI64ArrayAttr::get(module.getContext(), positions));
  }
  for (WeightOp w : weights)
    w.erase();
  return success();
}

namespace {
struct ConvertMoEToCPUPass
    : public moe::impl::ConvertMoEToCPUBase<ConvertMoEToCPUPass> {
  using ConvertMoEToCPUBase::ConvertMoEToCPUBase;
  void runOnOperation() override {
    KernelProgramOptions options;
    options.bf16CpuWeights = bf16Weights;
    if (failed(lowerModelsToKernelCalls(getOperation(), options)))
      signalPassFailure();
  }
};
} // namespace
