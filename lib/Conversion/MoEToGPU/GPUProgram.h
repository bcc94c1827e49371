//===- GPUProgram.h - the host program on the GPU, and its kernels -*- C++
//-*-===//
//
// convert-moe-to-gpu rewrites the host program of KernelProgram.h: GPUProgram
// turns its buffers into device allocations on one stream and hands every
// `moert_*` kernel call to the emitter registered for it, which generates the
// kernels that compute it (specialised for the call's types and constant
// parameters) and launches them. KernelBody is the small DSL the emitters
// write kernel bodies in.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_LIB_CONVERSION_MOETOGPU_GPUPROGRAM_H
#define MOE_LIB_CONVERSION_MOETOGPU_GPUPROGRAM_H

#include "moe/Conversion/GPUCostModel.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "llvm/ADT/StringMap.h"

namespace mlir::moe::gpu_lowering {

/// What the kernels are specialised for besides the calls.
struct GPUKernelOptions {
  /// Whether the expert GEMMs may use tensor cores.
  bool tensorCores;
  /// Whether their f32 activations are rounded to bf16 (else split into two
  /// bf16 parts: WarpMma.h), and the experts' intermediates kept in bf16.
  bool bf16Activations;
  /// Whether the kernels are for moe-emulate-gpu, which runs one thread at
  /// a time on the CPU: warp-collective operations (mma.sync, shuffles)
  /// become the arithmetic each lane gets from them, resident loop kernels
  /// a one-thread grid without fences, watchdog or launch bounds, and loads
  /// claim no alignment (host buffers need not be aligned).
  bool emulateWarpOps;
  /// Whether the tensor-core forms of the expert GEMMs may run as Hopper
  /// warpgroup tiles (wgmma, TMA: WarpgroupMma.h; sm_90a only).
  bool wgmma;
  /// Whether pass loops become resident kernels (makeLoopResident).
  bool residentLoops;
  /// Rows of one expert a warp of the split (decode) form takes at once.
  int64_t splitChunkRows = kSplitChunkRows;
  /// The chip the cost model assumes.
  ChipLimits chip;
  /// Whether to say in remarks which forms each GEMM got.
  bool reportForms;
};

/// Helpers for writing a kernel body: index and float arithmetic, loads,
/// stores and structured loops at the builder's insertion point.
class KernelBody {
public:
  KernelBody(ImplicitLocOpBuilder &b, const GPUKernelOptions &options)
      : b(b), options(options) {}

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
  /// An element of `memref`; bf16 elements (weights) are widened to f32.
  Value load(Value memref, ValueRange indices) {
    Value v = memref::LoadOp::create(b, memref, indices);
    if (v.getType().isBF16())
      v = arith::ExtFOp::create(b, b.getF32Type(), v);
    return v;
  }
  /// Stores `v`, rounded to bf16 for a bf16 buffer (activations kept so).
  void store(Value v, Value memref, ValueRange indices) {
    if (cast<MemRefType>(memref.getType()).getElementType().isBF16() &&
        v.getType().isF32())
      v = arith::TruncFOp::create(b, b.getBF16Type(), v);
    memref::StoreOp::create(b, v, memref, indices);
  }
  Value dim(Value memref, int64_t i) {
    auto type = cast<MemRefType>(memref.getType());
    if (!type.isDynamicDim(i))
      return index(type.getDimSize(i));
    return memref::DimOp::create(b, memref, i);
  }
  /// x (f32, or a vector of f32) rounded to the nearest bf16 (ties to even),
  /// as f32: what the tensor cores see of an activation.
  Value roundToBF16(Value x);
  /// 1 / (1 + exp(-z)).
  Value sigmoid(Value z) {
    Value e = math::ExpOp::create(b, arith::NegFOp::create(b, z));
    return fdiv(f32(1.0), fadd(f32(1.0), e));
  }
  /// act(g) * u for activation 0 (SiLU) or 1 (tanh GELU): both are
  /// g * sigmoid(z), with z = g, or 2 sqrt(2/pi) (g + 0.044715 g^3).
  Value glu(int64_t activation, Value g, Value u) {
    Value z = g;
    if (activation == 1) {
      Value cube = fmul(fmul(g, g), g);
      z = fmul(f32(2.0 * std::sqrt(2.0 / M_PI)),
               fadd(g, fmul(f32(0.044715), cube)));
    }
    return fmul(fmul(g, sigmoid(z)), u);
  }
  /// Whether `x` is neither infinite nor NaN: x - x is 0 exactly then.
  Value isFinite(Value x) {
    return arith::CmpFOp::create(b, arith::CmpFPredicate::OEQ, fsub(x, x),
                                 f32(0.0));
  }

  /// for (i = lb; i < ub; i += step) body(i).
  void forEach(Value lb, Value ub, function_ref<void(Value)> body,
               int64_t step = 1) {
    auto loop = scf::ForOp::create(b, lb, ub, index(step));
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
  /// Like reduce, with several accumulators and a step.
  SmallVector<Value>
  reduceAll(Value lb, Value ub, ValueRange inits,
            function_ref<SmallVector<Value>(Value, ValueRange)> body,
            int64_t step = 1) {
    auto loop = scf::ForOp::create(
        b, lb, ub, index(step), inits,
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

  /// The last p in [0, size] with sorted[p] <= bound (i32 elements that do
  /// not decrease, sorted[0] <= bound), in log2(size) loads (binary
  /// lifting).
  Value lastAtMost(Value sorted, int64_t size, Value bound) {
    Value last = index(size), pos = index(0);
    int64_t step = 1;
    while (step * 2 <= size)
      step *= 2;
    for (; step >= 1; step /= 2) {
      Value next = add(pos, index(step));
      Value inRange = cmp(arith::CmpIPredicate::ule, next, last);
      Value at = arith::MinUIOp::create(b, next, last);
      Value atMost = cmp(arith::CmpIPredicate::sle, load(sorted, {at}), bound);
      pos = arith::SelectOp::create(
          b, arith::AndIOp::create(b, inRange, atMost), next, pos);
    }
    return pos;
  }

  /// Whether a vector load from `memref` may claim 16-byte alignment: the
  /// view's layout implies it (offset 0, rows of whole 16 bytes) in a buffer
  /// that starts aligned, as every device allocation does. Never when
  /// emulated (host buffers need not be aligned).
  std::optional<llvm::Align> vectorAlignment(Value memref);
  /// `width` elements of `memref` from `indices` on along its innermost
  /// dimension, as f32, in one vector load: claiming vectorAlignment when
  /// the caller says the innermost index is at a 16-byte unit of its row.
  Value loadVector(Value memref, ValueRange indices, int64_t width,
                   bool alignedIndex);

  /// Lane `lane`'s shares of the dot products of the activation row
  /// `a[aRow..., :]` with each weight row `weights[j][wRows[j]..., :]`,
  /// over `depth` elements, for a warp that splits them (KernelBody::warpSum
  /// adds the shares). Lanes take 16 bytes of weights at a time (8 bf16 or 4
  /// f32, one vector load) when `depth` is a multiple of that: lane l takes
  /// chunks l, l + 32, ... (neighbouring lanes read neighbouring weights);
  /// else single elements l, l + 32, .... Each share adds its products in
  /// order. Loads claim 16-byte alignment where the view's layout implies
  /// it for a buffer that starts aligned (every device allocation does).
  SmallVector<Value> laneDotShares(Value lane, int64_t depth, Value a,
                                   ValueRange aRow, ArrayRef<Value> weights,
                                   ArrayRef<SmallVector<Value>> wRows);
  /// The same for several activation rows `aRows` at once: each weight
  /// chunk is loaded once for all of them. Shares are row-major ([row][j]),
  /// each row's the same values as laneDotShares gives for it alone.
  SmallVector<Value> laneDotShares(Value lane, int64_t depth, Value a,
                                   ArrayRef<SmallVector<Value>> aRows,
                                   ArrayRef<Value> weights,
                                   ArrayRef<SmallVector<Value>> wRows);

  /// Every lane's `shares(lane)` summed over the 32 lanes of its warp, in
  /// the order of an xor butterfly (offsets 16, 8, 4, 2, 1): each lane gets
  /// the same totals, the same on every run. The warp's lanes must all be
  /// here. Emulated (options.emulateWarpOps), each lane computes all 32 lanes'
  /// shares and adds them in that order.
  SmallVector<Value>
  warpSum(Value lane, function_ref<SmallVector<Value>(Value lane)> shares);

  ImplicitLocOpBuilder &b;
  /// How warp-collective operations and tensor-core operands are emitted.
  const GPUKernelOptions &options;
};

/// The bytes of dynamic shared memory a kernel's blocks need, set on its
/// gpu.func by the code that carves the memory (WarpgroupMma.cpp) and read
/// by GPUProgram::launch, so that the two cannot disagree.
constexpr llvm::StringLiteral kDynamicSharedAttr = "moe.dynamic_shared_bytes";

/// Lanes that split one dot product of a decode-sized GEMM
/// (KernelBody::laneDotShares): a warp.
constexpr int64_t kLanes = 32;

/// The static shape of a memref value.
inline ArrayRef<int64_t> shapeOf(Value v) {
  return cast<MemRefType>(v.getType()).getShape();
}

/// If `options` asks for it, a remark at `loc` saying which forms the GEMM
/// `what` of `shape` got (`why` explains a form left out, or is empty).
void reportGemmForms(const GPUKernelOptions &options, Location loc,
                     StringRef what, const ExpertGemmShape &shape,
                     const ExpertGemmForms &forms, StringRef why = "");

/// Rewrites the host program of one module: kernel calls to launches,
/// buffers to device allocations, on one stream.
class GPUProgram {
public:
  using BodyFn = function_ref<void(KernelBody &, Value gid, ValueRange args)>;

  GPUProgram(ModuleOp module, gpu::GPUModuleOp kernelModule,
             const GPUKernelOptions &options)
      : module(module), kernelModule(kernelModule), options(options),
        hostBuilder(module.getContext()) {}

  const GPUKernelOptions &getOptions() const { return options; }
  /// Whether the launches being emitted are in a pass loop that becomes one
  /// resident kernel (options.residentLoops): its phases are grid-stride
  /// loops of one kernel, whose registers (at most 128 per thread) they
  /// share.
  bool inResidentPassLoop();
  /// Rows of one expert the split (decode) form takes at once here: one in
  /// a resident loop kernel, whose register budget does not hold more.
  int64_t splitChunkRows() {
    return inResidentPassLoop() ? 1 : options.splitChunkRows;
  }
  gpu::GPUModuleOp getKernelModule() { return kernelModule; }
  /// `base` with a number no other kernel of the module has.
  std::string newKernelName(StringRef base) {
    return (base + Twine(kernelCount++)).str();
  }

  /// Rewrites one lowered model function.
  LogicalResult rewrite(func::FuncOp func);

  // For the kernel emitters, at the host insertion point of the call.

  /// The kernel `base` specialised for `args`' types and `key` (its baked-in
  /// constants), created on first use: (n: index, args...), one thread per
  /// gid < n.
  gpu::GPUFuncOp kernel(StringRef base, StringRef key, ValueRange args,
                        BodyFn body);
  /// Launches `fn` over `n` threads on the stream, in blocks of
  /// `blockThreads` (which must divide n), or by default of a size picked
  /// for n, each with the dynamic shared memory its body asked for
  /// (kDynamicSharedAttr).
  void launch(gpu::GPUFuncOp fn, Value n, ValueRange args,
              int64_t blockThreads = 0);
  /// A device buffer for the duration of one call (release it after).
  Value scratch(MemRefType type, ValueRange sizes);
  void release(Value buffer);
  /// Copies the one-element scratch buffer `device` to the host, releases
  /// it, waits for the stream and returns the value.
  Value readBack(Value device);
  /// The stream's latest token, starting a stream if none is open.
  Value stream();
  /// Waits for the stream; the host may read results after it.
  void sync();

  /// The constant behind a parameter operand of `kernelName`'s call.
  LogicalResult requireInt(StringRef kernelName, Value v, int64_t &out);
  LogicalResult requireFloat(StringRef kernelName, Value v, double &out);

  OpBuilder &host() { return hostBuilder; }
  Location getLoc() const { return loc; }
  Value hostIndex(int64_t v) {
    return arith::ConstantIndexOp::create(hostBuilder, loc, v);
  }
  Value hostMul(Value x, Value y) {
    return arith::MulIOp::create(hostBuilder, loc, x, y);
  }
  Value hostDim(Value memref, int64_t i) {
    return memref::DimOp::create(hostBuilder, loc, memref, i);
  }
  Value hostNumElements(Value memref);
  /// For a problem launched in two forms side by side, the rows each gets:
  /// {rows, 0} when rows <= maxRows (the split form), else {0, rows}.
  std::pair<Value, Value> splitRows(Value rows, int64_t maxRows);

private:
  LogicalResult rewriteBlock(Block &block);
  LogicalResult rewriteCall(func::CallOp call);
  LogicalResult emit(Operation *call, StringRef name, ArrayRef<Value> args);

  ModuleOp module;
  gpu::GPUModuleOp kernelModule;
  GPUKernelOptions options;
  OpBuilder hostBuilder;
  Location loc = hostBuilder.getUnknownLoc();
  Value token;
  Block *entryBlock = nullptr;
  llvm::StringMap<gpu::GPUFuncOp> kernels;
  unsigned kernelCount = 0;
};

/// out[r, c] = a[r, :] . w[c, :] over `depth` elements, for every row of `a`
/// and the `cols` rows of `w`: for few rows (decode) a warp per column and
/// kSplitChunkRows rows (KernelBody::laneDotShares: 16-byte chunks of
/// weights per lane, each loaded once for the rows) whose partial sums
/// KernelBody::warpSum adds; for more, warp
/// tiles on the tensor cores (bf16 weights, `tensorCores`, shapes that
/// divide into tiles: WarpMma.h), else a thread per output. The cost model
/// picks the hand-over; the forms are launched side by side, the ones that
/// do not apply with no rows.
void emitRowsDotWeights(GPUProgram &p, StringRef base, Value a, Value w,
                        Value out, int64_t cols, int64_t depth,
                        bool tensorCores = true);

/// Turns a pass loop that GPUProgram::rewrite has rewritten (an scf.for
/// marked kPassLoopAttr) into one launch of a kernel that runs every pass,
/// with grid-wide barriers between the launches of the body
/// (ResidentLoop.cpp).
LogicalResult makeLoopResident(GPUProgram &program, scf::ForOp loop);

/// Emits what computes one kernel call of the host program. `operands` are
/// the call's, seen through the casts to dynamic views; a call with a result
/// (moert_exit_update) has it replaced. `call` is null for memref.copy.
using KernelEmitter = LogicalResult (*)(GPUProgram &program, StringRef name,
                                        ArrayRef<Value> operands,
                                        Operation *call);
/// The emitters of the MoE layer and pass-loop kernels (MoEKernels.cpp) and
/// of the dense decoder kernels (DecoderKernels.cpp).
void addMoEKernelEmitters(llvm::StringMap<KernelEmitter> &emitters);
void addDecoderKernelEmitters(llvm::StringMap<KernelEmitter> &emitters);

} // namespace mlir::moe::gpu_lowering

#endif // MOE_LIB_CONVERSION_MOETOGPU_GPUPROGRAM_H
