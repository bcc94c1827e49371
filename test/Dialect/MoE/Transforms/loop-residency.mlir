// RUN: moe-opt %s -split-input-file -moe-loop-residency -verify-diagnostics | FileCheck %s
// RUN: moe-opt %s -split-input-file -moe-loop-residency="cache-bytes=1024" -mlir-print-op-on-diagnostic=false 2>&1 | FileCheck %s --check-prefix=SMALL-CACHE
// RUN: moe-opt %s -split-input-file -moe-loop-residency="cache-bytes=1024 max-unrolled-ops=4" -mlir-print-op-on-diagnostic=false 2>&1 | FileCheck %s --check-prefix=BIG-BODY

moe.weight @norm : tensor<8xf32>
moe.weight @w : tensor<64x64xf32>

// 32 + 16384 bytes of weights fit the default 32 MiB budget: resident.
// CHECK-LABEL: func.func @auto
// CHECK: moe.loop %{{.*}} passes = 3 mode = resident
// SMALL-CACHE: remark: moe-loop-residency: unroll: the body's weights (0.02 MiB) exceed the cache budget (0.00 MiB) so residency gains nothing, and 3 passes x 2 ops = 6 <= max-unrolled-ops (256)
// SMALL-CACHE: moe.loop %{{.*}} passes = 3 mode = unroll
// BIG-BODY: remark: moe-loop-residency: resident: unrolling 3 passes x 2 ops = 6 exceeds max-unrolled-ops (4)
func.func @auto(%x: tensor<?x64xf32>, %y: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  // expected-remark @+1 {{moe-loop-residency: resident: the body's weights (0.02 MiB) fit the cache budget (32.00 MiB), so passes after the first find them cached}}
  %h, %exit = moe.loop %y passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %ids, %gates = moe.route %x, @w top_k = 1 : tensor<?x64xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    moe.yield %n : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

// An explicit mode is the user's choice: kept, no remark.
// CHECK-LABEL: func.func @explicit
// CHECK: moe.loop %{{.*}} passes = 2 mode = unroll
func.func @explicit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    moe.yield %n : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

// A single pass shares nothing between passes.
// CHECK-LABEL: func.func @single_pass
// CHECK: moe.loop %{{.*}} passes = 1 mode = unroll
func.func @single_pass(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  // expected-remark @+1 {{moe-loop-residency: unroll: a single pass}}
  %h, %exit = moe.loop %x passes = 1 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    moe.yield %n : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}
