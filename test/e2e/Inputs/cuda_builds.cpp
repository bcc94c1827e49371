// Prints the GPU builds of a model compiled by moe-compile --target cuda,
// as the runtime sees them through moert_compiled_model: per build its
// chip, whether it has a run function, and the magic number and size of its
// embedded kernels (a CUDA fatbinary starts with 0xba55ed50).
#include "model.h"

#include <cstdint>
#include <cstdio>
#include <cstring>

int main() {
  const moert_compiled_model &m = my_model;
  std::printf("run %s, %lld builds\n", m.run ? "set" : "null",
              static_cast<long long>(m.gpu_build_count));
  for (int64_t i = 0; i < m.gpu_build_count; ++i) {
    const moert_gpu_build &b = m.gpu_builds[i];
    uint32_t magic = 0;
    if (b.binary && b.binary_size >= 4)
      std::memcpy(&magic, b.binary, sizeof(magic));
    std::printf("build %s: run %s, binary 0x%08x, %s bytes\n", b.chip,
                b.run ? "set" : "null", magic,
                b.binary_size > 1000 ? "over 1000" : "few");
  }
  return 0;
}
