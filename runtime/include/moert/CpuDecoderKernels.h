//===- CpuDecoderKernels.h - Dense decoder kernels --------------*- C++ -*-===//
//
// The dense parts of a decoder around the MoE layers (Mixtral, OLMoE,
// Qwen3-MoE): token embedding, unembedding and causal self-attention over a KV
// cache, as a C++ API on raw row-major pointers and as the
// `_mlir_ciface_moert_*` functions of the compiler's CPU lowering. They follow
// the conventions of CpuKernels.h: no throwing or aborting, NaN in the float
// outputs on inconsistent sizes or out-of-range values, and bitwise identical
// results for any thread count.
//
// Unembedding has no C++ entry point of its own: it is gemmABt(x, d, w, d,
// out, V, n, V, d).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CPUDECODERKERNELS_H
#define MOERT_CPUDECODERKERNELS_H

#include "moert/CpuKernels.h"

#include "mlir/ExecutionEngine/CRunnerUtils.h"

#include <cstdint>

namespace moert::cpu {

/// out[i,:] = table[tokens[i],:] for table [vocab, hidden]; a token outside
/// [0, vocab) gives a NaN row.
void embed(const int32_t *tokens, const float *table, float *out,
           int64_t numTokens, int64_t vocab, int64_t hidden) noexcept;
/// The same from a bf16 table (raw bits), widened.
void embed(const int32_t *tokens, const uint16_t *table, float *out,
           int64_t numTokens, int64_t vocab, int64_t hidden) noexcept;

/// The normalisation of queries and keys before RoPE.
enum class QkNorm : int32_t {
  None = 0,    ///< Mixtral
  Full = 1,    ///< OLMoE: rmsnorm over all heads, weights [H*hd], [KV*hd]
  PerHead = 2, ///< Qwen3: rmsnorm over each head, weights [hd]
};

/// The sizes of one attention call.
struct AttentionShape {
  int64_t numTokens;    ///< n, the tokens of this call
  int64_t hidden;       ///< d
  int64_t numHeads;     ///< H
  int64_t numKvHeads;   ///< KV, a divisor of H
  int64_t headDim;      ///< hd, even
  int64_t maxPositions; ///< the rows of the KV cache
};

struct AttentionOptions {
  float ropeTheta;
  float clip; ///< q, k and v are clamped to [-clip, clip] if clip > 0
  QkNorm norm;
  float normEps;
  float scale = 0.0f;           ///< score scale; 0 means 1/sqrt(hd)
  bool ropeInterleaved = false; ///< rotate pairs (2i, 2i+1), as LoopLM does
  /// RoPE scaling as #moe.rope_scaling defines it: pair i turns at
  /// inv_freq[i] * ((1 - r_i) + r_i / ropeFactor), r_i the ramp from 0 at
  /// ropeRampLow to 1 at ropeRampHigh (1 from ropeRampHigh on), and cos and
  /// sin are multiplied by ropeAttentionFactor. The defaults leave RoPE as
  /// it is.
  float ropeFactor = 1.0f;
  float ropeRampLow = 0.0f, ropeRampHigh = 0.0f;
  float ropeAttentionFactor = 1.0f;
  /// With W > 0, a query at position p sees the keys at p - W + 1 .. p only.
  int64_t slidingWindow = 0;
  /// Biases added to the projections ([H*hd], [KV*hd] twice, [d]), q, k and
  /// v before their norms; null: none.
  const float *qBias = nullptr, *kBias = nullptr, *vBias = nullptr,
              *oBias = nullptr;
};

/// Causal self-attention of n tokens of one sequence at the consecutive
/// positions positions[0] .. positions[0] + n - 1:
///  - q = x wq^T [n, H*hd], k = x wk^T, v = x wv^T [n, KV*hd], clamped, with
///    q and k normalised as `norm` says and rotated by RoPE (pair i is
///    elements (i, i + hd/2), or (2i, 2i+1) with ropeInterleaved;
///    inv_freq[i] = theta^(-2i/hd), scaled as the options say);
///  - the k and v rows are stored into kCache and vCache [maxPositions, KV*hd]
///    at their positions;
///  - head h of the token at position p attends to cache positions 0..p of kv
///    head h / (H/KV) (p - W + 1 .. p with a sliding window W) with
///    softmax(q.k * scale), scale 1/sqrt(hd) unless options.scale > 0;
///  - out [n, d] = the heads' outputs [n, H*hd] @ wo^T, wo [d, H*hd].
/// Cache rows below positions[0] must hold the sequence's earlier tokens.
/// Fails, with NaN in `out` and the caches untouched, if the positions are not
/// consecutive within [0, maxPositions), the shape is not as above,
/// ropeTheta, ropeFactor or ropeAttentionFactor is not positive, the ramp is
/// not 0 <= low <= high, the window is negative, or scratch memory is short.
bool attention(const float *x, const int32_t *positions, const float *wq,
               const float *wk, const float *wv, const float *wo,
               const float *qNorm, const float *kNorm, float *kCache,
               float *vCache, float *out, const AttentionShape &shape,
               const AttentionOptions &options,
               unsigned numThreads = 0) noexcept;
/// The same with bf16 projections (raw bits), widened as they are read.
bool attention(const float *x, const int32_t *positions, const uint16_t *wq,
               const uint16_t *wk, const uint16_t *wv, const uint16_t *wo,
               const float *qNorm, const float *kNorm, float *kCache,
               float *vCache, float *out, const AttentionShape &shape,
               const AttentionOptions &options,
               unsigned numThreads = 0) noexcept;

/// A dense gated MLP: out [n, d] = (act(x gate^T) * (x up^T)) down^T, with
/// gate and up [f, d] and down [d, f]. Fails, with NaN in `out`, if scratch
/// memory is short.
bool mlp(const float *x, const float *gate, const float *up, const float *down,
         float *out, int64_t numTokens, int64_t hidden, int64_t ffn,
         Activation activation, unsigned numThreads = 0) noexcept;
/// The same with bf16 weights (raw bits), widened as they are read.
bool mlp(const float *x, const uint16_t *gate, const uint16_t *up,
         const uint16_t *down, float *out, int64_t numTokens, int64_t hidden,
         int64_t ffn, Activation activation, unsigned numThreads = 0) noexcept;

/// Looped decoders' exit test on the next-token distribution: for each of
/// `numTokens` rows of h [n, d], p = softmax(rmsnorm(h, norm) @ lmHead^T)
/// (no norm when `norm` is null, a norm without gain when unitNorm too);
/// exits[t] = 1 when max p >= tau
/// (criterion 2, max_prob) or the entropy of p in nats <= tau (criterion 3).
/// A non-finite distribution never exits. Fails (no exits) if scratch memory
/// is short.
bool exitTestLmHead(const float *h, const float *norm, float normEps,
                    const float *lmHead, int8_t *exits, int64_t numTokens,
                    int64_t hidden, int64_t vocab, int32_t criterion, float tau,
                    bool unitNorm = false) noexcept;

} // namespace moert::cpu

// The C interface, under the conventions of CpuKernels.h. qNorm and kNorm are
// [H*hd] and [KV*hd] for normKind 1, [hd] for normKind 2, and ignored for
// normKind 0. An attention bias of size 0 is none.
extern "C" {
void _mlir_ciface_moert_embed(StridedMemRefType<int32_t, 1> *tokens,
                              StridedMemRefType<float, 2> *table,
                              StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_unembed(StridedMemRefType<float, 2> *x,
                                StridedMemRefType<float, 2> *w,
                                StridedMemRefType<float, 2> *out);
/// moert_embed and moert_unembed with a bf16 table / LM head
/// (memref<...xbf16>).
void _mlir_ciface_moert_embed_bf16(StridedMemRefType<int32_t, 1> *tokens,
                                   StridedMemRefType<uint16_t, 2> *table,
                                   StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_unembed_bf16(StridedMemRefType<float, 2> *x,
                                     StridedMemRefType<uint16_t, 2> *w,
                                     StridedMemRefType<float, 2> *out);
void _mlir_ciface_moert_attention(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *positions,
    StridedMemRefType<float, 2> *wq, StridedMemRefType<float, 2> *wk,
    StridedMemRefType<float, 2> *wv, StridedMemRefType<float, 2> *wo,
    StridedMemRefType<float, 1> *qNorm, StridedMemRefType<float, 1> *kNorm,
    StridedMemRefType<float, 2> *kCache, StridedMemRefType<float, 2> *vCache,
    StridedMemRefType<float, 2> *out, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, float ropeTheta, float clip, int32_t normKind,
    float normEps, float scale, int32_t ropeInterleaved, float ropeFactor,
    float ropeRampLow, float ropeRampHigh, float ropeAttentionFactor,
    int64_t slidingWindow, StridedMemRefType<float, 1> *qBias,
    StridedMemRefType<float, 1> *kBias, StridedMemRefType<float, 1> *vBias,
    StridedMemRefType<float, 1> *oBias);
/// moert_attention with bf16 q, k, v and o projections (the norms f32).
void _mlir_ciface_moert_attention_bf16(
    StridedMemRefType<float, 2> *x, StridedMemRefType<int32_t, 1> *positions,
    StridedMemRefType<uint16_t, 2> *wq, StridedMemRefType<uint16_t, 2> *wk,
    StridedMemRefType<uint16_t, 2> *wv, StridedMemRefType<uint16_t, 2> *wo,
    StridedMemRefType<float, 1> *qNorm, StridedMemRefType<float, 1> *kNorm,
    StridedMemRefType<float, 2> *kCache, StridedMemRefType<float, 2> *vCache,
    StridedMemRefType<float, 2> *out, int64_t numHeads, int64_t numKvHeads,
    int64_t headDim, float ropeTheta, float clip, int32_t normKind,
    float normEps, float scale, int32_t ropeInterleaved, float ropeFactor,
    float ropeRampLow, float ropeRampHigh, float ropeAttentionFactor,
    int64_t slidingWindow, StridedMemRefType<float, 1> *qBias,
    StridedMemRefType<float, 1> *kBias, StridedMemRefType<float, 1> *vBias,
    StridedMemRefType<float, 1> *oBias);
/// mlp; activation 0 is SiLU, 1 tanh GELU (CpuKernels.h's Activation).
void _mlir_ciface_moert_mlp(StridedMemRefType<float, 2> *x,
                            StridedMemRefType<float, 2> *gate,
                            StridedMemRefType<float, 2> *up,
                            StridedMemRefType<float, 2> *down,
                            StridedMemRefType<float, 2> *out,
                            int32_t activation);
void _mlir_ciface_moert_mlp_bf16(StridedMemRefType<float, 2> *x,
                                 StridedMemRefType<uint16_t, 2> *gate,
                                 StridedMemRefType<uint16_t, 2> *up,
                                 StridedMemRefType<uint16_t, 2> *down,
                                 StridedMemRefType<float, 2> *out,
                                 int32_t activation);
/// exitTestLmHead; `norm` is used when hasNorm is 1, a norm without gain is
/// applied when it is 2, none when 0.
void _mlir_ciface_moert_exit_test_lm(StridedMemRefType<float, 2> *h,
                                     StridedMemRefType<float, 1> *norm,
                                     int32_t hasNorm, float normEps,
                                     StridedMemRefType<float, 2> *lmHead,
                                     StridedMemRefType<int8_t, 1> *exits,
                                     int32_t criterion, float tau);
}

#endif // MOERT_CPUDECODERKERNELS_H
