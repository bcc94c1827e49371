//===- CpuKernels.h - CPU kernels of the MoE runtime ------------*- C++ -*-===//
//
// The CPU implementations of the model contract's operations (rmsnorm,
// router, SwiGLU expert group, exit test), as a plain C++ API on raw
// row-major pointers and as the `_mlir_ciface_moert_*` C functions that the
// compiler's CPU lowering calls (MLIR's `llvm.emit_c_interface` convention).
//
// Determinism: every output element is computed by exactly one thread with a
// reduction order fixed by the problem sizes alone, so results are bitwise
// identical for any thread count and any batch composition (a token's output
// does not depend on which other tokens share the call).
//
// No function throws or aborts. The ones that need scratch memory and cannot
// get it return false and fill their outputs with NaN (expert ids with -1), so
// the failure cannot pass for a result. The expert group keeps its scratch,
// about T*k*(d+f) floats plus small per-thread row panels, in a workspace that
// grows to the largest call and is freed when the calling thread ends; the rest
// is allocated per call.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CPUKERNELS_H
#define MOERT_CPUKERNELS_H

#include "mlir/ExecutionEngine/CRunnerUtils.h"

#include <cstdint>
#include <string>

namespace moert::cpu {

/// `scoring` of the router.
enum class Scoring : int32_t { Softmax = 0, Sigmoid = 1 };
/// The activation inside SwiGLU experts; Gelu is the tanh approximation.
enum class Activation : int32_t { Silu = 0, Gelu = 1 };
/// The early-exit criterion at a loop boundary.
enum class ExitCriterion : int32_t { Cosine = 0, RelativeL2 = 1 };

/// The sizes of one MoE layer call.
struct MoEShape {
  int64_t numTokens;  ///< T
  int64_t hidden;     ///< d
  int64_t ffn;        ///< f, expert intermediate size (unused by route)
  int64_t numExperts; ///< E
  int64_t topK;       ///< k
};

/// The thread count used when a kernel is given `numThreads == 0`:
/// MOERT_NUM_THREADS if it is a positive integer, else the hardware
/// concurrency. Read once per process.
unsigned defaultNumThreads();

/// What is wrong with the CPU kernels' environment, or "" when nothing is:
/// MOERT_NUM_THREADS, when set and not empty, must be a thread count from 1
/// to 1024, and MOERT_CPU_ISA avx2 or avx512 (which needs a CPU with
/// AVX-512F and DQ).
/// The kernels ignore a value that is wrong; moert_context_create("cpu")
/// refuses it, naming the variable.
std::string environmentProblem();

/// C[m,n] = A[m,k] @ B[n,k]^T, with B stored as nn.Linear stores weights
/// ([out, in]). Rows are contiguous; lda, ldb, ldc are row strides.
void gemmABt(const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
             int64_t ldc, int64_t m, int64_t n, int64_t k,
             unsigned numThreads = 0) noexcept;
/// The same with B bf16 (raw bits), widened as it is read: bitwise the
/// result of the f32 B it widens to.
void gemmABt(const float *a, int64_t lda, const uint16_t *b, int64_t ldb,
             float *c, int64_t ldc, int64_t m, int64_t n, int64_t k,
             unsigned numThreads = 0) noexcept;

/// out[t,:] = x[t,:] / sqrt(mean(x[t,:]^2) + eps) * w[:]; x, out are [T, d].
/// A null w is a norm without gain (w = 1); so is an empty w in the C
/// interface.
void rmsNorm(const float *x, const float *w, float *out, int64_t numTokens,
             int64_t hidden, float eps) noexcept;

/// The router: logits = x @ w^T (x [T, d], w [E, d]), p = softmax or sigmoid,
/// ids [T, k] = the k largest p in descending order (ties: lower expert
/// first), gates [T, k] = p[ids], divided by their sum if `normalize`, then
/// multiplied by `scaling`.
bool route(const float *x, const float *w, int32_t *ids, float *gates,
           const MoEShape &shape, Scoring scoring, bool normalize,
           float scaling, unsigned numThreads = 0) noexcept;

/// The expert group: out[t,:] = sum_j gates[t,j] * expert_{ids[t,j]}(x[t,:])
/// with expert_e(n) = down_e @ (act(gate_e @ n) * (up_e @ n)), summed in
/// ascending j. x, out: [T, d]; ids, gates: [T, k]; gateProj, upProj:
/// [E, f, d]; downProj: [E, d, f]. Ids outside [0, E) are skipped. `out` is
/// overwritten.
bool experts(const float *x, const int32_t *ids, const float *gates,
             const float *gateProj, const float *upProj, const float *downProj,
             float *out, const MoEShape &shape, Activation activation,
             unsigned numThreads = 0) noexcept;

/// exits[t] = 1 where the criterion between h[t,:] and prev[t,:] holds
/// (cosine: dot(h,p)/(|h||p|) >= tau; relative L2: |h-p|/|h| <= tau), else 0.
/// A non-finite criterion value never exits.
void exitTest(const float *h, const float *prev, int8_t *exits,
              int64_t numTokens, int64_t hidden, ExitCriterion criterion,
              float tau) noexcept;

} // namespace moert::cpu

// The C interface the compiler's lowering calls. Memrefs must be row-major
// with unit inner stride and packed rows; arguments whose sizes disagree
// leave NaN (ids: -1, exits: 0) in the outputs whose shape is known.
extern "C" {
void _mlir_ciface_moert_rms_norm(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<float, 1> *w,
                                 StridedMemRefType<float, 2> *out, float eps);
void _mlir_ciface_moert_route(StridedMemRefType<float, 2> *x,
                              StridedMemRefType<float, 2> *w,
                              StridedMemRefType<int32_t, 2> *ids,
                              StridedMemRefType<float, 2> *gates,
                              int32_t scoring, int32_t normalize,
                              float scaling);
void _mlir_ciface_moert_experts(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 2> *ids,
    StridedMemRefType<float, 2> *gates, StridedMemRefType<float, 3> *gate,
    StridedMemRefType<float, 3> *up, StridedMemRefType<float, 3> *down,
    StridedMemRefType<float, 2> *out, int32_t activation);
void _mlir_ciface_moert_exit_test(StridedMemRefType<float, 2> *h,
                                  StridedMemRefType<float, 2> *prev,
                                  StridedMemRefType<int8_t, 1> *exits,
                                  int32_t criterion, float tau);
}

#endif // MOERT_CPUKERNELS_H
