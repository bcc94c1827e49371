//===- ModelTest.cpp - the runtime C API and its C++ wrapper --------------===//
//
// Uses a hand-written stand-in for a compiled model, so that the tests check
// the runtime's side of the ABI: weight binding, descriptor layout, errors.
//
//===----------------------------------------------------------------------===//
#include "mlir/ExecutionEngine/CRunnerUtils.h"
#include "moert/GpuEmulation.h"
#include "moert/Safetensors.h"
#include "moert/moert.hpp"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "gtest/gtest.h"

#include <cmath>
#include <cstring>
#include <thread>

namespace {
template <typename T, int N> using Desc = StridedMemRefType<T, N>;

// hidden_out = hidden_in + norm (the model's only weight), exit_loop = 0,
// trace ids = token index, gates = 1. Checks the layout on the way.
void fakeRun(void **descriptors) {
  auto *in = static_cast<Desc<float, 2> *>(descriptors[0]);
  auto *out = static_cast<Desc<float, 2> *>(descriptors[1]);
  auto *exitLoop = static_cast<Desc<int32_t, 1> *>(descriptors[2]);
  auto *ids = static_cast<Desc<int32_t, 3> *>(descriptors[3]);
  auto *gates = static_cast<Desc<float, 3> *>(descriptors[4]);
  auto *norm = static_cast<Desc<float, 1> *>(descriptors[5]);
  int64_t t = in->sizes[0], d = in->sizes[1];
  if (in->strides[0] != d || in->strides[1] != 1 || norm->sizes[0] != d ||
      ids->sizes[1] != t || ids->strides[1] != ids->sizes[2])
    return; // leaves the outputs untouched, which the tests detect
  for (int64_t i = 0; i < t; ++i) {
    exitLoop->data[i] = 0;
    for (int64_t j = 0; j < d; ++j)
      out->data[i * d + j] = in->data[i * d + j] + norm->data[j];
  }
  int64_t trace = ids->sizes[0] * ids->sizes[1] * ids->sizes[2];
  for (int64_t i = 0; i < trace; ++i) {
    ids->data[i] = int32_t(i / ids->sizes[2]);
    gates->data[i] = 1.0f;
  }
}

const moert_compiled_model kFakeModel = {
    R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
        "top_k": 1, "experts": 2,
        "weights": [{"source": "model.norm.weight", "dtype": "F32",
                     "shape": [3]}]})",
    fakeRun, nullptr, 0};

// fakeRun, but its (emulated GPU) kernel "experts_down_split_7" made an
// access outside a buffer, as a kernel built by moe-emulate-gpu reports one.
void faultingRun(void **descriptors) {
  fakeRun(descriptors);
  moert_emulated_out_of_bounds("experts_down_split_7");
  moert_emulated_out_of_bounds("a_later_kernel");
}

class ModelTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_FALSE(llvm::sys::fs::createUniqueDirectory("moert-model", dir));
  }
  void TearDown() override { llvm::sys::fs::remove_directories(dir); }

  std::string writeWeights(const std::string &name,
                           std::vector<moert::TensorToWrite> tensors) {
    llvm::SmallString<128> path(dir);
    llvm::sys::path::append(path, name);
    EXPECT_FALSE(bool(moert::writeSafetensors(path, tensors)));
    return std::string(path);
  }
  std::string normWeights() {
    return writeWeights("w.safetensors",
                        {{"model.norm.weight",
                          moert::DType::F32,
                          {3},
                          {reinterpret_cast<const uint8_t *>(norm), 12}}});
  }

  llvm::SmallString<128> dir;
  const float norm[3] = {1.0f, 2.0f, 3.0f};
};

TEST_F(ModelTest, RunsAndLaysOutDescriptors) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  ASSERT_TRUE(ctx) << error;
  auto model = moert::Model::load(*ctx, kFakeModel, normWeights(), &error);
  ASSERT_TRUE(model) << error;
  EXPECT_EQ(model->info().hidden_size, 3);

  float in[6] = {0, 0, 0, 10, 20, 30}, out[6] = {};
  int32_t exitLoop[2] = {-7, -7}, ids[2] = {};
  float gates[2] = {};
  moert_outputs outputs{out, exitLoop, ids, gates};
  ASSERT_TRUE(model->run(2, in, outputs, &error)) << error;
  EXPECT_EQ(std::vector<float>(out, out + 6),
            (std::vector<float>{1, 2, 3, 11, 22, 33}));
  EXPECT_EQ(exitLoop[1], 0);
  EXPECT_EQ(ids[1], 1);
}

// A run whose emulated kernels accessed memory outside a buffer fails,
// naming the first such kernel; the next run starts clean.
TEST_F(ModelTest, EmulatedOutOfBoundsAccessFailsTheRun) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  ASSERT_TRUE(ctx) << error;
  moert_compiled_model faulting = kFakeModel;
  faulting.run = faultingRun;
  auto model = moert::Model::load(*ctx, faulting, normWeights(), &error);
  ASSERT_TRUE(model) << error;
  float in[3] = {0, 0, 0}, out[3] = {};
  int32_t exitLoop[1] = {}, ids[1] = {};
  float gates[1] = {};
  moert_outputs outputs{out, exitLoop, ids, gates};
  EXPECT_FALSE(model->run(1, in, outputs, &error));
  EXPECT_EQ(error, "the emulated GPU kernel 'experts_down_split_7' accessed "
                   "memory outside a buffer (a compiler bug: on a GPU it "
                   "would read another allocation or fault); the run's "
                   "outputs are not valid");
  auto clean = moert::Model::load(*ctx, kFakeModel, normWeights(), &error);
  ASSERT_TRUE(clean) << error;
  EXPECT_TRUE(clean->run(1, in, outputs, &error)) << error;
}

TEST_F(ModelTest, ConcurrentRunsOnOneModel) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  auto model = moert::Model::load(*ctx, kFakeModel, normWeights(), &error);
  ASSERT_TRUE(model) << error;
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      float in[3] = {float(i), 0, 0}, out[3] = {};
      int32_t exitLoop[1], ids[1];
      float gates[1];
      moert_outputs outputs{out, exitLoop, ids, gates};
      ok[i] = model->run(1, in, outputs, nullptr) && out[0] == float(i) + 1;
    });
  for (std::thread &t : threads)
    t.join();
  EXPECT_EQ(ok, std::vector<int>(8, 1));
}

TEST_F(ModelTest, DeviceErrors) {
  // Device "cuda" without a driver: CudaBackendTest.
  std::string error;
  EXPECT_FALSE(moert::Context::create("tpu", &error));
  EXPECT_EQ(error, "unknown device 'tpu' (expected cpu or cuda)");
  moert_context *ctx = nullptr;
  moert_status status = moert_context_create("tpu", &ctx);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  moert_status_free(status);
  status = moert_context_create("cpu", nullptr);
  EXPECT_EQ(moert_status_get_code(status), MOERT_INVALID_ARGUMENT);
  moert_status_free(status);
  EXPECT_EQ(moert_status_get_code(nullptr), MOERT_OK);
}

TEST_F(ModelTest, WeightErrorsNameTheTensor) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  float two[2] = {1, 2};
  std::string wrongShape = writeWeights(
      "shape.safetensors", {{"model.norm.weight",
                             moert::DType::F32,
                             {2},
                             {reinterpret_cast<const uint8_t *>(two), 8}}});
  EXPECT_FALSE(moert::Model::load(*ctx, kFakeModel, wrongShape, &error));
  EXPECT_EQ(error, "'" + wrongShape +
                       "': tensor 'model.norm.weight' has shape [2], "
                       "expected [3]");

  std::string extra = writeWeights(
      "extra.safetensors", {{"model.norm.weight",
                             moert::DType::F32,
                             {3},
                             {reinterpret_cast<const uint8_t *>(norm), 12}},
                            {"lm_head.weight",
                             moert::DType::F32,
                             {2},
                             {reinterpret_cast<const uint8_t *>(two), 8}}});
  EXPECT_FALSE(moert::Model::load(*ctx, kFakeModel, extra, &error));
  EXPECT_EQ(error, extra + ": unexpected tensor 'lm_head.weight': the model "
                           "has no weight bound to it");
}

TEST_F(ModelTest, BadArguments) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  moert_compiled_model broken = {"{\"entry\": 1}", fakeRun, nullptr, 0};
  EXPECT_FALSE(moert::Model::load(*ctx, broken, normWeights(), &error));
  EXPECT_EQ(error, "invalid model manifest: missing a field");
  moert_compiled_model badShape = {
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2,
          "weights": [{"source": "w", "dtype": "F32", "shape": [-3]}]})",
      fakeRun, nullptr, 0};
  EXPECT_FALSE(moert::Model::load(*ctx, badShape, normWeights(), &error));
  EXPECT_EQ(error, "invalid model manifest: weight 'w' has a bad shape");

  auto model = moert::Model::load(*ctx, kFakeModel, normWeights(), &error);
  ASSERT_TRUE(model) << error;
  float in[3] = {}, out[3];
  int32_t exitLoop[1], ids[1];
  float gates[1];
  moert_outputs outputs{out, exitLoop, ids, gates};
  EXPECT_FALSE(model->run(0, in, outputs, &error));
  EXPECT_EQ(error, "moert_model_run: tokens must be at least 1");
  moert_outputs missing{out, nullptr, ids, gates};
  EXPECT_FALSE(model->run(1, in, missing, &error));
  EXPECT_EQ(error, "moert_model_run: null argument");
}

//===----------------------------------------------------------------------===//
// device_dtype: weights bound as bf16
//===----------------------------------------------------------------------===//

/// What a run saw of one weight: its sizes, strides and bytes.
struct SeenWeight {
  std::vector<int64_t> sizes, strides;
  std::vector<uint8_t> bytes;
};
/// The rank and element size of each weight of the capturing stand-in.
std::vector<std::pair<int, size_t>> captureLayout;
std::vector<SeenWeight> seenWeights;

/// Records the weights' descriptors (after the five leading ones).
void captureRun(void **descriptors) {
  seenWeights.clear();
  for (size_t w = 0; w < captureLayout.size(); ++w) {
    auto [rank, elementSize] = captureLayout[w];
    const auto *words = static_cast<const int64_t *>(descriptors[5 + w]);
    SeenWeight seen;
    seen.sizes.assign(words + 3, words + 3 + rank);
    seen.strides.assign(words + 3 + rank, words + 3 + 2 * rank);
    int64_t elements = 1;
    for (int64_t size : seen.sizes)
      elements *= size;
    const auto *data =
        reinterpret_cast<const uint8_t *>(words[1]) + words[2] * elementSize;
    seen.bytes.assign(data, data + elements * elementSize);
    seenWeights.push_back(std::move(seen));
  }
}

std::vector<uint8_t> bytesOf(const std::vector<uint16_t> &bits) {
  std::vector<uint8_t> bytes(bits.size() * 2);
  std::memcpy(bytes.data(), bits.data(), bytes.size());
  return bytes;
}

float floatOf(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

TEST_F(ModelTest, BF16DeviceWeights) {
  // a: BF16 file, BF16 device: the bits as they are (even a signalling NaN,
  // which f32 rounding would quiet), [2, 3].
  const uint16_t a[6] = {0x3f80, 0x7f81, 0x8000, 0x0001, 0xc0a0, 0xff80};
  // b: F32 file, BF16 device: rounded to nearest even, [8].
  const float b[8] = {
      1.0f,
      floatOf(0x3f808000), // 1 + 2^-8: a tie, down to the even 0x3f80
      floatOf(0x3f818000), // a tie, up to the even 0x3f82
      floatOf(0x3f80c000), // above half an ulp: up to 0x3f81
      floatOf(0x3f807fff), // below half an ulp: down to 0x3f80
      floatOf(0x7f800001), // a NaN whose payload truncation would lose
      floatOf(0x7f7fffff), // the largest float rounds up to infinity
      -1.5f};
  const uint16_t bExpected[8] = {0x3f80, 0x3f80, 0x3f82, 0x3f81,
                                 0x3f80, 0x7fc0, 0x7f80, 0xbfc0};
  // c: BF16 file stored [3, 2], bound transposed as [2, 3] BF16.
  const uint16_t c[6] = {1, 2, 3, 4, 5, 6}; // rows {1, 2}, {3, 4}, {5, 6}
  const uint16_t cExpected[6] = {1, 3, 5, 2, 4, 6};
  // d: two F32 experts stored [3, 2], stacked, transposed, then rounded:
  // [2, 2, 3] BF16.
  const float d0[6] = {1, 2, 3, 4, 5, 6}, d1[6] = {-1, -2, -3, -4, -5, -6};
  std::vector<uint16_t> dExpected;
  for (const float *expert : {d0, d1})
    for (int r = 0; r < 2; ++r)
      for (int col = 0; col < 3; ++col)
        dExpected.push_back(moert::f32ToBF16(expert[col * 2 + r]));
  // e: BF16 file, no device_dtype: widened to f32 as before.
  const uint16_t e[2] = {0x3f80, 0xc0a0};
  const float eExpected[2] = {1.0f, -5.0f};
  // f: a fused gate_up_proj [2 experts, 2 * 1, 2] (BF16), the gate halves
  // bound as BF16 [2, 1, 2].
  const uint16_t f[8] = {10, 11, 20, 21, 30, 31, 40, 41};
  const uint16_t fExpected[4] = {10, 11, 30, 31};

  auto raw = [](const void *p, size_t n) {
    return llvm::ArrayRef<uint8_t>(static_cast<const uint8_t *>(p), n);
  };
  using moert::DType;
  std::string path = writeWeights(
      "bf16.safetensors",
      {{"a", DType::BF16, {2, 3}, raw(a, 12)},
       {"b", DType::F32, {8}, raw(b, 32)},
       {"c", DType::BF16, {3, 2}, raw(c, 12)},
       {"d.0.w", DType::F32, {3, 2}, raw(d0, 24)},
       {"d.1.w", DType::F32, {3, 2}, raw(d1, 24)},
       {"e", DType::BF16, {2}, raw(e, 4)},
       {"m.experts.gate_up_proj", DType::BF16, {2, 2, 2}, raw(f, 16)}});
  moert_compiled_model model = {
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2, "weights": [
        {"source": "a", "dtype": "BF16", "shape": [2, 3],
         "device_dtype": "BF16"},
        {"source": "b", "dtype": "F32", "shape": [8], "device_dtype": "BF16"},
        {"source": "c", "dtype": "BF16", "shape": [2, 3], "transpose": true,
         "device_dtype": "BF16"},
        {"source": "d.{e}.w", "dtype": "F32", "shape": [2, 2, 3],
         "transpose": true, "device_dtype": "BF16"},
        {"source": "e", "dtype": "BF16", "shape": [2]},
        {"source": "m.experts.{e}.gate_proj.weight", "dtype": "BF16",
         "shape": [2, 1, 2], "device_dtype": "BF16"}]})",
      captureRun, nullptr, 0};
  captureLayout = {{2, 2}, {1, 2}, {2, 2}, {3, 2}, {1, 4}, {3, 2}};

  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  ASSERT_TRUE(ctx) << error;
  auto loaded = moert::Model::load(*ctx, model, path, &error);
  ASSERT_TRUE(loaded) << error;
  float in[3] = {}, out[3];
  int32_t exitLoop[1], ids[1];
  float gates[1];
  moert_outputs outputs{out, exitLoop, ids, gates};
  ASSERT_TRUE(loaded->run(1, in, outputs, &error)) << error;
  ASSERT_EQ(seenWeights.size(), 6u);

  EXPECT_EQ(seenWeights[0].bytes, bytesOf({a, a + 6}));
  EXPECT_EQ(seenWeights[1].bytes, bytesOf({bExpected, bExpected + 8}));
  EXPECT_EQ(seenWeights[2].bytes, bytesOf({cExpected, cExpected + 6}));
  EXPECT_EQ(seenWeights[3].bytes, bytesOf(dExpected));
  EXPECT_EQ(seenWeights[4].bytes, raw(eExpected, sizeof(eExpected)).vec());
  EXPECT_EQ(seenWeights[5].bytes, bytesOf({fExpected, fExpected + 4}));
  // Shapes and element strides are the manifest's, whatever the dtype.
  EXPECT_EQ(seenWeights[0].sizes, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(seenWeights[0].strides, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(seenWeights[3].sizes, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(seenWeights[3].strides, (std::vector<int64_t>{6, 3, 1}));
  // The rounding is f32ToBF16's (BF16Test), NaN included.
  EXPECT_TRUE(std::isnan(moert::bf16ToF32(bExpected[5])));
}

TEST_F(ModelTest, UnknownDeviceDTypeNamesTheWeight) {
  std::string error;
  auto ctx = moert::Context::create("cpu", &error);
  moert_compiled_model model = {
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2,
          "weights": [{"source": "model.norm.weight", "dtype": "F32",
                       "shape": [3], "device_dtype": "F16"}]})",
      fakeRun, nullptr, 0};
  EXPECT_FALSE(moert::Model::load(*ctx, model, normWeights(), &error));
  EXPECT_EQ(error, "invalid model manifest: weight 'model.norm.weight' has "
                   "device_dtype 'F16' (expected F32 or BF16)");
  model.manifest =
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2,
          "weights": [{"source": "model.norm.weight", "dtype": "F32",
                       "shape": [3], "device_dtype": 16}]})";
  EXPECT_FALSE(moert::Model::load(*ctx, model, normWeights(), &error));
  EXPECT_EQ(error, "invalid model manifest: weight 'model.norm.weight' has "
                   "device_dtype that is no string (expected F32 or BF16)");
  // "F32" is the default spelled out.
  model.manifest =
      R"({"entry": "forward", "hidden_size": 3, "passes": 1, "layers": 1,
          "top_k": 1, "experts": 2,
          "weights": [{"source": "model.norm.weight", "dtype": "F32",
                       "shape": [3], "device_dtype": "F32"}]})";
  auto loaded = moert::Model::load(*ctx, model, normWeights(), &error);
  ASSERT_TRUE(loaded) << error;
  float in[3] = {}, out[3] = {};
  int32_t exitLoop[1], ids[1];
  float gates[1];
  moert_outputs outputs{out, exitLoop, ids, gates};
  ASSERT_TRUE(loaded->run(1, in, outputs, &error)) << error;
  EXPECT_EQ(std::vector<float>(out, out + 3), (std::vector<float>{1, 2, 3}));
}
} // namespace
