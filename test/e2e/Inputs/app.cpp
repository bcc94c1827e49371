// A minimal application: links a model compiled by moe-compile with the
// runtime, reads inputs, runs the model and writes the contract outputs.
// With THREADS > 1 it also runs the loaded model from that many threads at
// once and checks every result is bitwise identical to the first run.
// Usage: app WEIGHTS INPUTS OUTPUTS [THREADS]
#include "model.h"
#include "moert/Safetensors.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

static int check(moert_status status) {
  if (!status)
    return 0;
  std::fprintf(stderr, "app: %s\n", moert_status_get_message(status));
  moert_status_free(status);
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 5)
    return 2;
  int threads = argc == 5 ? std::atoi(argv[4]) : 1;
  moert_context *ctx = nullptr;
  moert_model *model = nullptr;
  if (check(moert_context_create("cpu", &ctx)) ||
      check(moert_model_load(ctx, &my_model, argv[1], &model)))
    return 1;
  moert_model_info info = moert_model_get_info(model);

  auto inputs = moert::SafetensorsFile::open(argv[2]);
  if (!inputs)
    return 1;
  const moert::TensorView *x = (*inputs)->find("hidden_states");
  auto hidden = moert::readAsF32(*x);
  if (!hidden)
    return 1;
  int64_t tokens = x->shape[0], d = MY_MODEL_HIDDEN_SIZE;
  int64_t trace = info.passes * info.layers * tokens * info.top_k;
  std::vector<float> out(tokens * d), gates(trace);
  std::vector<int32_t> exitLoop(tokens), ids(trace);
  moert_outputs outputs{out.data(), exitLoop.data(), ids.data(), gates.data()};
  if (check(moert_model_run(model, tokens, hidden->data(), &outputs)))
    return 1;

  std::vector<std::thread> workers;
  std::vector<int> same(threads, 0);
  for (int i = 1; i < threads; ++i)
    workers.emplace_back([&, i] {
      std::vector<float> out2(out.size()), gates2(gates.size());
      std::vector<int32_t> exit2(exitLoop.size()), ids2(ids.size());
      moert_outputs o{out2.data(), exit2.data(), ids2.data(), gates2.data()};
      moert_status status = moert_model_run(model, tokens, hidden->data(), &o);
      same[i] = !status &&
                !std::memcmp(out2.data(), out.data(), out.size() * 4) &&
                !std::memcmp(gates2.data(), gates.data(), gates.size() * 4) &&
                exit2 == exitLoop && ids2 == ids;
      moert_status_free(status);
    });
  for (std::thread &w : workers)
    w.join();
  for (int i = 1; i < threads; ++i)
    if (!same[i]) {
      std::fprintf(stderr, "app: concurrent run %d differs\n", i);
      return 1;
    }

  auto bytes = [](const auto &v) {
    return llvm::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t *>(v.data()),
                                   v.size() * sizeof(v[0]));
  };
  int64_t steps = info.passes * info.layers;
  std::vector<moert::TensorToWrite> tensors = {
      {"hidden_states", moert::DType::F32, {tokens, d}, bytes(out)},
      {"exit_loop", moert::DType::I32, {tokens}, bytes(exitLoop)},
      {"expert_ids", moert::DType::I32, {steps, tokens, info.top_k}, bytes(ids)},
      {"expert_gates", moert::DType::F32, {steps, tokens, info.top_k},
       bytes(gates)}};
  if (llvm::Error err = moert::writeSafetensors(argv[3], tensors)) {
    llvm::consumeError(std::move(err));
    return 1;
  }
  moert_model_free(model);
  moert_context_free(ctx);
  std::printf("app: ran %lld tokens through %lld passes, %d concurrent runs "
              "identical\n",
              (long long)tokens, (long long)info.passes, threads);
  return 0;
}
