// RUN: moe-opt %s -split-input-file -moe-exit-compaction -verify-diagnostics | FileCheck %s

moe.weight @norm : tensor<8xf32>

// CHECK-LABEL: func.func @exits
// CHECK: moe.loop %{{.*}} passes = 3 compact_exits
func.func @exits(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = cosine threshold = 0.9 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

// No exit: nothing to compact.
// CHECK-LABEL: func.func @no_exit
// CHECK-NOT: compact_exits
func.func @no_exit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    moe.yield %h1 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @w : tensor<8x8xf32>
moe.weight @norm : tensor<8xf32>

// Attention mixes tokens: dropping exited ones would change the others.
// CHECK-LABEL: func.func @attention
// CHECK-NOT: compact_exits
func.func @attention(%x: tensor<?x8xf32>, %pos: tensor<?xi32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  // expected-remark @+1 {{moe-exit-compaction: not compacting: moe.attention in the body mixes tokens}}
  %h, %exit = moe.loop %x passes = 3 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %pos q @w k @w v @w o @w heads = 2 kv_heads = 2 head_dim = 4 causal : tensor<?x8xf32>, tensor<?xi32>
    %m = moe.exit %a, %h0 criterion = cosine threshold = 0.9 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %a, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}
