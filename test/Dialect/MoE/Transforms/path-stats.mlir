// RUN: moe-opt %s -split-input-file -moe-path-stats -verify-diagnostics | FileCheck %s

// The pass is an analysis: the IR comes out unchanged.
// CHECK-LABEL: func.func @block_shared
// CHECK-COUNT-1: moe.route
// CHECK-NOT: moe.route
// CHECK: return

moe.weight @r : tensor<4x8xf32>
moe.weight @g : tensor<4x16x8xf32>
moe.weight @u : tensor<4x16x8xf32>
moe.weight @d : tensor<4x8x16xf32>

// Two layers reuse one block decision: C(4,2) = 6 choices per decision, so
// log10 paths = 2 * log10(6) = 1.56 independent and 0.78 with sharing.
// expected-remark @+1 {{path stats: layers 2, layer runs 2, router groups 1, experts 4, top_k 2, log10 expert paths 1.56 independent / 0.78 with sharing}}
func.func @block_shared(%h: tensor<?x8xf32>) -> tensor<?x8xf32> {
  // expected-remark @+1 {{router group @r: layer runs 2, routing decisions 1}}
  %ids, %gates = moe.route %h, @r top_k = 2 decision = block : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %y0 = moe.experts %h, %ids, %gates gate @g up @u down @d : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  %y1 = moe.experts %y0, %ids, %gates gate @g up @u down @d : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  return %y1 : tensor<?x8xf32>
}

// -----

moe.weight @r0 : tensor<4x8xf32>
moe.weight @r1 : tensor<4x8xf32>
moe.weight @g : tensor<4x16x8xf32>
moe.weight @u : tensor<4x16x8xf32>
moe.weight @d : tensor<4x8x16xf32>

// Inside a loop every layer runs once per pass, and so does every route:
// 2 layers x 3 passes = 6 decisions of C(4,1) = 4 choices, log10 = 3.61.
// CHECK-LABEL: func.func @looped
// expected-remark @+1 {{path stats: layers 2, layer runs 6, router groups 2, experts 4, top_k 1, log10 expert paths 3.61 independent / 3.61 with sharing}}
func.func @looped(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %h, %exit = moe.loop %x passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    // expected-remark @+1 {{router group @r0: layer runs 3, routing decisions 3}}
    %i0, %g0 = moe.route %h0, @r0 top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    %y0 = moe.experts %h0, %i0, %g0 gate @g up @u down @d : tensor<?x8xf32>, tensor<?x1xi32>, tensor<?x1xf32>
    // expected-remark @+1 {{router group @r1: layer runs 3, routing decisions 3}}
    %i1, %g1 = moe.route %y0, @r1 top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    %y1 = moe.experts %y0, %i1, %g1 gate @g up @u down @d : tensor<?x8xf32>, tensor<?x1xi32>, tensor<?x1xf32>
    moe.yield %y1 : tensor<?x8xf32>
  }
  return %h : tensor<?x8xf32>
}

// -----

// A function without MoE layers gets no remark.
// CHECK-LABEL: func.func @dense
func.func @dense(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  return %x : tensor<?x8xf32>
}
