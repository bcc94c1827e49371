// RUN: moe-opt %s -split-input-file -convert-moe-to-cpu -verify-diagnostics | FileCheck %s

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xbf16>
moe.weight @up : tensor<4x16x8xbf16>
moe.weight @down : tensor<4x8x16xbf16>

// Weights become trailing f32 buffer arguments in declaration order (bf16
// files are widened at bind time); the outputs and the routing trace
// [passes * layers, tokens, top_k] come first.
// CHECK-NOT: moe.weight
// CHECK-LABEL: func.func @forward(
// CHECK-SAME: %[[IN:.*]]: memref<?x8xf32>, %[[OUT:.*]]: memref<?x8xf32>, %[[EXIT:.*]]: memref<?xi32>,
// CHECK-SAME: %[[IDS:.*]]: memref<?x?x2xi32>, %[[GATES:.*]]: memref<?x?x2xf32>,
// CHECK-SAME: %[[NORM:.*]]: memref<8xf32>, %[[ROUTER:.*]]: memref<4x8xf32>,
// CHECK-SAME: %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x8x16xf32>)
// CHECK-SAME: attributes {llvm.emit_c_interface}
// CHECK: %[[T:.*]] = memref.dim %[[IN]], %{{.*}}
// CHECK: %[[STATE:.*]] = memref.alloc(%[[T]]) : memref<?x8xf32>
// CHECK: %[[ACTIVE:.*]] = memref.alloc(%[[T]]) : memref<?xi32>
// CHECK: memref.copy %[[IN]], %[[STATE]]
// CHECK: call @moert_loop_init
// The pass loop carries the number of active tokens.
// CHECK: %[[REMAINING:.*]] = scf.for %[[PASS:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%[[N:.*]] = %[[T]]) -> (index) {
// CHECK:   memref.subview %[[ACTIVE]][0] [%[[N]]] [1]
// CHECK:   call @moert_gather_rows
// CHECK:   call @moert_rms_norm
// CHECK:   call @moert_route
// CHECK:   call @moert_experts
// CHECK:   call @moert_record_step
// CHECK:   call @moert_add
// CHECK:   call @moert_exit_test
// CHECK:   call @moert_scatter_rows
// Exited tokens leave the active set: later passes run on fewer rows.
// CHECK:   %[[KEPT:.*]] = func.call @moert_exit_update
// CHECK:   %[[NEXT:.*]] = arith.index_cast %[[KEPT]] : i64 to index
// CHECK:   scf.yield %[[NEXT]] : index
// CHECK: }
// CHECK: call @moert_rms_norm
// CHECK: memref.copy %{{.*}}, %[[OUT]]
// CHECK: memref.dealloc %[[STATE]]
// CHECK: return
func.func @forward(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %ids, %gates = moe.route %n, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %y = moe.experts %n, %ids, %gates gate @gate up @up down @down : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
    %h1 = arith.addf %h0, %y : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = cosine threshold = 0.99 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  %out = moe.rms_norm %h, @norm : tensor<?x8xf32>
  return %out, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

// Without an exit the active count stays the token count.
// CHECK-LABEL: func.func @no_exit
// CHECK: scf.for {{.*}} iter_args(%[[N:.*]] = %{{.*}}) -> (index) {
// CHECK-NOT: moert_exit_update
// CHECK: scf.yield %[[N]] : index
func.func @no_exit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    moe.yield %h0 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

// expected-error @+1 {{convert-moe-to-cpu expects a model function (hidden) -> (hidden, exit_loop), as moe-import emits}}
func.func @wrong_signature(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    moe.yield %h0 : tensor<?x8xf32>
  }
  return %h : tensor<?x8xf32>
}

// -----

moe.weight @norm : tensor<8xf32>
moe.weight @head : tensor<32x8xf32>

func.func @lm_head_exit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    // expected-error @+1 {{the CPU backend supports the cosine and relative_l2 exit criteria of moe_stack models}}
    %m = moe.exit %h1, %h0 criterion = entropy threshold = 0.5 lm_head @head : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}
