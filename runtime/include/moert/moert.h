/*===- moert.h - the moe runtime C API ---------------------------*- C -*-===*\
|*                                                                            *|
|* Applications link a compiled model (moe-compile's object and header) and   *|
|* this runtime. Every call that can fail returns a status; a NULL status is  *|
|* success. The runtime never exits or aborts on bad input.                   *|
|*                                                                            *|
|*   moert_context *ctx;  moert_model *model;                                 *|
|*   moert_context_create("cpu", &ctx); *|
|*   moert_model_load(ctx, &moe_my_model, "weights.safetensors", &model); *|
|*   moert_model_run(model, tokens, hidden_in, &outputs); *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/
#ifndef MOERT_MOERT_H
#define MOERT_MOERT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What moe-compile emits for one model: a JSON manifest (entry point, shapes,
 * weights and their safetensors names, "target": "cpu" or "cuda"; absent
 * means cpu) and the entry point, which takes the memref descriptors of:
 * hidden_in, hidden_out, exit_loop, expert_ids, expert_gates, then every
 * weight in manifest order. CPU models have `run` and no GPU builds (NULL,
 * 0). A cuda model has no `run` of its own (NULL) but one build per chip it
 * was compiled for, each with kernels tuned for that chip and the host code
 * that launches them (every data pointer a device pointer): moert_model_load
 * loads the build that fits the GPU best (moert_gpu_build). A weight's
 * optional "device_dtype" says what the entry reads:
 * "F32" (the default: f32, bf16 files widened) or "BF16" (raw bfloat16
 * elements, row-major, the same shape and element strides; BF16 file
 * tensors keep their bits, F32 ones are rounded to nearest even, NaN stays
 * NaN); it applies after "transpose" and {e} stacking, on cpu and cuda. */
/* One chip's build of a cuda model. `binary` holds its kernels: a CUDA
 * fatbinary (or cubin or PTX) of binary_size bytes, loaded with
 * cuModuleLoadData; `chip` is what they were compiled for ("sm_90a",
 * "sm_80"). The runtime prefers a build whose cubin runs on the GPU as is
 * (sm_90a only on compute capability 9.0; sm_80 on 8.x), the newest first,
 * then one whose PTX the driver compiles for a newer GPU (not sm_90a's). */
typedef struct moert_gpu_build {
  const char *chip;
  void (*run)(void **descriptors);
  const void *binary;
  int64_t binary_size;
} moert_gpu_build;

typedef struct moert_compiled_model {
  const char *manifest;
  void (*run)(void **descriptors);
  const moert_gpu_build *gpu_builds;
  int64_t gpu_build_count;
} moert_compiled_model;

typedef enum moert_status_code {
  MOERT_OK = 0,
  MOERT_INVALID_ARGUMENT = 1,
  MOERT_NOT_FOUND = 2,
  MOERT_UNAVAILABLE = 3, /* e.g. a device this build or machine lacks */
  MOERT_INTERNAL = 4,
} moert_status_code;

typedef struct moert_status_t *moert_status; /* NULL means success */
moert_status_code moert_status_get_code(moert_status status);
const char *moert_status_get_message(moert_status status);
void moert_status_free(moert_status status);

typedef struct moert_context moert_context;
/* device: "cpu", or "cuda": the first GPU of the CUDA driver (libcuda.so.1,
 * loaded at run time; the environment variable MOERT_CUDA_DRIVER names
 * another library, a testing hook). Without a driver or GPU "cuda" is
 * MOERT_UNAVAILABLE with a message that says what is missing; there is no
 * silent CPU fallback. Free a context after the models loaded into it. */
moert_status moert_context_create(const char *device, moert_context **out);
void moert_context_free(moert_context *ctx);
/* Later runs on a "cuda" context launch on `stream`, a CUstream of the
 * primary context of device 0 (e.g. a cudaStream_t made on device 0), after
 * the work already queued on it; NULL restores the context's own stream.
 * Runs still return only when their outputs are on the host.
 * MOERT_INVALID_ARGUMENT on a "cpu" context. */
moert_status moert_context_set_cuda_stream(moert_context *ctx, void *stream);
/* The GPU of a "cuda" context: its compute capability as 10 * major + minor
 * (90 for an H100 or H200, 80 for an A100), which says what to compile its
 * models for; 0 for a "cpu" context or NULL. */
int32_t moert_context_get_cuda_capability(const moert_context *ctx);

/* Model shape facts from the manifest. A decoder (is_decoder != 0) maps
 * token ids to logits over vocab_size and keeps a KV cache of up to
 * max_positions tokens per sequence; run it through sessions. */
typedef struct moert_model_info {
  int64_t hidden_size, passes, layers, top_k, experts;
  int32_t is_decoder;
  int64_t vocab_size, max_positions;
  const char *gpu_chip; /* cuda: the chip of the build loaded; NULL on cpu */
} moert_model_info;

typedef struct moert_model moert_model;
/* Binds every weight by its safetensors name (a {e} source stacks the
 * experts); a missing, misshaped or unexpected tensor is an error naming it.
 * bf16 weights are widened to f32 once here, unless their device_dtype is
 * BF16 (then they stay bf16, and f32 ones are rounded). A model compiled for
 * cuda needs a "cuda" context (its weights are copied to the GPU and its
 * kernels loaded here), a cpu model a "cpu" one. */
moert_status moert_model_load(moert_context *ctx,
                              const moert_compiled_model *compiled,
                              const char *weights_path, moert_model **out);
moert_model_info moert_model_get_info(const moert_model *model);
void moert_model_free(moert_model *model);

/* Caller-owned output buffers of one run over `tokens` tokens:
 * hidden_states [tokens, hidden_size], exit_loop [tokens],
 * expert_ids and expert_gates [passes * layers, tokens, top_k]. */
typedef struct moert_outputs {
  float *hidden_states;
  int32_t *exit_loop;
  int32_t *expert_ids;
  float *expert_gates;
} moert_outputs;

/* Runs the model. Safe to call concurrently on one loaded model: weights are
 * read-only and every run allocates its own scratch buffers. The buffers
 * are host memory on cuda too: the run copies them to and from the GPU and
 * returns when the outputs are written; a CUDA failure is a status naming
 * the failed call and the CUDA error. */
moert_status moert_model_run(moert_model *model, int64_t tokens,
                             const float *hidden_states,
                             const moert_outputs *outputs);

/* Decoders: one session per sequence holds its KV cache. A session is used
 * by one thread at a time; sessions of one model run concurrently. A decoder
 * compiled for cuda keeps its session's KV caches in device memory
 * (allocated at create, freed at free; free sessions before their model);
 * its entry takes tokens, positions, logits, exit_loop, the K and V cache of
 * every slot in manifest order ([max_positions, width] each), then the
 * weights, all as device pointers. Each forward still takes and returns host
 * buffers, and a CUDA failure is a status naming the call and the error, as
 * for moert_model_run; a failed forward leaves the session's position. */
typedef struct moert_session moert_session;
moert_status moert_session_create(moert_model *model, moert_session **out);
/* The same with KV caches of `capacity` positions, 1 to max_positions, for
 * sequences known to be shorter: memory in proportion (a session of
 * max_positions can take gigabytes for a large model); a forward past the
 * capacity is an error. */
moert_status moert_session_create_with_capacity(moert_model *model,
                                                int64_t capacity,
                                                moert_session **out);
/* Runs `tokens` [n] at the session's next positions (0 for the first call:
 * prefill; then one token at a time: decode), appending to its KV caches,
 * and writes logits [n, vocab_size] and, unless it is NULL, exit_loop [n]:
 * the loop pass after which each token stopped (looped decoders; passes - 1
 * for a token that ran them all). Running past max_positions is an error. */
moert_status moert_session_forward(moert_session *session,
                                   const int32_t *tokens, int64_t n,
                                   float *logits, int32_t *exit_loop);
int64_t moert_session_position(const moert_session *session);
void moert_session_free(moert_session *session);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_MOERT_H */
