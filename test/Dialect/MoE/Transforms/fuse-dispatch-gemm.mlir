// RUN: moe-opt %s -split-input-file -moe-fuse-dispatch-gemm | FileCheck %s

moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// The whole chain becomes one fused kernel; no dispatch copy remains.
// CHECK-LABEL: func.func @chain
// CHECK-SAME: (%[[X:.*]]: tensor<?x8xf32>, %[[IDS:.*]]: tensor<?x2xi32>, %[[GATES:.*]]: tensor<?x2xf32>)
// CHECK-NEXT: %[[P:.*]] = moe.plan %[[IDS]]
// CHECK-NEXT: %[[F:.*]] = moe.fused_experts %[[X]], %[[P]], %[[GATES]] gate @gate up @up down @down activation = gelu
// CHECK-NEXT: return %[[F]]
func.func @chain(%x: tensor<?x8xf32>, %ids: tensor<?x2xi32>, %gates: tensor<?x2xf32>) -> tensor<?x8xf32> {
  %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %d = moe.dispatch %x, %p : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %g = moe.grouped_matmul %d, %p, @gate : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %u = moe.grouped_matmul %d, %p, @up : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %a = moe.glu %g, %u activation = gelu : tensor<?x16xf32>
  %y = moe.grouped_matmul %a, %p, @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %c = moe.combine %y, %p, %gates : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32> -> tensor<?x8xf32>
  return %c : tensor<?x8xf32>
}

// -----

moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// The activations are also returned, so the chain cannot disappear into a
// fused kernel: nothing changes.
// CHECK-LABEL: func.func @shared_intermediate
// CHECK: moe.dispatch
// CHECK: moe.glu
// CHECK: moe.combine
// CHECK-NOT: moe.fused_experts
func.func @shared_intermediate(%x: tensor<?x8xf32>, %ids: tensor<?x2xi32>, %gates: tensor<?x2xf32>) -> (tensor<?x8xf32>, tensor<?x16xf32>) {
  %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %d = moe.dispatch %x, %p : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %g = moe.grouped_matmul %d, %p, @gate : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %u = moe.grouped_matmul %d, %p, @up : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %a = moe.glu %g, %u : tensor<?x16xf32>
  %y = moe.grouped_matmul %a, %p, @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %c = moe.combine %y, %p, %gates : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32> -> tensor<?x8xf32>
  return %c, %a : tensor<?x8xf32>, tensor<?x16xf32>
}

// -----

moe.weight @gate : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// Gate and up from different dispatches (or GEMMs over another plan) do not
// form the pattern.
// CHECK-LABEL: func.func @two_plans
// CHECK-NOT: moe.fused_experts
// CHECK: moe.combine
func.func @two_plans(%x: tensor<?x8xf32>, %ids: tensor<?x2xi32>, %ids2: tensor<?x2xi32>, %gates: tensor<?x2xf32>) -> tensor<?x8xf32> {
  %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %q = moe.plan %ids2 : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %d = moe.dispatch %x, %p : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %g = moe.grouped_matmul %d, %p, @gate : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %u = moe.grouped_matmul %d, %q, @gate : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %a = moe.glu %g, %u : tensor<?x16xf32>
  %y = moe.grouped_matmul %a, %p, @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x8xf32>
  %c = moe.combine %y, %p, %gates : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32> -> tensor<?x8xf32>
  return %c : tensor<?x8xf32>
}
