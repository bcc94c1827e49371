// RUN: moe-opt %s -split-input-file -convert-moe-to-cpu -verify-diagnostics | FileCheck %s
// RUN: moe-opt %s -split-input-file -convert-moe-to-cpu=bf16-weights=false -verify-diagnostics | FileCheck %s --check-prefix=WIDEN

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xbf16>
moe.weight @up : tensor<4x16x8xbf16>
moe.weight @down : tensor<4x8x16xbf16>

// Weights become trailing f32 buffer arguments in declaration order (bf16
// files are widened at bind time); the outputs and the routing trace
// [passes * layers, tokens, top_k] come first.
// CHECK-NOT: moe.weight
// CHECK-LABEL: func.func @compacting(
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
// The pass loop carries the number of active tokens; each pass gathers them
// into a compact prefix and runs the layers on that prefix only.
// CHECK: scf.for %[[PASS:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%[[N:.*]] = %[[T]]) -> (index) {
// CHECK:   memref.subview %[[ACTIVE]][0] [%[[N]]] [1]
// CHECK:   call @moert_gather_rows
// CHECK:   memref.subview %{{.*}}[0, 0] [%[[N]], 8] [1, 1]
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
func.func @compacting(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 mode = resident compact_exits : tensor<?x8xf32> -> tensor<?xi32> {
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

moe.weight @norm : tensor<8xf32>

// Without compact_exits every pass computes every token (rows indexed by
// token, byToken = 1) and only the active ones are written back.
// CHECK-LABEL: func.func @not_compacting
// CHECK: %[[T:.*]] = memref.dim
// CHECK: scf.for {{.*}} iter_args(%[[N:.*]] = %[[T]]) -> (index) {
// CHECK-NOT: moert_gather_rows
// CHECK:   memref.copy
// CHECK:   call @moert_rms_norm
// CHECK:   call @moert_exit_test
// CHECK:   call @moert_scatter_rows
// CHECK:   func.call @moert_exit_update
func.func @not_compacting(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = relative_l2 threshold = 0.1 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

// Unrolled: no loop; each pass is emitted with constant indices, and the
// exit is tested only after pass 1 (min_passes = 2; never after the last).
// CHECK-LABEL: func.func @unrolled
// CHECK-NOT: scf.for
// CHECK-COUNT-3: call @moert_rms_norm
// CHECK-NOT: call @moert_rms_norm
// CHECK: return
// CHECK-LABEL: func.func @unrolled_exits
// CHECK: call @moert_rms_norm
// CHECK-NOT: moert_exit
// CHECK: call @moert_scatter_rows
// CHECK: call @moert_rms_norm
// CHECK: call @moert_exit_test
// CHECK: call @moert_scatter_rows
// CHECK: call @moert_exit_update({{.*}}, %c1_i64, %c2_i64, %c3_i64{{.*}})
// CHECK: call @moert_rms_norm
// CHECK-NOT: moert_exit
// CHECK: return
func.func @unrolled(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    moe.yield %h1 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}
func.func @unrolled_exits(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 mode = unroll compact_exits : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = relative_l2 threshold = 0.1 min_passes = 2 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// Kernel-level ops: plan buffers (offsets [E+1], row tokens [T*k + E*(tile-1)],
// slot rows [T, k]) and plan-ordered buffers of the same row count.
// CHECK-LABEL: func.func @kernel_level
// CHECK: %[[T:.*]] = memref.dim
// CHECK: %[[OFFSETS:.*]] = memref.alloc() : memref<5xi32>
// CHECK: %[[SLOTS:.*]] = arith.muli %[[T]], %c2
// CHECK: %[[R:.*]] = arith.addi %[[SLOTS]], %c12
// CHECK: memref.alloc(%[[R]]) : memref<?xi32>
// CHECK: memref.alloc(%[[T]]) : memref<?x2xi32>
// CHECK: call @moert_plan({{.*}}, %c4_i64)
// CHECK: call @moert_dispatch
// CHECK: call @moert_grouped_matmul
// CHECK: call @moert_grouped_matmul
// CHECK: call @moert_glu
// CHECK: call @moert_grouped_matmul
// CHECK: call @moert_combine
// CHECK: call @moert_record_step
// CHECK: call @moert_fused_experts
// CHECK: call @moert_record_step
func.func @kernel_level(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 4>
    %d = moe.dispatch %h0, %p : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x8xf32>
    %g = moe.grouped_matmul %d, %p, @gate : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x16xf32>
    %u = moe.grouped_matmul %d, %p, @up : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x16xf32>
    %a = moe.glu %g, %u : tensor<?x16xf32>
    %y = moe.grouped_matmul %a, %p, @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x8xf32>
    %c = moe.combine %y, %p, %gates : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4>, tensor<?x2xf32> -> tensor<?x8xf32>
    %f = moe.fused_experts %c, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4>, tensor<?x2xf32>
    moe.yield %f : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xbf16>
moe.weight @up : tensor<4x16x8xbf16>
moe.weight @down : tensor<4x8x16xbf16>
moe.weight @gate2 : tensor<4x16x8xbf16>
moe.weight @up2 : tensor<4x16x8xbf16>
moe.weight @down2 : tensor<4x8x16xbf16>

// bf16 weights that only fused expert groups read stay bf16 buffers, read by
// moert_fused_experts_bf16, and the module lists their positions for the
// manifest; @gate2 is also read by a grouped matmul (an f32 kernel), so it
// and its group's other weights are f32. With bf16-weights=false every
// weight is f32.
// CHECK: module attributes {moe.host_bf16_weights = array<i64: 1, 2, 3>}
// CHECK-LABEL: func.func @bf16_experts(
// CHECK-SAME: %{{.*}}: memref<4x8xf32>, %[[GATE:.*]]: memref<4x16x8xbf16>, %[[UP:.*]]: memref<4x16x8xbf16>, %[[DOWN:.*]]: memref<4x8x16xbf16>,
// CHECK-SAME: %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x8x16xf32>)
// CHECK: %[[G:.*]] = memref.cast %[[GATE]] : memref<4x16x8xbf16> to memref<?x?x?xbf16, strided<[?, ?, ?], offset: ?>>
// CHECK: call @moert_fused_experts_bf16({{.*}}, %[[G]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : ({{.*}}, memref<?x?x?xbf16, strided<[?, ?, ?], offset: ?>>, memref<?x?x?xbf16, strided<[?, ?, ?], offset: ?>>, memref<?x?x?xbf16, strided<[?, ?, ?], offset: ?>>, memref<?x?xf32, strided<[?, ?], offset: ?>>, i32) -> ()
// CHECK: call @moert_grouped_matmul
// CHECK: call @moert_fused_experts({{.*}}) : ({{.*}}, memref<?x?x?xf32, strided<[?, ?, ?], offset: ?>>, memref<?x?x?xf32, strided<[?, ?, ?], offset: ?>>, memref<?x?x?xf32, strided<[?, ?, ?], offset: ?>>, memref<?x?xf32, strided<[?, ?], offset: ?>>, i32) -> ()
// WIDEN-NOT: moe.host_bf16_weights
// WIDEN-LABEL: func.func @bf16_experts(
// WIDEN-SAME: %{{.*}}: memref<4x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x8x16xf32>,
// WIDEN-NOT: moert_fused_experts_bf16
func.func @bf16_experts(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 4>
    %f = moe.fused_experts %h0, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4>, tensor<?x2xf32>
    %d = moe.dispatch %f, %p : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x8xf32>
    %g = moe.grouped_matmul %d, %p, @gate2 : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4> -> tensor<?x16xf32>
    %f2 = moe.fused_experts %f, %p, %gates gate @gate2 up @up2 down @down2 : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 4>, tensor<?x2xf32>
    moe.yield %f2 : tensor<?x8xf32>
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

// LM-head criteria test the next-token distribution: the kernel gets the LM
// head, the optional final norm (here absent: a one-element stand-in and
// hasNorm = 0) and the criterion (3 = entropy).
// CHECK-LABEL: func.func @lm_head_exit
// CHECK: %[[HEAD:.*]]: memref<32x8xf32>)
// CHECK-NOT: call @moert_exit_test(
// CHECK: call @moert_exit_test_lm(%{{.*}}, %{{.*}}, %c0_i32{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %c3_i32{{.*}}, %{{.*}})
func.func @lm_head_exit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = entropy threshold = 0.5 lm_head @head : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

func.func @outer_value(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %outer = moe.rms_norm %x, @norm : tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 2 : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    // expected-error @+1 {{convert-moe-to-cpu: a loop body may only use values of its own pass}}
    %h1 = arith.addf %h0, %outer : tensor<?x8xf32>
    moe.yield %h1 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @embed : tensor<16x8xbf16>
moe.weight @q : tensor<8x8xbf16>
moe.weight @k : tensor<4x8xbf16>
moe.weight @v : tensor<4x8xbf16>
moe.weight @o : tensor<8x8xbf16>
moe.weight @router : tensor<2x8xbf16>
moe.weight @gate : tensor<2x12x8xbf16>
moe.weight @up : tensor<2x12x8xbf16>
moe.weight @down : tensor<2x8x12xbf16>
moe.weight @qk_norm : tensor<4xbf16>

// A bf16 decoder: the embedding table, which the tied LM head reads too, the
// attention projections and the fused experts' weights stay bf16 (their
// kernels have bf16 forms); the router and the q/k norm are read widened to
// f32.
// CHECK: module attributes {moe.host_bf16_weights = array<i64: 0, 1, 2, 3, 4, 6, 7, 8>}
// CHECK-LABEL: func.func @decoder(
// CHECK-SAME: %{{[^:]*}}: memref<16x8xbf16>, %{{.*}}: memref<8x8xbf16>, %{{.*}}: memref<4x8xbf16>, %{{.*}}: memref<4x8xbf16>, %{{.*}}: memref<8x8xbf16>, %{{.*}}: memref<2x8xf32>, %{{.*}}: memref<2x12x8xbf16>, %{{.*}}: memref<2x12x8xbf16>, %{{.*}}: memref<2x8x12xbf16>, %{{.*}}: memref<4xf32>)
// CHECK: call @moert_embed_bf16(
// CHECK: call @moert_attention_bf16(
// CHECK: call @moert_route(
// CHECK: call @moert_fused_experts_bf16(
// CHECK: call @moert_unembed_bf16(
// WIDEN-LABEL: func.func @decoder(
// WIDEN-SAME: memref<16x8xf32>
// WIDEN: call @moert_embed(
// WIDEN: call @moert_attention(
// WIDEN: call @moert_unembed(
func.func @decoder(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 4 rope_theta = 1.000000e+04 causal q_norm @qk_norm k_norm @qk_norm : tensor<?x8xf32>, tensor<?xi32>
    %h1 = arith.addf %h0, %a : tensor<?x8xf32>
    %ids, %gates = moe.route %h1, @router top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    %p = moe.plan %ids : tensor<?x1xi32> -> !moe.plan<experts = 2, top_k = 1, tile = 1>
    %y = moe.fused_experts %h1, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 2, top_k = 1, tile = 1>, tensor<?x1xf32>
    %h2 = arith.addf %h1, %y : tensor<?x8xf32>
    moe.yield %h2 : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @embed : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}

// -----

moe.weight @embed : tensor<16x8xf32>
moe.weight @q : tensor<16x8xf32>
moe.weight @k : tensor<8x8xf32>
moe.weight @v : tensor<8x8xf32>
moe.weight @o : tensor<8x16xf32>
moe.weight @qb : tensor<16xf32>
moe.weight @kvb : tensor<8xf32>

// #moe.rope_scaling reaches moert_attention as four arguments (factor, ramp
// low and high, attention factor), then the sliding window, then the q, k,
// v and o biases; without them they are 1, 0, 0, 1, which scale nothing, a
// window of 0, none, and empty buffers.
// CHECK-LABEL: func.func @scaled_rope(
// CHECK-SAME: %[[QB:[^:]*]]: memref<16xf32>, %[[KVB:[^:]*]]: memref<8xf32>)
// CHECK: %[[EMPTY:.*]] = memref.alloc() : memref<0xf32>
// CHECK: %[[FACTOR:.*]] = arith.constant 4.000000e+00 : f32
// CHECK-NEXT: %[[LOW:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[HIGH:.*]] = arith.constant 3.000000e+00 : f32
// CHECK-NEXT: %[[ATTN:.*]] = arith.constant 1.250000e+00 : f32
// CHECK-NEXT: %[[WINDOW:.*]] = arith.constant 6 : i64
// CHECK: %[[Q:.*]] = memref.cast %[[QB]]
// CHECK-NEXT: %[[K:.*]] = memref.cast %[[KVB]]
// CHECK-NEXT: %[[V:.*]] = memref.cast %[[KVB]]
// CHECK-NEXT: %[[NOO:.*]] = memref.cast %[[EMPTY]]
// CHECK: call @moert_attention({{.*}}, %[[FACTOR]], %[[LOW]], %[[HIGH]], %[[ATTN]], %[[WINDOW]], %[[Q]], %[[K]], %[[V]], %[[NOO]]) :
// CHECK: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: %[[ZERO2:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: %[[ONE2:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[NOWINDOW:.*]] = arith.constant 0 : i64
// CHECK-COUNT-4: memref.cast %[[EMPTY]]
// CHECK: call @moert_attention({{.*}}, %[[ONE]], %[[ZERO]], %[[ZERO2]], %[[ONE2]], %[[NOWINDOW]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) :
func.func @scaled_rope(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 rope_scaling<factor = 4.0, ramp = [1.0, 3.0], attention_factor = 1.25> causal sliding_window = 6 q_bias @qb k_bias @kvb v_bias @kvb : tensor<?x8xf32>, tensor<?xi32>
    %b = moe.attention %a, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 causal cache_slot = 1 : tensor<?x8xf32>, tensor<?xi32>
    moe.yield %b : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @embed : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}

// -----

// A dense MLP (moe.mlp): one call; its bf16 weights stay bf16 as one group.
// CHECK: module attributes {moe.host_bf16_weights = array<i64: 1, 2, 3>}
// CHECK-LABEL: func.func @dense(
// CHECK: %[[GELU:.*]] = arith.constant 1 : i32
// CHECK: call @moert_mlp_bf16(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[GELU]]) : (memref<?x?xf32, {{.*}}>, memref<?x?xbf16, {{.*}}>, memref<?x?xbf16, {{.*}}>, memref<?x?xbf16, {{.*}}>, memref<?x?xf32, {{.*}}>, i32) -> ()
// WIDEN-LABEL: func.func @dense(
// WIDEN: call @moert_mlp(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : (memref<?x?xf32, {{.*}}>, memref<?x?xf32, {{.*}}>, memref<?x?xf32, {{.*}}>, memref<?x?xf32, {{.*}}>, memref<?x?xf32, {{.*}}>, i32) -> ()
moe.weight @embed : tensor<16x8xf32>
moe.weight @mlp_gate : tensor<24x8xbf16>
moe.weight @mlp_up : tensor<24x8xbf16>
moe.weight @mlp_down : tensor<8x24xbf16>

func.func @dense(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %y = moe.mlp %h0 gate @mlp_gate up @mlp_up down @mlp_down activation = gelu : tensor<?x8xf32>
    moe.yield %y : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @embed : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>

// A function that uses moe ops is lowered as a model, so one of another form
// is an error naming the pass (not left reading weights the pass erases).
// expected-error @+1 {{convert-moe-to-cpu expects a model function (hidden) -> (hidden, exit_loop), as moe-import emits}}
func.func @plain(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %y = moe.rms_norm %x, @norm : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
