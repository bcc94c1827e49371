//===- WarpMma.cpp - warp tiles of a GEMM on the tensor cores -------------===//
#include "WarpMma.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::moe::gpu_lowering;

namespace {
/// Accumulators per lane per subtile.
constexpr int64_t kAccumulators = 4;

Value groupOf(KernelBody &k, Value lane) { return k.div(lane, k.index(4)); }
Value threadInGroup(KernelBody &k, Value lane) {
  return k.rem(lane, k.index(4));
}

/// Two f32 values rounded to bf16 and packed in one 32-bit register, `lo`
/// in the low half (the element with the lower index, as mma.sync expects):
/// one cvt.rn.bf16x2.f32.
Value packBF16x2(KernelBody &k, Value lo, Value hi) {
  Value pair = vector::FromElementsOp::create(
      k.b, VectorType::get({2}, k.b.getF32Type()), ValueRange{lo, hi});
  Value rounded = arith::TruncFOp::create(
      k.b, VectorType::get({2}, k.b.getBF16Type()), pair);
  Value word = vector::BitCastOp::create(
      k.b, VectorType::get({1}, k.b.getI32Type()), rounded);
  return vector::ExtractOp::create(k.b, word, ArrayRef<int64_t>{0});
}

/// The bf16 elements at `indices` and the next in `memref`'s innermost
/// dimension, packed into one register by one aligned 32-bit load.
Value loadBF16Pair(KernelBody &k, Value memref, ValueRange indices) {
  auto pair = VectorType::get({2}, k.b.getBF16Type());
  Value v = vector::LoadOp::create(k.b, pair, memref, indices,
                                   /*nontemporal=*/false, llvm::Align(4));
  Value word =
      vector::BitCastOp::create(k.b, VectorType::get({1}, k.b.getI32Type()), v);
  return vector::ExtractOp::create(k.b, word, ArrayRef<int64_t>{0});
}

/// x - bf16(x): what rounding x to bf16 leaves (exact in f32).
Value bf16Remainder(KernelBody &k, Value x) {
  return k.fsub(x, k.roundToBF16(x));
}

/// One k-step of every subtile on the tensor cores.
SmallVector<Value> mmaStep(KernelBody &k, Value lane, const WarpTileGemm &g,
                           Value i0, ValueRange acc) {
  Value group = groupOf(k, lane);
  Value lo = k.add(i0, k.mul(threadInGroup(k, lane), k.index(2)));
  Value hi = k.add(lo, k.index(8));
  auto next = [&](Value i) { return k.add(i, k.index(1)); };
  // a0..a7 of PTX's m16n8k16 .bf16 layout (PTX ISA 9.7.14.5.8, "Matrix
  // Fragments for mma.m16n8k16"): registers hold rows g, g + 8, g, g + 8 at
  // columns 2t, 2t, 2t + 8, 2t + 8 (and the next column); b0..b3 rows 2t and
  // 2t + 8 (and the next) of column g.
  SmallVector<Value> a, aRest;
  for (Value col : {lo, hi}) {
    for (int64_t half : {0, 1}) {
      Value first = g.loadA(k, half, col), second = g.loadA(k, half, next(col));
      a.push_back(packBF16x2(k, first, second));
      if (!k.options.bf16Activations)
        aRest.push_back(
            packBF16x2(k, bf16Remainder(k, first), bf16Remainder(k, second)));
    }
  }
  Type f32 = k.b.getF32Type();
  auto resultType =
      LLVM::LLVMStructType::getLiteral(k.b.getContext(), {f32, f32, f32, f32});
  SmallVector<Value> out;
  for (int64_t m = 0; m < g.matrices; ++m) {
    for (int64_t s = 0; s < g.subtiles; ++s) {
      Value col = k.add(k.index(s * kMmaCols), group);
      SmallVector<Value> b = {loadBF16Pair(k, g.b[m], g.bIndices(k, col, lo)),
                              loadBF16Pair(k, g.b[m], g.bIndices(k, col, hi))};
      int64_t base = (m * g.subtiles + s) * kAccumulators;
      auto mma = [&](ValueRange aRegs, ValueRange c) {
        auto op = NVVM::MmaOp::create(
            k.b, resultType, aRegs, b, c, {kMmaRows, kMmaCols, kMmaDepth},
            std::nullopt, std::nullopt,
            std::array<NVVM::MMATypes, 2>{NVVM::MMATypes::bf16,
                                          NVVM::MMATypes::bf16},
            std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                           NVVM::MMALayout::col});
        SmallVector<Value> d;
        for (int64_t i = 0; i < kAccumulators; ++i)
          d.push_back(LLVM::ExtractValueOp::create(k.b, op, i));
        return d;
      };
      SmallVector<Value> d = mma(a, acc.slice(base, kAccumulators));
      if (!k.options.bf16Activations)
        d = mma(aRest, d);
      llvm::append_range(out, d);
    }
  }
  return out;
}

/// The same k-step, each lane computing its own accumulators.
SmallVector<Value> emulatedStep(KernelBody &k, Value lane,
                                const WarpTileGemm &g, Value i0,
                                ValueRange acc) {
  SmallVector<Value> out;
  for (int64_t m = 0; m < g.matrices; ++m) {
    for (int64_t s = 0; s < g.subtiles; ++s) {
      for (int64_t i = 0; i < kAccumulators; ++i) {
        auto [halfOf, colOf] = accumulatorPosition(k, lane, s, i);
        int64_t half = halfOf;
        Value col = colOf;
        int64_t at = (m * g.subtiles + s) * kAccumulators + i;
        out.push_back(k.reduce(
            i0, k.add(i0, k.index(kMmaDepth)), acc[at],
            [&](Value j, Value sum) -> Value {
              Value x = g.loadA(k, half, j);
              Value a = k.roundToBF16(x);
              Value w = k.load(g.b[m], g.bIndices(k, col, j));
              sum = k.fadd(sum, k.fmul(a, w));
              if (!k.options.bf16Activations)
                sum = k.fadd(sum, k.fmul(k.roundToBF16(k.fsub(x, a)), w));
              return sum;
            }));
      }
    }
  }
  return out;
}
} // namespace

std::pair<int64_t, Value>
mlir::moe::gpu_lowering::accumulatorPosition(KernelBody &k, Value lane,
                                             int64_t s, int64_t i) {
  Value col = k.add(k.index(s * kMmaCols + (i & 1)),
                    k.mul(threadInGroup(k, lane), k.index(2)));
  return {i / 2, col};
}

SmallVector<Value>
mlir::moe::gpu_lowering::emitWarpTileGemm(KernelBody &k, Value lane,
                                          const WarpTileGemm &g) {
  SmallVector<Value> zeros(g.matrices * g.subtiles * kAccumulators, k.f32(0.0));
  return k.reduceAll(
      k.index(0), k.index(g.depth), zeros,
      [&](Value i0, ValueRange acc) {
        return k.options.emulateWarpOps ? emulatedStep(k, lane, g, i0, acc)
                                        : mmaStep(k, lane, g, i0, acc);
      },
      kMmaDepth);
}

void mlir::moe::gpu_lowering::forEachAccumulator(
    KernelBody &k, Value lane, int64_t subtiles,
    function_ref<void(int64_t at, int64_t half, Value col)> body) {
  for (int64_t s = 0; s < subtiles; ++s) {
    for (int64_t i = 0; i < kAccumulators; ++i) {
      std::pair<int64_t, Value> position = accumulatorPosition(k, lane, s, i);
      body(s * kAccumulators + i, position.first, position.second);
    }
  }
}
