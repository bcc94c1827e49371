//===- CudaBackendTest.cpp - device "cuda" and the mgpu* ABI --------------===//
//
// The runtime's CUDA path runs here against a fake driver (FakeCuda.h, a
// libcuda.so.1 over host memory that MOERT_CUDA_DRIVER points the runtime
// at), with a hand-written stand-in for a model's host code that calls the
// mgpu* functions as MLIR's lowering does. RealGpu runs the same host code
// with a PTX kernel on a real GPU, and skips where there is none.
//
//===----------------------------------------------------------------------===//
#include "CudaBackend.h"
#include "FakeCuda.h"

#include "mlir/ExecutionEngine/CRunnerUtils.h"
#include "moert/GpuRuntime.h"
#include "moert/Safetensors.h"
#include "moert/moert.hpp"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "gtest/gtest.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <thread>

namespace {
template <typename T, int N> using Desc = StridedMemRefType<T, N>;

/// What the host code of a model compiled for CUDA does: everything through
/// the mgpu* ABI, on device pointers. hidden_out = hidden_in + norm (by the
/// kernel `kernel`, on a device copy of hidden_in), exit_loop = 0,
/// expert_ids = 7, expert_gates = 1 (by memsets). Its launches ask for
/// `sharedBytes` of dynamic shared memory.
void hostCode(void **descriptors, const char *kernel, bool resident = false,
              int32_t sharedBytes = 0) {
  auto *in = static_cast<Desc<float, 2> *>(descriptors[0]);
  auto *out = static_cast<Desc<float, 2> *>(descriptors[1]);
  auto *exitLoop = static_cast<Desc<int32_t, 1> *>(descriptors[2]);
  auto *ids = static_cast<Desc<int32_t, 3> *>(descriptors[3]);
  auto *gates = static_cast<Desc<float, 3> *>(descriptors[4]);
  auto *norm = static_cast<Desc<float, 1> *>(descriptors[5]);
  int64_t n = in->sizes[0] * in->sizes[1], d = in->sizes[1];
  int64_t trace = ids->sizes[0] * ids->sizes[1] * ids->sizes[2];

  void *stream = mgpuStreamCreate();
  void *function = mgpuModuleGetFunction(nullptr, kernel);
  void *copy = mgpuMemAlloc(n * 4, stream, /*isHostShared=*/false);
  mgpuMemcpy(copy, in->data, n * 4, stream);
  void *event = mgpuEventCreate();
  mgpuEventRecord(event, stream);
  mgpuStreamWaitEvent(stream, event);
  void *shared = mgpuMemAlloc(4, stream, /*isHostShared=*/true);
  mgpuMemset16(shared, 0x1234, 2, stream);
  mgpuMemset32(exitLoop->data, 0, exitLoop->sizes[0], stream);
  mgpuMemset32(ids->data, 7, trace, stream);
  mgpuMemset32(gates->data, 0x3f800000, trace, stream); // 1.0f
  float *normData = norm->data, *outData = out->data;
  void *params[] = {&copy, &normData, &outData, &n, &d};
  if (resident) {
    mgpuLaunchKernel(function, 264, 1, 1, 256, 1, 1, sharedBytes, stream,
                     params, nullptr, 5);
  } else {
    // A form of a GEMM that gets no rows: an empty grid, no work.
    mgpuLaunchKernel(function, 0, 1, 1, 128, 1, 1, sharedBytes, stream, params,
                     nullptr, 5);
    mgpuLaunchKernel(function, (n + 127) / 128, 1, 1, 128, 1, 1, sharedBytes,
                     stream, params, nullptr, 5);
  }
  mgpuEventSynchronize(event);
  mgpuEventDestroy(event);
  mgpuMemFree(shared, stream);
  mgpuMemFree(copy, stream);
  mgpuStreamSynchronize(stream);
  mgpuStreamDestroy(stream);
}
void addNormHostCode(void **descriptors) { hostCode(descriptors, "add_norm"); }
/// add_norm's host code of two builds of one model, telling which ran.
std::string lastBuildRun;
void addNormNewerBuild(void **descriptors) {
  lastBuildRun = "newer";
  addNormHostCode(descriptors);
}
void addNormOlderBuild(void **descriptors) {
  lastBuildRun = "older";
  addNormHostCode(descriptors);
}
/// The same through a resident loop kernel, launched as the compiled host
/// code does: 264 blocks of 256 threads, however many fit.
void residentHostCode(void **descriptors) {
  hostCode(descriptors, "resident_loop_0", /*resident=*/true);
}
/// The same after asking for a tensor map of the norm weight, as the host
/// code of --wgmma kernels does for each weight (the dims are made up: the
/// fake encodes without reading memory).
void *lastTensorMap = nullptr;
void tensorMapHostCode(void **descriptors) {
  auto *norm = static_cast<Desc<float, 1> *>(descriptors[5]);
  lastTensorMap = moert_cuda_tensor_map_bf16_3d(norm->data, 64, 128, 4, 64, 64);
  hostCode(descriptors, "add_norm");
}
/// The same with the dynamic shared memory of the --wgmma kernels' pipeline
/// (sharedHostCodeBytes).
int32_t sharedHostCodeBytes = 0;
void sharedHostCode(void **descriptors) {
  hostCode(descriptors, "add_norm", /*resident=*/false, sharedHostCodeBytes);
}
void missingKernelHostCode(void **descriptors) {
  hostCode(descriptors, "no_such_kernel");
}

/// The fake driver's add_norm: the PTX kernel below, on the host.
void addNormKernel(void **params) {
  const float *in = *static_cast<float **>(params[0]);
  const float *norm = *static_cast<float **>(params[1]);
  float *out = *static_cast<float **>(params[2]);
  int64_t n = *static_cast<int64_t *>(params[3]);
  int64_t d = *static_cast<int64_t *>(params[4]);
  for (int64_t i = 0; i < n; ++i)
    out[i] = in[i] + norm[i % d];
}
//===----------------------------------------------------------------------===//
// A decoder stand-in: cache_widths [2, 3], vocab 4, the weight norm [3].
//===----------------------------------------------------------------------===//

/// What one forward of the stand-in works on: host memory on cpu, the
/// fake's device memory on cuda.
struct DecoderData {
  const int32_t *tokens, *positions;
  float *logits;
  int32_t *exitLoop;
  float *k0, *v0, *k1, *v1; ///< [maxPositions, 2], [.., 2], [.., 3], [.., 3]
  const float *norm;
  int64_t n, vocab, maxPositions;
};

/// Token t at position p appends K0[p] = {t, p}, V0[p] = {2t, 1},
/// K1[p] = {t + 1, 0, 0}, V1[p] = {0, 0, 3t} and attends to every row up to
/// p: logits[v] = norm[v % 3] + sum over q <= p of (K0[q][0] (v + 1) +
/// K0[q][1] + V0[q][0] + V0[q][1] + K1[q][0] + V1[q][2]), i.e.
/// norm[v % 3] + sum (t_q (v + 7) + q + 2); exit_loop = t % 2.
void decoderStep(const DecoderData &d) {
  for (int64_t i = 0; i < d.n; ++i) {
    int64_t p = d.positions[i];
    float t = float(d.tokens[i]);
    float *k0 = d.k0 + p * 2, *v0 = d.v0 + p * 2;
    float *k1 = d.k1 + p * 3, *v1 = d.v1 + p * 3;
    k0[0] = t, k0[1] = float(p);
    v0[0] = 2 * t, v0[1] = 1;
    k1[0] = t + 1, k1[1] = k1[2] = 0;
    v1[0] = v1[1] = 0, v1[2] = 3 * t;
    for (int64_t v = 0; v < d.vocab; ++v) {
      float sum = d.norm[v % 3];
      for (int64_t q = 0; q <= p; ++q)
        sum += d.k0[q * 2] * float(v + 1) + d.k0[q * 2 + 1] + d.v0[q * 2] +
               d.v0[q * 2 + 1] + d.k1[q * 3] + d.v1[q * 3 + 2];
      d.logits[i * d.vocab + v] = sum;
    }
    d.exitLoop[i] = d.tokens[i] % 2;
  }
}

/// Problems the stand-ins saw: misshaped descriptors, or (on cuda) data
/// pointers outside device memory.
std::atomic<int> standInProblems{0};
FakeCudaIsDeviceMemory fakeIsDevice = nullptr;

/// Reads the entry's descriptors, checking the ABI's shapes: tokens,
/// positions, logits, exit_loop, K0, V0, K1, V1, norm.
DecoderData decoderData(void **descriptors) {
  auto *tokens = static_cast<Desc<int32_t, 1> *>(descriptors[0]);
  auto *positions = static_cast<Desc<int32_t, 1> *>(descriptors[1]);
  auto *logits = static_cast<Desc<float, 2> *>(descriptors[2]);
  auto *exitLoop = static_cast<Desc<int32_t, 1> *>(descriptors[3]);
  Desc<float, 2> *caches[4];
  for (int i = 0; i < 4; ++i)
    caches[i] = static_cast<Desc<float, 2> *>(descriptors[4 + i]);
  auto *norm = static_cast<Desc<float, 1> *>(descriptors[8]);
  int64_t n = tokens->sizes[0], maxPositions = caches[0]->sizes[0];
  bool ok = positions->sizes[0] == n && logits->sizes[0] == n &&
            logits->sizes[1] == 4 && logits->strides[0] == 4 &&
            exitLoop->sizes[0] == n && norm->sizes[0] == 3;
  for (int i = 0; i < 4; ++i)
    ok &= caches[i]->sizes[0] == maxPositions &&
          caches[i]->sizes[1] == (i < 2 ? 2 : 3) &&
          caches[i]->strides[0] == caches[i]->sizes[1];
  if (!ok)
    ++standInProblems;
  return {tokens->data,
          positions->data,
          logits->data,
          exitLoop->data,
          caches[0]->data,
          caches[1]->data,
          caches[2]->data,
          caches[3]->data,
          norm->data,
          n,
          4,
          maxPositions};
}

/// The cpu decoder's entry: the step on the descriptors' host memory.
void cpuDecoderHostCode(void **descriptors) {
  decoderStep(decoderData(descriptors));
}

/// The fake driver's decoder_step: checks that it was given device memory,
/// then runs the step.
void decoderStepKernel(void **params) {
  DecoderData d = *static_cast<DecoderData *>(params[0]);
  size_t n = size_t(d.n), rows = size_t(d.maxPositions);
  const std::pair<const void *, size_t> regions[] = {
      {d.tokens, n * 4},   {d.positions, n * 4}, {d.logits, n * 16},
      {d.exitLoop, n * 4}, {d.k0, rows * 8},     {d.v0, rows * 8},
      {d.k1, rows * 12},   {d.v1, rows * 12},    {d.norm, 12}};
  for (const auto &[p, bytes] : regions)
    if (!fakeIsDevice || !fakeIsDevice(p, bytes)) {
      ++standInProblems;
      return;
    }
  decoderStep(d);
}

/// The cuda decoder's host code: a scratch allocation (as lowered code
/// makes) and one launch of decoder_step, through the mgpu* ABI.
void cudaDecoderHostCode(void **descriptors) {
  DecoderData d = decoderData(descriptors);
  void *stream = mgpuStreamCreate();
  void *function = mgpuModuleGetFunction(nullptr, "decoder_step");
  void *scratch = mgpuMemAlloc(uint64_t(d.n) * 4, stream, false);
  void *params[] = {&d};
  mgpuLaunchKernel(function, 1, 1, 1, 32, 1, 1, 0, stream, params, nullptr, 1);
  mgpuMemFree(scratch, stream);
  mgpuStreamSynchronize(stream);
  mgpuStreamDestroy(stream);
}

/// The stand-in run directly on host caches: what a session must produce.
class DecoderReference {
public:
  explicit DecoderReference(int64_t maxPositions)
      : maxPositions(maxPositions), k0(maxPositions * 2), v0(maxPositions * 2),
        k1(maxPositions * 3), v1(maxPositions * 3) {}
  void forward(const int32_t *tokens, int64_t n, float *logits,
               int32_t *exitLoop) {
    std::vector<int32_t> positions(n);
    for (int64_t i = 0; i < n; ++i)
      positions[i] = int32_t(position + i);
    decoderStep({tokens, positions.data(), logits, exitLoop, k0.data(),
                 v0.data(), k1.data(), v1.data(), norm, n, 4, maxPositions});
    position += n;
  }
  int64_t position = 0;

private:
  const float norm[3] = {1.0f, 2.0f, 3.0f};
  int64_t maxPositions;
  std::vector<float> k0, v0, k1, v1;
};

const FakeCudaKernel kFakeKernels[] = {{"add_norm", addNormKernel},
                                       {"decoder_step", decoderStepKernel},
                                       {"resident_loop_0", addNormKernel}};
const FakeCudaBinary kFakeBinary = {"moert-fake-cubn", kFakeKernels, 3};

// add_norm for a real GPU (PTX ISA 7.0, so drivers from CUDA 11 on JIT it).
const char kAddNormPtx[] = R"(.version 7.0
.target sm_80
.address_size 64
.visible .entry add_norm(.param .u64 in, .param .u64 norm, .param .u64 out,
                         .param .u64 n, .param .u64 d)
{
  .reg .pred %p;
  .reg .f32 %f<3>;
  .reg .b32 %r<3>;
  .reg .b64 %rd<12>;
  ld.param.u64 %rd1, [in];
  ld.param.u64 %rd2, [norm];
  ld.param.u64 %rd3, [out];
  ld.param.u64 %rd4, [n];
  ld.param.u64 %rd5, [d];
  mov.u32 %r1, %ctaid.x;
  mov.u32 %r2, %ntid.x;
  mul.wide.u32 %rd6, %r1, %r2;
  mov.u32 %r1, %tid.x;
  cvt.u64.u32 %rd7, %r1;
  add.s64 %rd6, %rd6, %rd7;
  setp.ge.s64 %p, %rd6, %rd4;
  @%p bra DONE;
  rem.s64 %rd7, %rd6, %rd5;
  shl.b64 %rd8, %rd6, 2;
  shl.b64 %rd9, %rd7, 2;
  add.s64 %rd10, %rd1, %rd8;
  ld.global.f32 %f1, [%rd10];
  add.s64 %rd11, %rd2, %rd9;
  ld.global.f32 %f2, [%rd11];
  add.f32 %f1, %f1, %f2;
  add.s64 %rd10, %rd3, %rd8;
  st.global.f32 [%rd10], %f1;
DONE:
  ret;
}
)";

// The manifest of a model with one weight; `extra` adds fields.
#define MANIFEST(extra)                                                        \
  "{\"entry\": \"forward\", \"hidden_size\": 3, \"passes\": 1, "               \
  "\"layers\": 1, \"top_k\": 1, \"experts\": 2, " extra                        \
  " \"weights\": [{\"source\": \"model.norm.weight\", \"dtype\": \"F32\", "    \
  "\"shape\": [3]}]}"

/// The record of a cuda model with one build, as moe-compile writes it (the
/// fake device is sm_90 unless MOERT_FAKE_CUDA_SM says otherwise). Copies
/// point at their own build, for tests to change.
struct CudaModel {
  moert_gpu_build build;
  moert_compiled_model compiled;
  CudaModel(const char *manifest, void (*run)(void **),
            const char *chip = "sm_90")
      : build{chip, run, &kFakeBinary, sizeof(kFakeBinary)}, compiled{manifest,
                                                                      nullptr,
                                                                      &build,
                                                                      1} {}
  CudaModel(const CudaModel &other)
      : build(other.build), compiled(other.compiled) {
    compiled.gpu_builds = &build;
  }
  CudaModel &operator=(const CudaModel &) = delete;
  operator const moert_compiled_model &() const { return compiled; }
};

const CudaModel kCudaModel(MANIFEST(R"("target": "cuda",)"), addNormHostCode);
const moert_compiled_model kCpuModel = {MANIFEST(""), addNormHostCode, nullptr,
                                        0};
const CudaModel kCudaTensorMapModel(MANIFEST(R"("target": "cuda",)"),
                                    tensorMapHostCode);
const CudaModel kCudaResidentModel(MANIFEST(R"("target": "cuda",)"),
                                   residentHostCode);
const CudaModel kCudaSharedModel(MANIFEST(R"("target": "cuda",)"),
                                 sharedHostCode);

#define DECODER_FIELDS                                                         \
  R"("kind": "decoder", "vocab_size": 4, "max_positions": 8,)"                 \
  R"( "cache_widths": [2, 3],)"
const CudaModel kCudaDecoder(MANIFEST(R"("target": "cuda",)" DECODER_FIELDS),
                             cudaDecoderHostCode);
const moert_compiled_model kCpuDecoder = {MANIFEST(DECODER_FIELDS),
                                          cpuDecoderHostCode, nullptr, 0};

const char *const kFakeVariables[] = {"MOERT_CUDA_DRIVER",
                                      "MOERT_FAKE_CUDA_FAIL",
                                      "MOERT_FAKE_CUDA_DEVICES",
                                      "MOERT_FAKE_CUDA_SM",
                                      "MOERT_FAKE_CUDA_POOLS",
                                      "MOERT_FAKE_CUDA_SMS",
                                      "MOERT_FAKE_CUDA_BLOCKS_PER_SM",
                                      "MOERT_FAKE_CUDA_COOPERATIVE"};

class CudaTest : public ::testing::Test {
protected:
  void SetUp() override {
    for (const char *name : kFakeVariables)
      unsetenv(name);
    ASSERT_FALSE(llvm::sys::fs::createUniqueDirectory("moert-cuda", dir));
    llvm::SmallString<128> path(dir);
    llvm::sys::path::append(path, "w.safetensors");
    weights = std::string(path);
    ASSERT_FALSE(bool(moert::writeSafetensors(
        weights, {{"model.norm.weight",
                   moert::DType::F32,
                   {3},
                   {reinterpret_cast<const uint8_t *>(norm), 12}}})));
  }
  void TearDown() override {
    for (const char *name : kFakeVariables)
      unsetenv(name);
    llvm::sys::fs::remove_directories(dir);
  }

  /// Runs 2 tokens and checks the outputs.
  void runAndCheck(moert::Model &model) {
    float in[6] = {0, 0, 0, 10, 20, 30}, out[6] = {};
    int32_t exitLoop[2] = {-1, -1}, ids[2] = {};
    float gates[2] = {};
    moert_outputs outputs{out, exitLoop, ids, gates};
    std::string error;
    ASSERT_TRUE(model.run(2, in, outputs, &error)) << error;
    EXPECT_EQ(std::vector<float>(out, out + 6),
              (std::vector<float>{1, 2, 3, 11, 22, 33}));
    EXPECT_EQ(std::vector<int32_t>(exitLoop, exitLoop + 2),
              (std::vector<int32_t>{0, 0}));
    EXPECT_EQ(std::vector<int32_t>(ids, ids + 2), (std::vector<int32_t>{7, 7}));
    EXPECT_EQ(std::vector<float>(gates, gates + 2), (std::vector<float>{1, 1}));
  }
  /// Runs 2 tokens, expecting an error.
  std::string runError(moert::Model &model) {
    float in[6] = {}, out[6];
    int32_t exitLoop[2], ids[2];
    float gates[2];
    moert_outputs outputs{out, exitLoop, ids, gates};
    std::string error;
    EXPECT_FALSE(model.run(2, in, outputs, &error));
    return error;
  }

  llvm::SmallString<128> dir;
  std::string weights;
  const float norm[3] = {1.0f, 2.0f, 3.0f};
};

/// Tests against the fake driver.
class FakeCudaTest : public CudaTest {
protected:
  void SetUp() override {
    CudaTest::SetUp();
    setenv("MOERT_CUDA_DRIVER", MOERT_FAKE_CUDA_DRIVER, 1);
    fake = dlopen(MOERT_FAKE_CUDA_DRIVER, RTLD_NOW | RTLD_LOCAL);
    ASSERT_TRUE(fake) << dlerror();
    getCounters = reinterpret_cast<FakeCudaGetCounters>(
        dlsym(fake, FAKE_CUDA_COUNTERS_SYMBOL));
    ASSERT_TRUE(getCounters);
    fakeIsDevice = reinterpret_cast<FakeCudaIsDeviceMemory>(
        dlsym(fake, FAKE_CUDA_IS_DEVICE_MEMORY_SYMBOL));
    ASSERT_TRUE(fakeIsDevice);
    standInProblems = 0;
  }
  void TearDown() override {
    EXPECT_EQ(standInProblems, 0) << "a stand-in saw a misshaped descriptor "
                                     "or a pointer outside device memory";
    fakeIsDevice = nullptr;
    if (fake)
      dlclose(fake);
    CudaTest::TearDown();
  }
  FakeCudaCounters counters() { return getCounters(); }
  void expectNothingLive() {
    FakeCudaCounters c = counters();
    EXPECT_EQ(c.allocations, 0);
    EXPECT_EQ(c.streams, 0);
    EXPECT_EQ(c.events, 0);
    EXPECT_EQ(c.modules, 0);
    EXPECT_EQ(c.primaryRefs, 0);
    EXPECT_EQ(c.contextDepth, 0);
  }
  template <typename F> F fakeSymbol(const char *name) {
    return reinterpret_cast<F>(dlsym(fake, name));
  }

  void *fake = nullptr;
  FakeCudaGetCounters getCounters = nullptr;
};

TEST_F(FakeCudaTest, LoadsRunsAndFreesEverything) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    EXPECT_EQ(counters().primaryRefs, 1);
    EXPECT_EQ(counters().streams, 1); // the context's own
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    EXPECT_EQ(counters().allocations, 1); // the weight, on the device
    EXPECT_EQ(counters().modules, 1);
    int launches = counters().launches;
    runAndCheck(*model);
    runAndCheck(*model); // the function cache serves the second run
    // One launch per run: the empty grid never reaches the driver.
    EXPECT_EQ(counters().launches, launches + 2);
    EXPECT_EQ(counters().allocations, 1); // the runs' buffers are freed
    EXPECT_EQ(counters().events, 0);
    EXPECT_EQ(counters().contextDepth, 0); // pushed and popped
  }
  expectNothingLive();
}

/// The device pointers of the two weights a cuda run's host code was given.
std::vector<const void *> seenDeviceWeights;
void captureWeightsHostCode(void **descriptors) {
  seenDeviceWeights.clear();
  for (int w = 5; w < 7; ++w)
    seenDeviceWeights.push_back(
        static_cast<Desc<uint16_t, 1> *>(descriptors[w])->data);
}

TEST_F(FakeCudaTest, BF16DeviceWeightsAreUploadedAsBF16) {
  // The fixture's norm {1, 2, 3} (F32 file) bound as BF16, and a BF16
  // tensor stored [3, 2] bound transposed as BF16 [2, 3].
  const uint16_t w[6] = {0x3f80, 0x7f81, 0x8000, 0x0001, 0xc0a0, 0xff80};
  llvm::SmallString<128> path(dir);
  llvm::sys::path::append(path, "bf16.safetensors");
  ASSERT_FALSE(bool(moert::writeSafetensors(
      path, {{"model.norm.weight",
              moert::DType::F32,
              {3},
              {reinterpret_cast<const uint8_t *>(norm), 12}},
             {"w",
              moert::DType::BF16,
              {3, 2},
              {reinterpret_cast<const uint8_t *>(w), 12}}})));
  CudaModel compiled(
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2, "target": "cuda", "weights": [
        {"source": "model.norm.weight", "dtype": "F32", "shape": [3],
         "device_dtype": "BF16"},
        {"source": "w", "dtype": "BF16", "shape": [2, 3], "transpose": true,
         "device_dtype": "BF16"}]})",
      captureWeightsHostCode);
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, compiled, std::string(path), &error);
    ASSERT_TRUE(model) << error;
    EXPECT_EQ(counters().allocations, 2);
    float in[3] = {}, out[3];
    int32_t exitLoop[1], ids[1];
    float gates[1];
    moert_outputs outputs{out, exitLoop, ids, gates};
    ASSERT_TRUE(model->run(1, in, outputs, &error)) << error;
    ASSERT_EQ(seenDeviceWeights.size(), 2u);
    // Each is one allocation of exactly 2 bytes per element.
    const uint16_t normBits[3] = {0x3f80, 0x4000, 0x4040};
    const uint16_t wBits[6] = {0x3f80, 0x8000, 0xc0a0, 0x7f81, 0x0001, 0xff80};
    const void *normDevice = seenDeviceWeights[0];
    const void *wDevice = seenDeviceWeights[1];
    EXPECT_TRUE(fakeIsDevice(normDevice, 6));
    EXPECT_FALSE(fakeIsDevice(normDevice, 7));
    EXPECT_TRUE(fakeIsDevice(wDevice, 12));
    EXPECT_FALSE(fakeIsDevice(wDevice, 13));
    // The fake's device memory is host memory.
    uint16_t seen[6];
    std::memcpy(seen, normDevice, 6);
    EXPECT_EQ(std::vector<uint16_t>(seen, seen + 3),
              std::vector<uint16_t>(normBits, normBits + 3));
    std::memcpy(seen, wDevice, 12);
    EXPECT_EQ(std::vector<uint16_t>(seen, seen + 6),
              std::vector<uint16_t>(wBits, wBits + 6));
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, WithoutTheStreamOrderedAllocator) {
  // The fake's cuMemAllocAsync fails then, so a pass means cuMemAlloc.
  setenv("MOERT_FAKE_CUDA_POOLS", "0", 1);
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    runAndCheck(*model);
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAlloc@2=2", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): cuMemAlloc of 24 "
              "bytes failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    EXPECT_EQ(counters().allocations, 1);
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, ConcurrentRuns) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
  ASSERT_TRUE(model) << error;
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      for (int r = 0; r < 20; ++r) {
        float in[3] = {float(i), 0, 0}, out[3] = {};
        int32_t exitLoop[1], ids[1];
        float gates[1];
        moert_outputs outputs{out, exitLoop, ids, gates};
        ok[i] += model->run(1, in, outputs, nullptr) && out[0] == i + 1.0f &&
                 out[2] == 3.0f;
      }
    });
  for (std::thread &t : threads)
    t.join();
  EXPECT_EQ(ok, std::vector<int>(8, 20));
  EXPECT_EQ(counters().allocations, 1);
}

TEST_F(FakeCudaTest, UserStream) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
  ASSERT_TRUE(model) << error;
  using namespace moert::cuda;
  auto streamCreate =
      fakeSymbol<CUresult (*)(CUstream *, unsigned)>("cuStreamCreate");
  auto streamDestroy = fakeSymbol<CUresult (*)(CUstream)>("cuStreamDestroy_v2");
  CUstream user = nullptr;
  ASSERT_EQ(streamCreate(&user, 0), 0);

  moert_status status = moert_context_set_cuda_stream(ctx->get(), user);
  ASSERT_EQ(status, nullptr) << moert_status_get_message(status);
  runAndCheck(*model);
  EXPECT_EQ(counters().lastStream, user);
  status = moert_context_set_cuda_stream(ctx->get(), nullptr);
  ASSERT_EQ(status, nullptr) << moert_status_get_message(status);
  runAndCheck(*model);
  EXPECT_NE(counters().lastStream, user);
  EXPECT_NE(counters().lastStream, nullptr); // the context's own
  EXPECT_EQ(streamDestroy(user), 0);
}

TEST_F(FakeCudaTest, OutOfMemoryLoadingWeights) {
  setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAlloc=2", 1);
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    moert_model *model = nullptr;
    moert_status status = moert_model_load(ctx->get(), &kCudaModel.compiled,
                                           weights.c_str(), &model);
    EXPECT_EQ(moert_status_get_code(status), MOERT_INTERNAL);
    EXPECT_STREQ(moert_status_get_message(status),
                 "cannot copy weight 'model.norm.weight' (12 bytes) to sm_90, "
                 "Fake GPU: cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out "
                 "of memory)");
    moert_status_free(status);
    EXPECT_EQ(counters().modules, 0); // unloaded again

    setenv("MOERT_FAKE_CUDA_FAIL", "cuStreamSynchronize=700", 1);
    EXPECT_FALSE(moert::Model::load(*ctx, kCudaModel, weights, &error));
    EXPECT_EQ(error, "cannot copy the weights to sm_90, Fake GPU: "
                     "cuStreamSynchronize failed: CUDA_ERROR_ILLEGAL_ADDRESS "
                     "(an illegal memory access was encountered)");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, OutOfMemoryInTheModelsHostCode) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    int launches = counters().launches;
    // The runtime allocates the run's 5 buffers, then the host code its copy
    // of hidden_in: the first error stops the launch, not the frees.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAllocAsync@6=2", 1);
    EXPECT_EQ(
        runError(*model),
        "moert_model_run on cuda (sm_90, Fake GPU): cuMemAllocAsync of 24 "
        "bytes failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    EXPECT_EQ(counters().launches, launches);
    EXPECT_EQ(counters().allocations, 1);
    EXPECT_EQ(counters().events, 0);
    // The runtime's own buffers: the host code does not run at all.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAllocAsync@3=2", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): cuMemAllocAsync of 8 "
              "bytes failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    EXPECT_EQ(counters().launches, launches);
    EXPECT_EQ(counters().allocations, 1);
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    runAndCheck(*model);
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, LaunchAndKernelFaults) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    setenv("MOERT_FAKE_CUDA_FAIL", "cuLaunchKernel=719", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): cuLaunchKernel of "
              "'add_norm' (grid 1x1x1, block 128x1x1, 0 bytes shared) failed: "
              "CUDA_ERROR_LAUNCH_FAILED (unspecified launch failure)");
    EXPECT_EQ(counters().allocations, 1);
    EXPECT_EQ(counters().events, 0);
    // A fault surfaces asynchronously, at the host code's synchronisation.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuStreamSynchronize=700", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): cuStreamSynchronize "
              "failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access "
              "was encountered)");
    EXPECT_EQ(counters().allocations, 1);
    // An unknown code still names the call.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemcpyDtoHAsync=12345", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): cuMemcpyDtoHAsync "
              "failed: CUDA error 12345");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    runAndCheck(*model);
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest,
       ResidentLoopKernelsLaunchCooperativelyWithTheBlocksThatFit) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaResidentModel, weights, &error);
    ASSERT_TRUE(model) << error;
    // 132 SMs x 2 blocks: the grid asked for fits as it is.
    runAndCheck(*model);
    EXPECT_EQ(counters().cooperativeLaunches, 1);
    EXPECT_EQ(counters().lastGridX, 264u);
    // Fewer fit: the grid shrinks to them (the kernel's phases stride over
    // the grid it gets).
    setenv("MOERT_FAKE_CUDA_BLOCKS_PER_SM", "1", 1);
    runAndCheck(*model);
    EXPECT_EQ(counters().cooperativeLaunches, 2);
    EXPECT_EQ(counters().lastGridX, 132u);
    // None fits: an error naming the kernel, no launch that would hang.
    setenv("MOERT_FAKE_CUDA_BLOCKS_PER_SM", "0", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): the resident loop "
              "kernel 'resident_loop_0' (grid 264x1x1, block 256x1x1, 0 bytes "
              "shared) does not fit on one multiprocessor of sm_90, Fake GPU "
              "(its block needs more registers or shared memory)");
    unsetenv("MOERT_FAKE_CUDA_BLOCKS_PER_SM");
    // The driver's refusal names the call and the grid.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuLaunchCooperativeKernel=720", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): "
              "cuLaunchCooperativeKernel of 'resident_loop_0' (grid 264x1x1, "
              "block 256x1x1, 0 bytes shared) failed: "
              "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE (too many blocks in "
              "cooperative launch)");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    EXPECT_EQ(counters().cooperativeLaunches, 2);
    runAndCheck(*model);
  }
  expectNothingLive();
  // A device without cooperative launches cannot run one: said up front.
  setenv("MOERT_FAKE_CUDA_COOPERATIVE", "0", 1);
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaResidentModel, weights, &error);
    ASSERT_TRUE(model) << error;
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): the resident loop "
              "kernel 'resident_loop_0' (grid 264x1x1, block 256x1x1, 0 bytes "
              "shared) needs a cooperative launch, which sm_90, Fake GPU does "
              "not support (compile with --resident-loops=false)");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, TensorMapsAreEncodedOnceAndKeptOnTheDevice) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaTensorMapModel, weights, &error);
    ASSERT_TRUE(model) << error;
    int before = counters().allocations;
    // A failed copy to the device fails the run and keeps nothing.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemcpyHtoD=1", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): copying the tensor "
              "map of a 64x128x4 bf16 tensor (innermost first) to the device "
              "failed: CUDA_ERROR_INVALID_VALUE (invalid argument)");
    // The copy comes from pageable memory on the legacy stream, which the
    // run's stream does not wait for: the map is waited for before any
    // launch (the run's first synchronisation), and a failure there fails
    // the run too.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuStreamSynchronize@1=700", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): copying the tensor "
              "map of a 64x128x4 bf16 tensor (innermost first) to the device "
              "failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access "
              "was encountered)");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    EXPECT_EQ(counters().allocations, before);
    runAndCheck(*model);
    // The map lives in device memory (kernels read it there), encoded as
    // asked: bf16 (9), innermost dimension contiguous, 128-byte swizzle (3).
    void *map = lastTensorMap;
    ASSERT_TRUE(map);
    ASSERT_TRUE(fakeIsDevice(map, 128));
    FakeCudaTensorMap fields;
    std::memcpy(&fields, map, sizeof(fields));
    EXPECT_EQ(fields.dataType, 9);
    EXPECT_EQ(fields.rank, 3);
    EXPECT_EQ(fields.swizzle, 3);
    EXPECT_EQ(fields.dims[0], 64u);
    EXPECT_EQ(fields.dims[1], 128u);
    EXPECT_EQ(fields.dims[2], 4u);
    EXPECT_EQ(fields.strides[0], 128u);
    EXPECT_EQ(fields.strides[1], 64u * 128u * 2u);
    EXPECT_EQ(fields.box[0], 64u);
    EXPECT_EQ(fields.box[1], 64u);
    EXPECT_EQ(fields.box[2], 1u);
    EXPECT_EQ(counters().allocations, before + 1);
    // Encoded by each of the two failed runs, then by the first good one.
    EXPECT_EQ(counters().tensorMapsEncoded, 3);
    // The next run finds the same map, without encoding it again.
    runAndCheck(*model);
    EXPECT_EQ(lastTensorMap, map);
    EXPECT_EQ(counters().allocations, before + 1);
    EXPECT_EQ(counters().tensorMapsEncoded, 3);
    // A map the driver refuses fails the run, naming the tensor (a model
    // of its own: this one has its map).
    auto other = moert::Model::load(*ctx, kCudaTensorMapModel, weights, &error);
    ASSERT_TRUE(other) << error;
    setenv("MOERT_FAKE_CUDA_FAIL", "cuTensorMapEncodeTiled=1", 1);
    EXPECT_EQ(runError(*other),
              "moert_model_run on cuda (sm_90, Fake GPU): "
              "cuTensorMapEncodeTiled of the tensor map of a 64x128x4 bf16 "
              "tensor (innermost first) failed: CUDA_ERROR_INVALID_VALUE "
              "(invalid argument)");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    runAndCheck(*other);
    runAndCheck(*model);
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, KernelsOptIntoMoreThan48KiBOfDynamicSharedMemoryOnce) {
  std::string error;
  for (int load = 0; load < 2; ++load) {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaSharedModel, weights, &error);
    ASSERT_TRUE(model) << error;
    int before = counters().sharedOptIns;
    // Up to 48 KiB any kernel may take: no opt-in.
    sharedHostCodeBytes = 48 * 1024;
    runAndCheck(*model);
    EXPECT_EQ(counters().sharedOptIns, before);
    EXPECT_EQ(counters().lastSharedBytes, 48u * 1024);
    // More (a pipelined warpgroup kernel's stages): the kernel opts in
    // before its first such launch, for this model's module (a model loaded
    // again opts in again), and not again for as much or less.
    sharedHostCodeBytes = 97 * 1024 + 40;
    runAndCheck(*model);
    runAndCheck(*model);
    sharedHostCodeBytes = 64 * 1024;
    runAndCheck(*model);
    EXPECT_EQ(counters().sharedOptIns, before + 1);
    EXPECT_EQ(counters().lastSharedBytes, 64u * 1024);
    // More than the device allows: the driver's refusal names the kernel,
    // and nothing is launched.
    int launches = counters().launches;
    sharedHostCodeBytes = 228 * 1024;
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): "
              "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) of 'add_norm' "
              "(grid 1x1x1, block 128x1x1, 233472 bytes shared) failed: "
              "CUDA_ERROR_INVALID_VALUE (invalid argument)");
    EXPECT_EQ(counters().launches, launches);
    sharedHostCodeBytes = 97 * 1024 + 40;
    runAndCheck(*model);
    EXPECT_EQ(counters().sharedOptIns, before + 1);
  }
  sharedHostCodeBytes = 0;
  expectNothingLive();
}

TEST_F(FakeCudaTest, TensorMapsNeedADriverFromCuda12) {
  setenv("MOERT_CUDA_DRIVER", MOERT_FAKE_CUDA11_DRIVER, 1);
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  auto model = moert::Model::load(*ctx, kCudaTensorMapModel, weights, &error);
  ASSERT_TRUE(model) << error;
  EXPECT_EQ(runError(*model),
            "moert_model_run on cuda (sm_90, Fake GPU): the driver lacks "
            "cuTensorMapEncodeTiled (CUDA 12.0 or later), which kernels "
            "compiled with --wgmma need for the tensor map of a 64x128x4 bf16 "
            "tensor (innermost first)");
  // Models that need no tensor maps run on it.
  auto plain = moert::Model::load(*ctx, kCudaModel, weights, &error);
  ASSERT_TRUE(plain) << error;
  runAndCheck(*plain);
}

TEST_F(FakeCudaTest, SyncEachLaunchNamesTheFaultingKernel) {
  // MOERT_CUDA_SYNC_EACH_LAUNCH waits after every launch, so that a fault
  // inside a kernel is reported with that kernel's name.
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    setenv("MOERT_CUDA_SYNC_EACH_LAUNCH", "1", 1);
    setenv("MOERT_FAKE_CUDA_FAIL", "cuStreamSynchronize=700", 1);
    EXPECT_EQ(runError(*model),
              "moert_model_run on cuda (sm_90, Fake GPU): kernel 'add_norm' "
              "(grid 1x1x1, block 128x1x1, 0 bytes shared), synchronised "
              "after its launch (MOERT_CUDA_SYNC_EACH_LAUNCH), failed: "
              "CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was "
              "encountered)");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    runAndCheck(*model);
    unsetenv("MOERT_CUDA_SYNC_EACH_LAUNCH");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, ProfilePrintsKernelTimesWhenTheModelIsFreed) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaModel, weights, &error);
    ASSERT_TRUE(model) << error;
    setenv("MOERT_CUDA_PROFILE", "1", 1);
    runAndCheck(*model);
    runAndCheck(*model);
    unsetenv("MOERT_CUDA_PROFILE");
    testing::internal::CaptureStderr();
    model.reset();
    std::string printed = testing::internal::GetCapturedStderr();
    EXPECT_NE(printed.find("moert profile (MOERT_CUDA_PROFILE"),
              std::string::npos)
        << printed;
    // One kernel, launched once per run.
    EXPECT_NE(printed.find("add_norm"), std::string::npos) << printed;
    EXPECT_NE(printed.find(" 2 "), std::string::npos) << printed;
    EXPECT_NE(printed.find("100.0%"), std::string::npos) << printed;
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, MissingKernel) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  CudaModel missing = kCudaModel;
  missing.build.run = missingKernelHostCode;
  auto model = moert::Model::load(*ctx, missing, weights, &error);
  ASSERT_TRUE(model) << error;
  int launches = counters().launches;
  EXPECT_EQ(runError(*model), "moert_model_run on cuda (sm_90, Fake GPU): "
                              "cuModuleGetFunction('no_such_kernel') failed: "
                              "CUDA_ERROR_NOT_FOUND (named symbol not found)");
  EXPECT_EQ(counters().launches, launches);
  EXPECT_EQ(counters().allocations, 1);
}

TEST(CudaBuilds, RankedForTheGpu) {
  using moert::cuda::rankBuilds;
  std::vector<std::string> chips = {"sm_80", "sm_90a", "sm_86", "sm_90"};
  // A cubin for the chip itself first (sm_90a before sm_90), then PTX for
  // an older one, the newest first.
  EXPECT_EQ(rankBuilds(90, chips), (std::vector<size_t>{1, 3, 2, 0}));
  // sm_90a is for 9.0 alone; an sm_8x cubin runs on later 8.x chips.
  EXPECT_EQ(rankBuilds(89, chips), (std::vector<size_t>{2, 0}));
  EXPECT_EQ(rankBuilds(86, chips), (std::vector<size_t>{2, 0}));
  EXPECT_EQ(rankBuilds(80, chips), (std::vector<size_t>{0}));
  EXPECT_EQ(rankBuilds(100, chips), (std::vector<size_t>{3, 2, 0}));
  EXPECT_EQ(rankBuilds(75, chips), std::vector<size_t>{});
  // Spellings it cannot judge are tried last, in their order.
  EXPECT_EQ(rankBuilds(90, {"compute_90", "sm_90a", "sm90"}),
            (std::vector<size_t>{1, 0, 2}));
}

TEST_F(FakeCudaTest, TheBuildThatFitsTheGpuIsLoaded) {
  const moert_gpu_build builds[] = {
      {"sm_90a", addNormNewerBuild, &kFakeBinary, sizeof(kFakeBinary)},
      {"sm_80", addNormOlderBuild, &kFakeBinary, sizeof(kFakeBinary)}};
  moert_compiled_model compiled = {MANIFEST(R"("target": "cuda",)"), nullptr,
                                   builds, 2};
  struct Case {
    const char *sm, *chip, *run;
  } cases[] = {{"90", "sm_90a", "newer"},
               {"86", "sm_80", "older"},
               {"80", "sm_80", "older"},
               {"100", "sm_80", "older"}};
  for (const Case &c : cases) {
    SCOPED_TRACE(c.sm);
    setenv("MOERT_FAKE_CUDA_SM", c.sm, 1);
    std::string error;
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    EXPECT_EQ(ctx->cudaCapability(), std::atoi(c.sm));
    auto model = moert::Model::load(*ctx, compiled, weights, &error);
    ASSERT_TRUE(model) << error;
    EXPECT_STREQ(model->info().gpu_chip, c.chip);
    lastBuildRun.clear();
    runAndCheck(*model);
    EXPECT_EQ(lastBuildRun, c.run);
  }
  // When the driver finds nothing for this GPU in the best build, the next
  // is loaded.
  setenv("MOERT_FAKE_CUDA_SM", "90", 1);
  setenv("MOERT_FAKE_CUDA_FAIL", "cuModuleLoadData@1=209", 1);
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, compiled, weights, &error);
    ASSERT_TRUE(model) << error;
    EXPECT_STREQ(model->info().gpu_chip, "sm_80");
    EXPECT_EQ(counters().modules, 1);
    runAndCheck(*model);
    EXPECT_EQ(lastBuildRun, "older");
  }
  // Another failure is not a reason to try the next.
  setenv("MOERT_FAKE_CUDA_FAIL", "cuModuleLoadData@1=2", 1);
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    EXPECT_FALSE(moert::Model::load(*ctx, compiled, weights, &error));
    EXPECT_EQ(error.rfind("cannot load the model's kernels on sm_90, Fake GPU: "
                          "cuModuleLoadData failed: CUDA_ERROR_OUT_OF_MEMORY",
                          0),
              0u)
        << error;
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, KernelsWithoutABinaryForThisGpu) {
  setenv("MOERT_FAKE_CUDA_SM", "75", 1);
  setenv("MOERT_FAKE_CUDA_FAIL", "cuModuleLoadData=209", 1);
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    moert_model *model = nullptr;
    moert_status status = moert_model_load(ctx->get(), &kCudaModel.compiled,
                                           weights.c_str(), &model);
    EXPECT_EQ(moert_status_get_code(status), MOERT_UNAVAILABLE);
    // No build is for sm_75 or older, so the driver is not asked.
    EXPECT_STREQ(moert_status_get_message(status),
                 "the model's kernels have no build for this GPU (sm_75, Fake "
                 "GPU); it was compiled for sm_90: compile it with "
                 "moe-compile --chip sm_75");
    moert_status_free(status);
    EXPECT_EQ(counters().modules, 0);

    // A build whose chip is spelt otherwise is tried (last); the driver
    // finds nothing for this GPU in it.
    const moert_gpu_build three[] = {
        {"sm_90a", addNormHostCode, &kFakeBinary, sizeof(kFakeBinary)},
        {"sm_80", addNormHostCode, &kFakeBinary, sizeof(kFakeBinary)},
        {"compute_80", addNormHostCode, &kFakeBinary, sizeof(kFakeBinary)}};
    moert_compiled_model archs = {MANIFEST(R"("target": "cuda",)"), nullptr,
                                  three, 3};
    EXPECT_FALSE(moert::Model::load(*ctx, archs, weights, &error));
    EXPECT_EQ(error,
              "the model's kernels have no binary for this GPU (sm_75, Fake "
              "GPU); it was compiled for sm_90a, sm_80 and compute_80 "
              "(cuModuleLoadData failed: CUDA_ERROR_NO_BINARY_FOR_GPU (no "
              "kernel image is available for execution on the device))");

    unsetenv("MOERT_FAKE_CUDA_FAIL");
    CudaModel garbage(MANIFEST(R"("target": "cuda",)"), addNormHostCode,
                      "sm_75");
    garbage.build.binary = "not a fatbinary";
    EXPECT_FALSE(moert::Model::load(*ctx, garbage, weights, &error));
    EXPECT_EQ(error, "cannot load the model's kernels on sm_75, Fake GPU: "
                     "cuModuleLoadData failed: CUDA_ERROR_INVALID_IMAGE "
                     "(device kernel image is invalid)");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, ContextErrors) {
  std::string error;
  const std::string suffix = "; use 'cpu' (there is no silent CPU fallback)";
  setenv("MOERT_FAKE_CUDA_DEVICES", "0", 1);
  EXPECT_FALSE(moert::Context::create("cuda", &error));
  EXPECT_EQ(error, "device 'cuda': the CUDA driver reports no device" + suffix);
  unsetenv("MOERT_FAKE_CUDA_DEVICES");

  setenv("MOERT_FAKE_CUDA_FAIL", "cuInit=100", 1);
  moert_context *ctx = nullptr;
  moert_status status = moert_context_create("cuda", &ctx);
  EXPECT_EQ(moert_status_get_code(status), MOERT_UNAVAILABLE);
  EXPECT_EQ(moert_status_get_message(status),
            "device 'cuda': the CUDA driver failed to initialise: cuInit "
            "failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is "
            "detected)" +
                suffix);
  moert_status_free(status);

  setenv("MOERT_FAKE_CUDA_FAIL", "cuStreamCreate=2", 1);
  EXPECT_FALSE(moert::Context::create("cuda", &error));
  EXPECT_EQ(error, "device 'cuda': cuStreamCreate failed: "
                   "CUDA_ERROR_OUT_OF_MEMORY (out of memory) on sm_90, Fake "
                   "GPU" +
                       suffix);
  expectNothingLive(); // the primary context is released again
  unsetenv("MOERT_FAKE_CUDA_FAIL");

  setenv("MOERT_CUDA_DRIVER", "/nonexistent/libcuda.so.1", 1);
  EXPECT_FALSE(moert::Context::create("cuda", &error));
  EXPECT_EQ(error.rfind("device 'cuda': no NVIDIA driver: "
                        "MOERT_CUDA_DRIVER=/nonexistent/libcuda.so.1 cannot "
                        "be loaded (",
                        0),
            0u)
      << error;
  setenv("MOERT_CUDA_DRIVER", "libm.so.6", 1);
  EXPECT_FALSE(moert::Context::create("cuda", &error));
  EXPECT_EQ(error, "device 'cuda': the NVIDIA driver library "
                   "MOERT_CUDA_DRIVER=libm.so.6 lacks cuInit (the driver is "
                   "too old or not NVIDIA's)" +
                       suffix);
}

TEST_F(FakeCudaTest, TargetsMustMatchTheContext) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  moert_model *model = nullptr;
  moert_status status =
      moert_model_load(ctx->get(), &kCpuModel, weights.c_str(), &model);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  EXPECT_STREQ(moert_status_get_message(status),
               "moert_model_load: the model was compiled for target 'cpu' but "
               "the context's device is 'cuda'; create the context with device "
               "'cpu' or compile the model with moe-compile --target cuda");
  moert_status_free(status);

  moert_compiled_model noBuilds = kCudaModel;
  noBuilds.gpu_builds = nullptr;
  EXPECT_FALSE(moert::Model::load(*ctx, noBuilds, weights, &error));
  EXPECT_EQ(error, "moert_model_load: the model's manifest says target 'cuda' "
                   "but its record has no gpu_builds");
  CudaModel noBinary = kCudaModel;
  noBinary.build.binary = nullptr;
  EXPECT_FALSE(moert::Model::load(*ctx, noBinary, weights, &error));
  EXPECT_EQ(error, "moert_model_load: GPU build 0 of the record lacks its "
                   "chip, run function or binary");
  moert_compiled_model noRun = kCpuModel;
  noRun.run = nullptr;
  auto cpu = moert::Context::create("cpu", &error);
  ASSERT_TRUE(cpu) << error;
  EXPECT_EQ(cpu->cudaCapability(), 0);
  EXPECT_EQ(moert_context_get_cuda_capability(nullptr), 0);
  EXPECT_FALSE(moert::Model::load(*cpu, noRun, weights, &error));
  EXPECT_EQ(error, "moert_model_load: the record of this cpu model has no run "
                   "function");
  EXPECT_EQ(counters().modules, 0);
}

/// Runs `tokens` through `session` and through `reference`, expecting the
/// same logits and exit_loop; returns an empty string or what differed.
std::string forwardAndCompare(moert::Session &session,
                              DecoderReference &reference,
                              const std::vector<int32_t> &tokens,
                              bool withExitLoop = true) {
  int64_t n = int64_t(tokens.size());
  std::vector<float> logits(n * 4, -1.0f), expected(n * 4);
  std::vector<int32_t> exitLoop(n, -1), expectedExit(n);
  std::string error;
  if (!session.forward(tokens.data(), n, logits.data(), &error,
                       withExitLoop ? exitLoop.data() : nullptr))
    return "forward failed: " + error;
  reference.forward(tokens.data(), n, expected.data(), expectedExit.data());
  if (logits != expected)
    return "logits differ at position " + std::to_string(reference.position);
  if (withExitLoop && exitLoop != expectedExit)
    return "exit_loop differs at position " +
           std::to_string(reference.position);
  if (session.position() != reference.position)
    return "position " + std::to_string(session.position()) + ", expected " +
           std::to_string(reference.position);
  return "";
}

TEST_F(FakeCudaTest, DecoderSessions) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaDecoder, weights, &error);
    ASSERT_TRUE(model) << error;
    EXPECT_EQ(counters().allocations, 1); // the weight
    {
      auto session = moert::Session::create(*model, &error);
      ASSERT_TRUE(session) << error;
      EXPECT_EQ(counters().allocations, 5); // K and V of both slots
      EXPECT_EQ(counters().contextDepth, 0);
      DecoderReference reference(8);
      int launches = counters().launches;
      // Prefill, then two decodes: each reads the rows the earlier ones
      // appended, so equal logits mean the caches persist.
      EXPECT_EQ(forwardAndCompare(*session, reference, {3, 1, 2}), "");
      EXPECT_EQ(forwardAndCompare(*session, reference, {0}), "");
      EXPECT_EQ(forwardAndCompare(*session, reference, {2}, false), "");
      EXPECT_EQ(session->position(), 5);
      EXPECT_EQ(counters().launches, launches + 3);
      EXPECT_EQ(counters().allocations, 5); // the forwards' buffers are freed
      EXPECT_EQ(counters().contextDepth, 0);

      // The closed form of the stand-in, for the last decode: tokens
      // 3 1 2 0 2 at positions 0..4.
      float logits[4];
      int32_t next = 1;
      ASSERT_TRUE(session->forward(&next, 1, logits, &error)) << error;
      const int32_t sequence[] = {3, 1, 2, 0, 2, 1};
      for (int v = 0; v < 4; ++v) {
        float expected = norm[v % 3];
        for (int q = 0; q < 6; ++q)
          expected += float(sequence[q] * (v + 7) + q + 2);
        EXPECT_EQ(logits[v], expected) << "v = " << v;
      }
    }
    EXPECT_EQ(counters().allocations, 1); // the session's caches are freed
    EXPECT_EQ(counters().contextDepth, 0);
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, DecoderSessionsMatchTheCpu) {
  std::string error;
  auto cpu = moert::Context::create("cpu", &error);
  ASSERT_TRUE(cpu) << error;
  auto cuda = moert::Context::create("cuda", &error);
  ASSERT_TRUE(cuda) << error;
  auto cpuModel = moert::Model::load(*cpu, kCpuDecoder, weights, &error);
  ASSERT_TRUE(cpuModel) << error;
  auto cudaModel = moert::Model::load(*cuda, kCudaDecoder, weights, &error);
  ASSERT_TRUE(cudaModel) << error;
  auto onCpu = moert::Session::create(*cpuModel, &error);
  ASSERT_TRUE(onCpu) << error;
  auto onCuda = moert::Session::create(*cudaModel, &error);
  ASSERT_TRUE(onCuda) << error;
  DecoderReference cpuReference(8), cudaReference(8);
  for (const std::vector<int32_t> &tokens :
       {std::vector<int32_t>{1, 2, 3, 0, 1, 2}, {3}, {0}}) {
    EXPECT_EQ(forwardAndCompare(*onCpu, cpuReference, tokens), "");
    EXPECT_EQ(forwardAndCompare(*onCuda, cudaReference, tokens), "");
  }
  EXPECT_EQ(onCuda->position(), 8);

  // The same argument errors, from the shared checks; none moves the
  // position.
  auto bothFail = [&](const int32_t *tokens, int64_t n, float *logits) {
    std::string cpuError, cudaError;
    EXPECT_FALSE(onCpu->forward(tokens, n, logits, &cpuError));
    EXPECT_FALSE(onCuda->forward(tokens, n, logits, &cudaError));
    EXPECT_EQ(cpuError, cudaError);
    return cudaError;
  };
  int32_t one = 1;
  float logits[4];
  EXPECT_EQ(bothFail(&one, 1, logits),
            "sequence of 9 tokens exceeds max_position_embeddings (8)");
  EXPECT_EQ(bothFail(&one, 0, logits),
            "moert_session_forward: tokens must be at least 1");
  EXPECT_EQ(bothFail(&one, 1, nullptr), "moert_session_forward: null argument");
  EXPECT_EQ(onCpu->position(), 8);
  EXPECT_EQ(onCuda->position(), 8);

  // A fresh session: token ids outside the vocabulary, then past the end
  // in a prefill.
  onCpu = moert::Session::create(*cpuModel, &error);
  ASSERT_TRUE(onCpu) << error;
  onCuda = moert::Session::create(*cudaModel, &error);
  ASSERT_TRUE(onCuda) << error;
  int32_t bad[2] = {1, 4};
  EXPECT_EQ(bothFail(bad, 2, logits),
            "token id 4 at index 1 is outside the vocabulary [0, 4)");
  std::vector<int32_t> nine(9, 1);
  std::vector<float> many(9 * 4);
  EXPECT_EQ(bothFail(nine.data(), 9, many.data()),
            "sequence of 9 tokens exceeds max_position_embeddings (8)");
  EXPECT_EQ(onCuda->position(), 0);

  moert_session *raw = nullptr;
  moert_status status = moert_session_create(cudaModel->get(), nullptr);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  moert_status_free(status);
  auto stack = moert::Model::load(*cuda, kCudaModel, weights, &error);
  ASSERT_TRUE(stack) << error;
  status = moert_session_create(stack->get(), &raw);
  EXPECT_STREQ(moert_status_get_message(status),
               "moert_session_create: this model is not a decoder; run it "
               "with moert_model_run");
  moert_status_free(status);
}

TEST_F(FakeCudaTest, SessionsWithACapacity) {
  std::string error;
  {
    auto cpu = moert::Context::create("cpu", &error);
    ASSERT_TRUE(cpu) << error;
    auto cuda = moert::Context::create("cuda", &error);
    ASSERT_TRUE(cuda) << error;
    auto cpuModel = moert::Model::load(*cpu, kCpuDecoder, weights, &error);
    ASSERT_TRUE(cpuModel) << error;
    auto cudaModel = moert::Model::load(*cuda, kCudaDecoder, weights, &error);
    ASSERT_TRUE(cudaModel) << error;
    // Caches of 5 of the 8 positions: the same logits as a full session
    // until they are full, then an error that says why.
    auto onCpu = moert::Session::create(*cpuModel, &error, 5);
    ASSERT_TRUE(onCpu) << error;
    auto onCuda = moert::Session::create(*cudaModel, &error, 5);
    ASSERT_TRUE(onCuda) << error;
    DecoderReference cpuReference(8), cudaReference(8);
    for (const std::vector<int32_t> &tokens :
         {std::vector<int32_t>{1, 2, 3}, {0}, {2}}) {
      EXPECT_EQ(forwardAndCompare(*onCpu, cpuReference, tokens), "");
      EXPECT_EQ(forwardAndCompare(*onCuda, cudaReference, tokens), "");
    }
    int32_t one = 1;
    float logits[4];
    for (moert::Session *session : {onCpu.get(), onCuda.get()}) {
      EXPECT_FALSE(session->forward(&one, 1, logits, &error));
      EXPECT_EQ(error, "sequence of 6 tokens exceeds the session's capacity "
                       "of 5 positions (max_position_embeddings is 8)");
      EXPECT_EQ(session->position(), 5);
    }
    // The device caches are of the capacity: K1 of 5 positions of 3 floats
    // is the third allocation.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAlloc@3=2", 1);
    moert_session *session = nullptr;
    moert_status status =
        moert_session_create_with_capacity(cudaModel->get(), 5, &session);
    EXPECT_STREQ(moert_status_get_message(status),
                 "moert_session_create on cuda: cannot allocate a KV cache of "
                 "5 positions on sm_90, Fake GPU: cuMemAlloc of 60 bytes "
                 "failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    moert_status_free(status);
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    // A capacity outside [1, max_positions].
    for (int64_t capacity : {int64_t(0), int64_t(9), int64_t(-1)}) {
      status = moert_session_create_with_capacity(cpuModel->get(), capacity,
                                                  &session);
      EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
      EXPECT_EQ(std::string(moert_status_get_message(status)),
                "moert_session_create: a capacity of " +
                    std::to_string(capacity) +
                    " positions is outside [1, max_position_embeddings = 8]");
      moert_status_free(status);
      EXPECT_EQ(session, nullptr);
    }
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, OutOfMemoryCreatingASession) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaDecoder, weights, &error);
    ASSERT_TRUE(model) << error;
    // The caches: K0, V0 (64 bytes each), K1, V1 (96); the third fails.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAlloc@3=2", 1);
    moert_session *session = nullptr;
    moert_status status = moert_session_create(model->get(), &session);
    EXPECT_EQ(moert_status_get_code(status), MOERT_INTERNAL);
    EXPECT_STREQ(moert_status_get_message(status),
                 "moert_session_create on cuda: cannot allocate a KV cache of "
                 "8 positions on sm_90, Fake GPU: cuMemAlloc of 96 bytes "
                 "failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
    moert_status_free(status);
    EXPECT_EQ(session, nullptr);
    EXPECT_EQ(counters().allocations, 1); // the two made are freed again
    EXPECT_EQ(counters().contextDepth, 0);
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    auto retry = moert::Session::create(*model, &error);
    ASSERT_TRUE(retry) << error;
    DecoderReference reference(8);
    EXPECT_EQ(forwardAndCompare(*retry, reference, {1, 2}), "");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, CudaFailuresInAForward) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaDecoder, weights, &error);
    ASSERT_TRUE(model) << error;
    auto session = moert::Session::create(*model, &error);
    ASSERT_TRUE(session) << error;
    DecoderReference reference(8);
    EXPECT_EQ(forwardAndCompare(*session, reference, {1, 2}), "");
    int launches = counters().launches;
    int32_t tokens[3] = {3, 0, 1};
    float logits[12];
    auto failure = [&] {
      std::string message;
      EXPECT_FALSE(session->forward(tokens, 3, logits, &message));
      EXPECT_EQ(session->position(), 2); // a failed forward leaves it
      EXPECT_EQ(counters().allocations, 5);
      EXPECT_EQ(counters().contextDepth, 0);
      return message;
    };
    // The forward's buffers: tokens, positions, logits (48 bytes), ...
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAllocAsync@3=2", 1);
    EXPECT_EQ(failure(),
              "moert_session_forward on cuda (sm_90, Fake GPU): "
              "cuMemAllocAsync of 48 bytes failed: CUDA_ERROR_OUT_OF_MEMORY "
              "(out of memory)");
    // ... exit_loop, then the host code's scratch.
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAllocAsync@5=2", 1);
    EXPECT_EQ(failure(),
              "moert_session_forward on cuda (sm_90, Fake GPU): "
              "cuMemAllocAsync of 12 bytes failed: CUDA_ERROR_OUT_OF_MEMORY "
              "(out of memory)");
    EXPECT_EQ(counters().launches, launches);
    setenv("MOERT_FAKE_CUDA_FAIL", "cuLaunchKernel=719", 1);
    EXPECT_EQ(failure(),
              "moert_session_forward on cuda (sm_90, Fake GPU): "
              "cuLaunchKernel of 'decoder_step' (grid 1x1x1, block 32x1x1, 0 "
              "bytes shared) failed: CUDA_ERROR_LAUNCH_FAILED (unspecified "
              "launch failure)");
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemcpyHtoDAsync@2=700", 1);
    EXPECT_EQ(failure(), "moert_session_forward on cuda (sm_90, Fake GPU): "
                         "cuMemcpyHtoDAsync failed: CUDA_ERROR_ILLEGAL_ADDRESS "
                         "(an illegal memory access was encountered)");
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemcpyDtoHAsync=700", 1);
    EXPECT_EQ(failure(), "moert_session_forward on cuda (sm_90, Fake GPU): "
                         "cuMemcpyDtoHAsync failed: CUDA_ERROR_ILLEGAL_ADDRESS "
                         "(an illegal memory access was encountered)");
    // The retry runs at the same positions and rewrites the same rows.
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    EXPECT_EQ(forwardAndCompare(*session, reference, {3, 0, 1}), "");
    EXPECT_EQ(forwardAndCompare(*session, reference, {2}), "");

    // Without the stream-ordered allocator the forward's buffers come from
    // cuMemAlloc too.
    setenv("MOERT_FAKE_CUDA_POOLS", "0", 1);
    auto plain = moert::Context::create("cuda", &error);
    ASSERT_TRUE(plain) << error;
    auto plainModel = moert::Model::load(*plain, kCudaDecoder, weights, &error);
    ASSERT_TRUE(plainModel) << error;
    auto plainSession = moert::Session::create(*plainModel, &error);
    ASSERT_TRUE(plainSession) << error;
    setenv("MOERT_FAKE_CUDA_FAIL", "cuMemAlloc@1=2", 1);
    int32_t token = 1;
    EXPECT_FALSE(plainSession->forward(&token, 1, logits, &error));
    EXPECT_EQ(error, "moert_session_forward on cuda (sm_90, Fake GPU): "
                     "cuMemAlloc of 4 bytes failed: CUDA_ERROR_OUT_OF_MEMORY "
                     "(out of memory)");
    unsetenv("MOERT_FAKE_CUDA_FAIL");
    DecoderReference plainReference(8);
    EXPECT_EQ(forwardAndCompare(*plainSession, plainReference, {1, 3}), "");
  }
  expectNothingLive();
}

TEST_F(FakeCudaTest, ConcurrentDecoderSessions) {
  std::string error;
  {
    auto ctx = moert::Context::create("cuda", &error);
    ASSERT_TRUE(ctx) << error;
    auto model = moert::Model::load(*ctx, kCudaDecoder, weights, &error);
    ASSERT_TRUE(model) << error;
    std::vector<std::string> problems(2);
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i)
      threads.emplace_back([&, i] {
        for (int round = 0; round < 50 && problems[i].empty(); ++round) {
          std::string why;
          auto session = moert::Session::create(*model, &why);
          if (!session) {
            problems[i] = why;
            return;
          }
          DecoderReference reference(8);
          // Different sequences per thread, so crossed caches would show.
          std::vector<int32_t> prompt = {i, (i + round) % 4, 3 - i};
          problems[i] = forwardAndCompare(*session, reference, prompt);
          for (int step = 0; step < 5 && problems[i].empty(); ++step)
            problems[i] = forwardAndCompare(
                *session, reference, {int32_t((step * (i + 1) + round) % 4)});
        }
      });
    for (std::thread &t : threads)
      t.join();
    EXPECT_EQ(problems, std::vector<std::string>(2));
    EXPECT_EQ(counters().allocations, 1);
  }
  expectNothingLive();
}

/// Every mgpu* function outside a launch scope: nothing reaches the driver.
void callEveryMgpuFunction() {
  int word = 0;
  void *p = &word;
  EXPECT_EQ(mgpuStreamCreate(), nullptr);
  mgpuStreamSynchronize(p);
  mgpuStreamWaitEvent(p, p);
  mgpuStreamDestroy(p);
  EXPECT_EQ(mgpuEventCreate(), nullptr);
  mgpuEventRecord(p, p);
  mgpuEventSynchronize(p);
  mgpuEventDestroy(p);
  EXPECT_EQ(mgpuMemAlloc(64, p, false), nullptr);
  EXPECT_EQ(mgpuMemAlloc(64, p, true), nullptr);
  mgpuMemcpy(p, p, 4, p);
  mgpuMemset32(p, 1, 1, p);
  mgpuMemset16(p, 1, 2, p);
  mgpuMemFree(p, p);
  EXPECT_EQ(mgpuModuleLoad(p, 4), nullptr);
  EXPECT_EQ(mgpuModuleLoadJIT(p, 2), nullptr);
  mgpuModuleUnload(p);
  EXPECT_EQ(mgpuModuleGetFunction(p, "add_norm"), nullptr);
  void *params[] = {p};
  mgpuLaunchKernel(p, 1, 1, 1, 1, 1, 1, 0, p, params, nullptr, 1);
  EXPECT_EQ(moert_cuda_tensor_map_bf16_3d(p, 8, 8, 1, 8, 8), nullptr);
  EXPECT_EQ(word, 0);
}

TEST_F(FakeCudaTest, MgpuOutsideARunDoesNothing) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  ASSERT_TRUE(ctx) << error;
  int calls = counters().driverCalls;
  callEveryMgpuFunction();
  EXPECT_EQ(counters().driverCalls, calls);
  EXPECT_EQ(moert::cuda::gpuRuntimeSymbols().size(), 19u);
}

TEST_F(CudaTest, MgpuWithoutADriverDoesNothing) { callEveryMgpuFunction(); }

TEST_F(CudaTest, CpuContextErrors) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  ASSERT_TRUE(ctx) << error;
  moert_model *model = nullptr;
  moert_status status = moert_model_load(ctx->get(), &kCudaModel.compiled,
                                         weights.c_str(), &model);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  EXPECT_STREQ(moert_status_get_message(status),
               "moert_model_load: the model was compiled for target 'cuda' "
               "but the context's device is 'cpu'; create the context with "
               "device 'cuda' or compile the model with moe-compile --target "
               "cpu");
  moert_status_free(status);

  moert_compiled_model unknown = kCpuModel;
  unknown.manifest = MANIFEST(R"("target": "tpu",)");
  EXPECT_FALSE(moert::Model::load(*ctx, unknown, weights, &error));
  EXPECT_EQ(error,
            "invalid model manifest: unknown target 'tpu' (expected cpu or "
            "cuda)");

  status = moert_context_set_cuda_stream(ctx->get(), nullptr);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  EXPECT_STREQ(moert_status_get_message(status),
               "moert_context_set_cuda_stream: the context's device is 'cpu', "
               "not 'cuda'");
  moert_status_free(status);
  status = moert_context_set_cuda_stream(nullptr, nullptr);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  moert_status_free(status);
}

TEST_F(CudaTest, NoDriverHere) {
  // The default driver name, as on a machine without NVIDIA's driver.
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  if (ctx)
    GTEST_SKIP() << "this machine has a CUDA driver and device";
  EXPECT_EQ(error.rfind("device 'cuda': ", 0), 0u) << error;
  EXPECT_NE(error.find("; use 'cpu' (there is no silent CPU fallback)"),
            std::string::npos)
      << error;
  EXPECT_TRUE(error.find("no NVIDIA driver: libcuda.so.1 cannot be loaded") !=
                  std::string::npos ||
              error.find("cuInit") != std::string::npos ||
              error.find("no device") != std::string::npos)
      << error;
  moert_context *raw = nullptr;
  moert_status status = moert_context_create("cuda", &raw);
  EXPECT_EQ(moert_status_get_code(status), MOERT_UNAVAILABLE);
  moert_status_free(status);
}

TEST_F(CudaTest, RealGpu) {
  std::string error;
  auto ctx = moert::Context::create("cuda", &error);
  if (!ctx)
    GTEST_SKIP() << "no usable CUDA device: " << error;
  CudaModel ptx = kCudaModel;
  ptx.build.chip = "sm_80";
  ptx.build.binary = kAddNormPtx;
  ptx.build.binary_size = sizeof(kAddNormPtx);
  auto model = moert::Model::load(*ctx, ptx, weights, &error);
  ASSERT_TRUE(model) << error;
  runAndCheck(*model);

  // Many tokens, several blocks, and concurrent runs.
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      int64_t tokens = 1000 + i;
      std::vector<float> in(tokens * 3), out(tokens * 3);
      for (size_t j = 0; j < in.size(); ++j)
        in[j] = float(j);
      std::vector<int32_t> exitLoop(tokens), ids(tokens);
      std::vector<float> gates(tokens);
      moert_outputs outputs{out.data(), exitLoop.data(), ids.data(),
                            gates.data()};
      if (!model->run(tokens, in.data(), outputs, nullptr))
        return;
      bool same = true;
      for (size_t j = 0; j < in.size(); ++j)
        same &= out[j] == in[j] + norm[j % 3];
      ok[i] = same && ids.back() == 7 && gates.back() == 1.0f;
    });
  for (std::thread &t : threads)
    t.join();
  EXPECT_EQ(ok, std::vector<int>(4, 1));

  // The real driver encodes a tensor map with the arguments --wgmma
  // kernels' host code passes (bf16, 3 dimensions, boxes of 64 x 64 with
  // the 128-byte swizzle), once.
  CudaModel mapped = kCudaTensorMapModel;
  mapped.build.chip = "sm_80";
  mapped.build.binary = kAddNormPtx;
  mapped.build.binary_size = sizeof(kAddNormPtx);
  auto withMap = moert::Model::load(*ctx, mapped, weights, &error);
  ASSERT_TRUE(withMap) << error;
  runAndCheck(*withMap);
  void *map = lastTensorMap;
  EXPECT_TRUE(map);
  runAndCheck(*withMap);
  EXPECT_EQ(lastTensorMap, map);

  CudaModel missing = ptx;
  missing.build.run = missingKernelHostCode;
  auto broken = moert::Model::load(*ctx, missing, weights, &error);
  ASSERT_TRUE(broken) << error;
  EXPECT_NE(runError(*broken).find("cuModuleGetFunction('no_such_kernel') "
                                   "failed: CUDA_ERROR_NOT_FOUND"),
            std::string::npos);
}
} // namespace
