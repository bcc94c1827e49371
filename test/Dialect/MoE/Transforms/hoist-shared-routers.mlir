// RUN: moe-opt %s -split-input-file -moe-hoist-shared-routers -verify-diagnostics | FileCheck %s

moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// A block decision: the second layer's plan is the block head's.
// CHECK-LABEL: func.func @block_plan
// CHECK: %[[IDS:.*]], %[[GATES:.*]] = moe.route
// CHECK-NEXT: %[[PLAN:.*]] = moe.plan %[[IDS]]
// CHECK-NOT: = moe.plan
// CHECK: moe.fused_experts %{{.*}}, %[[PLAN]], %[[GATES]]
// CHECK: moe.fused_experts %{{.*}}, %[[PLAN]], %[[GATES]]
func.func @block_plan(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %ids, %gates = moe.route %x, @router top_k = 2 decision = block : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  // expected-remark @+1 {{one routing plan serves 2 layers of router @router}}
  %p0 = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %y0 = moe.fused_experts %x, %p0, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
  %p1 = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %y1 = moe.fused_experts %y0, %p1, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
  return %y1 : tensor<?x8xf32>
}

// -----

moe.weight @r0 : tensor<4x8xf32>
moe.weight @r1 : tensor<4x8xf32>

// Identical routes (same router, input and attributes) merge; a route over
// another router, or over another input, does not.
// CHECK-LABEL: func.func @routes
// CHECK-COUNT-3: moe.route
// CHECK-NOT: moe.route
func.func @routes(%x: tensor<?x8xf32>, %z: tensor<?x8xf32>) -> (tensor<?x2xi32>, tensor<?x2xi32>, tensor<?x2xi32>, tensor<?x2xi32>) {
  // expected-remark @+1 {{router @r0: 2 identical routes merged into one}}
  %a, %ga = moe.route %x, @r0 top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %b, %gb = moe.route %x, @r0 top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %c, %gc = moe.route %x, @r1 top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %d, %gd = moe.route %z, @r0 top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  return %a, %b, %c, %d : tensor<?x2xi32>, tensor<?x2xi32>, tensor<?x2xi32>, tensor<?x2xi32>
}

// -----

moe.weight @r : tensor<4x8xf32>
moe.weight @norm : tensor<8xf32>

// A route whose input comes from outside the loop is the same every pass:
// it moves before the loop. One that reads the pass state stays.
// CHECK-LABEL: func.func @loop_invariant
// CHECK: %[[IDS:.*]], %{{.*}} = moe.route %{{.*}}, @r top_k = 1
// CHECK-NEXT: moe.loop
// CHECK: moe.route %{{.*}}, @r top_k = 1
// CHECK: moe.yield
func.func @loop_invariant(%x: tensor<?x8xf32>, %c: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    // expected-remark @+1 {{route of router @r is loop-invariant: hoisted out of the moe.loop}}
    %i0, %g0 = moe.route %c, @r top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    %i1, %g1 = moe.route %h0, @r top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    moe.yield %h0 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}
