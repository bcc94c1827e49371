// RUN: moe-opt %s -split-input-file -moe-decompose-experts | FileCheck %s
// RUN: moe-opt %s -split-input-file -moe-decompose-experts=tile=64 | FileCheck %s --check-prefix=TILE

moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xbf16>
moe.weight @up : tensor<4x16x8xbf16>
moe.weight @down : tensor<4x8x16xbf16>

// CHECK-LABEL: func.func @one_group
// CHECK-SAME: (%[[X:.*]]: tensor<?x8xf32>)
// CHECK: %[[IDS:.*]], %[[GATES:.*]] = moe.route
// CHECK-NEXT: %[[PLAN:.*]] = moe.plan %[[IDS]] : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
// CHECK-NEXT: %[[D:.*]] = moe.dispatch %[[X]], %[[PLAN]] : {{.*}} -> tensor<?x8xf32>
// CHECK-NEXT: %[[G:.*]] = moe.grouped_matmul %[[D]], %[[PLAN]], @gate : {{.*}} -> tensor<?x16xf32>
// CHECK-NEXT: %[[U:.*]] = moe.grouped_matmul %[[D]], %[[PLAN]], @up : {{.*}} -> tensor<?x16xf32>
// CHECK-NEXT: %[[A:.*]] = moe.glu %[[G]], %[[U]] activation = gelu : tensor<?x16xf32>
// CHECK-NEXT: %[[Y:.*]] = moe.grouped_matmul %[[A]], %[[PLAN]], @down : {{.*}} -> tensor<?x8xf32>
// CHECK-NEXT: %[[C:.*]] = moe.combine %[[Y]], %[[PLAN]], %[[GATES]] : {{.*}} -> tensor<?x8xf32>
// CHECK-NEXT: return %[[C]]
// TILE: !moe.plan<experts = 4, top_k = 2, tile = 64>
func.func @one_group(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %ids, %gates = moe.route %x, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %y = moe.experts %x, %ids, %gates gate @gate up @up down @down activation = gelu : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  return %y : tensor<?x8xf32>
}

// -----

moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// Two layers reusing one decision get a plan each here; sharing them is
// moe-hoist-shared-routers' job.
// CHECK-LABEL: func.func @block
// CHECK-COUNT-2: moe.plan
// CHECK-NOT: moe.experts
func.func @block(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %ids, %gates = moe.route %x, @router top_k = 2 decision = block : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %y0 = moe.experts %x, %ids, %gates gate @gate up @up down @down : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  %y1 = moe.experts %y0, %ids, %gates gate @gate up @up down @down : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  return %y1 : tensor<?x8xf32>
}

// -----

moe.weight @norm : tensor<8xf32>

// Nothing to decompose: the IR is unchanged.
// CHECK-LABEL: func.func @no_experts
// CHECK-NEXT: moe.rms_norm
// CHECK-NEXT: return
func.func @no_experts(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %n = moe.rms_norm %x, @norm : tensor<?x8xf32>
  return %n : tensor<?x8xf32>
}
