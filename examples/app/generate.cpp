// Greedy generation with a decoder compiled by moe_add_model().
//
//   generate WEIGHTS PROMPT_TOKEN... [--tokens N]
//
// WEIGHTS is a checkpoint directory (model.safetensors or a sharded index) or
// a .safetensors file. Prints the N generated token ids.
#include "decoder_model.h"
#include "moert/moert.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
int32_t argmax(const std::vector<float> &logits, size_t offset, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (logits[offset + v] > logits[offset + best])
      best = v;
  return static_cast<int32_t>(best);
}

int fail(const std::string &message) {
  std::fprintf(stderr, "generate: %s\n", message.c_str());
  return 1;
}
} // namespace

int main(int argc, char **argv) {
  if (argc < 3)
    return fail("usage: generate WEIGHTS PROMPT_TOKEN... [--tokens N]");
  int64_t steps = 8;
  std::vector<int32_t> prompt;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc)
      steps = std::atoll(argv[++i]);
    else
      prompt.push_back(static_cast<int32_t>(std::atoi(argv[i])));
  }
  if (prompt.empty())
    return fail("give at least one prompt token");

  std::string error;
  // The device the model was compiled for (moe_add_model's DEVICE).
  auto ctx = moert::Context::create(MOE_APP_DEVICE, &error);
  if (!ctx)
    return fail(error);
  auto model = moert::Model::load(*ctx, decoder_model, argv[1], &error);
  if (!model)
    return fail(error);
  moert_model_info info = model->info();

  auto session = moert::Session::create(*model, &error);
  if (!session)
    return fail(error);

  // Prefill the prompt, then feed back each greedy choice.
  std::vector<float> logits(prompt.size() * info.vocab_size);
  std::vector<int32_t> chunk = prompt;
  std::printf("generated:");
  for (int64_t i = 0; i < steps; ++i) {
    if (!session->forward(chunk.data(), static_cast<int64_t>(chunk.size()),
                          logits.data(), &error))
      return fail(error);
    int32_t next = argmax(logits, (chunk.size() - 1) * info.vocab_size,
                          info.vocab_size);
    std::printf(" %d", next);
    chunk.assign(1, next);
  }
  std::printf("\n");
  return 0;
}
