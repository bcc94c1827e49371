//===- CpuLoopKernelsTest.cpp - token bookkeeping of looped models --------===//
#include "moert/CpuLoopKernels.h"
#include "KernelTestUtils.h"

#include "gtest/gtest.h"

#include <vector>

using moert::testing::memref;

namespace {
TEST(CpuLoopKernels, InitGatherScatter) {
  std::vector<int32_t> active(4), exitLoop(4), ids(2 * 4 * 1);
  std::vector<float> gates(2 * 4 * 1, 5.0f);
  auto activeM = memref<int32_t, 1>(active, {4});
  auto exitM = memref<int32_t, 1>(exitLoop, {4});
  auto idsM = memref<int32_t, 3>(ids, {2, 4, 1});
  auto gatesM = memref<float, 3>(gates, {2, 4, 1});
  _mlir_ciface_moert_loop_init(&activeM, &exitM, &idsM, &gatesM, 3);
  EXPECT_EQ(active, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(exitLoop, (std::vector<int32_t>(4, 2)));
  EXPECT_EQ(ids, (std::vector<int32_t>(8, -1)));
  EXPECT_EQ(gates, (std::vector<float>(8, 0.0f)));

  // Rows of tokens 3 and 1, compacted, then written back elsewhere.
  std::vector<float> state = {0, 0, 1, 1, 2, 2, 3, 3}, packed(4);
  std::vector<int32_t> index = {3, 1};
  auto stateM = memref<float, 2>(state, {4, 2});
  auto indexM = memref<int32_t, 1>(index, {2});
  auto packedM = memref<float, 2>(packed, {2, 2});
  _mlir_ciface_moert_gather_rows(&stateM, &indexM, &packedM);
  EXPECT_EQ(packed, (std::vector<float>{3, 3, 1, 1}));
  packed = {30, 31, 10, 11};
  _mlir_ciface_moert_scatter_rows(&packedM, &indexM, &stateM, /*byToken=*/0);
  EXPECT_EQ(state, (std::vector<float>{0, 0, 10, 11, 2, 2, 30, 31}));
  // Indexed by token: row t of the source goes to row t.
  std::vector<float> full = {9, 9, 8, 8, 7, 7, 6, 6};
  auto fullM = memref<float, 2>(full, {4, 2});
  _mlir_ciface_moert_scatter_rows(&fullM, &indexM, &stateM, /*byToken=*/1);
  EXPECT_EQ(state, (std::vector<float>{0, 0, 8, 8, 2, 2, 6, 6}));
}

TEST(CpuLoopKernels, RecordStep) {
  std::vector<int32_t> traceIds(2 * 3 * 2, -1), ids = {4, 5, 6, 7};
  std::vector<float> traceGates(2 * 3 * 2, 0.0f), gates = {.4f, .5f, .6f, .7f};
  std::vector<int32_t> index = {2, 0};
  auto traceIdsM = memref<int32_t, 3>(traceIds, {2, 3, 2});
  auto traceGatesM = memref<float, 3>(traceGates, {2, 3, 2});
  auto idsM = memref<int32_t, 2>(ids, {2, 2});
  auto gatesM = memref<float, 2>(gates, {2, 2});
  auto indexM = memref<int32_t, 1>(index, {2});
  _mlir_ciface_moert_record_step(&idsM, &gatesM, &indexM, &traceIdsM,
                                 &traceGatesM, /*step=*/1, /*byToken=*/0);
  // Step 1: token 2 got row 0, token 0 got row 1, token 1 did not run.
  EXPECT_EQ(traceIds,
            (std::vector<int32_t>{-1, -1, -1, -1, -1, -1, 6, 7, -1, -1, 4, 5}));
  EXPECT_FLOAT_EQ(traceGates[11], .5f);
  EXPECT_FLOAT_EQ(traceGates[6], .6f);
}

TEST(CpuLoopKernels, ExitUpdate) {
  std::vector<int32_t> active = {0, 1, 2, 3}, exitLoop(4, 2);
  std::vector<int8_t> exits = {1, 0, 1, 0};
  auto activeM = memref<int32_t, 1>(active, {4});
  auto exitM = memref<int32_t, 1>(exitLoop, {4});
  auto exitsM = memref<int8_t, 1>(exits, {4});
  // Before min_passes and after the last pass nothing is tested.
  EXPECT_EQ(_mlir_ciface_moert_exit_update(&exitsM, &activeM, &exitM, 4, 0,
                                           /*minPasses=*/2, 3, 0),
            4);
  EXPECT_EQ(_mlir_ciface_moert_exit_update(&exitsM, &activeM, &exitM, 4, 2, 1,
                                           /*passes=*/3, 0),
            4);
  EXPECT_EQ(exitLoop, (std::vector<int32_t>(4, 2)));
  // After pass 1: tokens 0 and 2 stop; the others stay active, in order.
  EXPECT_EQ(
      _mlir_ciface_moert_exit_update(&exitsM, &activeM, &exitM, 4, 1, 1, 3, 0),
      2);
  EXPECT_EQ(exitLoop, (std::vector<int32_t>{1, 2, 1, 2}));
  EXPECT_EQ(active[0], 1);
  EXPECT_EQ(active[1], 3);
  // By token: the exit bits are indexed by token, not by active position.
  exits = {0, 0, 0, 1};
  EXPECT_EQ(_mlir_ciface_moert_exit_update(&exitsM, &activeM, &exitM, 2, 0, 1,
                                           3, /*byToken=*/1),
            1);
  EXPECT_EQ(active[0], 1);
  EXPECT_EQ(exitLoop[3], 0);
}
} // namespace
