//===- KernelTestUtils.h - helpers shared by the CPU kernel tests -*- C++
//-*-===//
#ifndef MOE_UNITTESTS_RUNTIME_KERNELTESTUTILS_H
#define MOE_UNITTESTS_RUNTIME_KERNELTESTUTILS_H

#include "mlir/ExecutionEngine/CRunnerUtils.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace moert::testing {

/// A row-major memref descriptor over `data`.
template <typename T, int N>
StridedMemRefType<T, N> memref(std::vector<T> &data,
                               std::array<int64_t, N> sizes) {
  StridedMemRefType<T, N> m;
  m.basePtr = m.data = data.data();
  m.offset = 0;
  int64_t stride = 1;
  for (int i = N - 1; i >= 0; --i) {
    m.sizes[i] = sizes[i];
    m.strides[i] = stride;
    stride *= sizes[i];
  }
  EXPECT_EQ(stride, static_cast<int64_t>(data.size()));
  return m;
}

/// Rounds `w` to bf16 in place (finite values, nearest even) and returns the
/// bits, of which `w` is then the exact widening.
inline std::vector<uint16_t> roundToBF16(std::vector<float> &w) {
  std::vector<uint16_t> bits(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    uint32_t f;
    std::memcpy(&f, &w[i], sizeof(f));
    bits[i] = uint16_t((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
    f = uint32_t(bits[i]) << 16;
    std::memcpy(&w[i], &f, sizeof(f));
  }
  return bits;
}

/// `n` floats uniform in [-scale, scale], reproducible from `seed`.
inline std::vector<float> randomVector(size_t n, float scale, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float &value : v)
    value = dist(rng);
  return v;
}

inline void expectBitwiseEqual(const std::vector<float> &actual,
                               const std::vector<float> &expected) {
  ASSERT_EQ(actual.size(), expected.size());
  EXPECT_EQ(std::memcmp(actual.data(), expected.data(),
                        actual.size() * sizeof(float)),
            0);
}

inline bool allNaN(const std::vector<float> &v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}

} // namespace moert::testing

#endif // MOE_UNITTESTS_RUNTIME_KERNELTESTUTILS_H
