//===- ModelTest.cpp - the runtime C API and its C++ wrapper --------------===//
//
// Uses a hand-written stand-in for a compiled model, so that the tests check
// the runtime's side of the ABI: weight binding, descriptor layout, errors.
//
//===----------------------------------------------------------------------===//
#include "mlir/ExecutionEngine/CRunnerUtils.h"
#include "moert/Safetensors.h"
#include "moert/moert.hpp"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "gtest/gtest.h"

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
} // namespace
