// RUN: moe-opt %s | FileCheck %s
// Custom form round trip: printing and re-parsing gives the same IR.
// RUN: moe-opt %s | moe-opt | FileCheck %s
// Generic form round trip.
// RUN: moe-opt %s -mlir-print-op-generic | moe-opt | FileCheck %s

// CHECK: moe.weight @norm : tensor<16xf32> source "model.layers.0.post_attention_layernorm.weight"
moe.weight @norm : tensor<16xf32> source "model.layers.0.post_attention_layernorm.weight"
// CHECK: moe.weight @router : tensor<4x16xf32>{{$}}
moe.weight @router : tensor<4x16xf32>
moe.weight @router2 : tensor<4x16xf32>
// CHECK: moe.weight @gate : tensor<4x32x16xbf16> source "model.layers.0.mlp.experts.{e}.gate_proj.weight"
moe.weight @gate : tensor<4x32x16xbf16> source "model.layers.0.mlp.experts.{e}.gate_proj.weight"
moe.weight @up : tensor<4x32x16xbf16>
moe.weight @down : tensor<4x16x32xbf16>
moe.weight @embed : tensor<100x16xf32>
moe.weight @lm_head : tensor<100x16xf32>
moe.weight @wq : tensor<16x16xf32>
moe.weight @wk : tensor<8x16xf32>
moe.weight @wv : tensor<8x16xf32>
moe.weight @wo : tensor<16x16xf32>
moe.weight @qn : tensor<4xf32>
// LoopLM stores expert weights [E, in, out]: bound transposed.
// CHECK: moe.weight @w1 : tensor<4x32x16xf32> source "model.stack.layers.0.experts_w1" transposed{{$}}
moe.weight @w1 : tensor<4x32x16xf32> source "model.stack.layers.0.experts_w1" transposed
moe.weight @dense_gate : tensor<24x16xf32>
moe.weight @bias16 : tensor<16xf32>
moe.weight @dense_down : tensor<16x24xf32>

// CHECK-LABEL: func.func @layer
func.func @layer(%h: tensor<?x16xf32>) -> tensor<?x16xf32> {
  // CHECK: %[[N:.*]] = moe.rms_norm %{{.*}}, @norm : tensor<?x16xf32>
  %n = moe.rms_norm %h, @norm : tensor<?x16xf32>
  // CHECK: moe.rms_norm %[[N]], @norm eps = 2.500000e-01 : tensor<?x16xf32>
  %n2 = moe.rms_norm %n, @norm eps = 0.25 : tensor<?x16xf32>
  // Defaults (softmax, no normalize, scaling 1, per_layer) are not printed.
  // CHECK: %[[IDS:.*]], %[[GATES:.*]] = moe.route %[[N]], @router top_k = 2 : tensor<?x16xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %ids, %gates = moe.route %n, @router top_k = 2 : tensor<?x16xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: moe.route %[[N]], @router2 top_k = 2 scoring = sigmoid normalize scaling = 2.500000e+00 decision = block : tensor<?x16xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %ids2, %gates2 = moe.route %n, @router2 top_k = 2 scoring = sigmoid normalize scaling = 2.5 decision = block : tensor<?x16xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: %[[Y:.*]] = moe.experts %[[N]], %[[IDS]], %[[GATES]] gate @gate up @up down @down : tensor<?x16xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  %y = moe.experts %n, %ids, %gates gate @gate up @up down @down : tensor<?x16xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: moe.experts {{.*}} activation = gelu : tensor<?x16xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  %y2 = moe.experts %n2, %ids2, %gates2 gate @gate up @up down @down activation = gelu : tensor<?x16xf32>, tensor<?x2xi32>, tensor<?x2xf32>
  %s = arith.addf %y, %y2 : tensor<?x16xf32>
  // A dense MLP (no experts).
  // CHECK: moe.mlp %{{.*}} gate @dense_gate up @dense_gate down @dense_down : tensor<?x16xf32>
  %m = moe.mlp %s gate @dense_gate up @dense_gate down @dense_down : tensor<?x16xf32>
  // CHECK: moe.mlp {{.*}} activation = gelu : tensor<?x16xf32>
  %m2 = moe.mlp %m gate @dense_gate up @dense_gate down @dense_down activation = gelu : tensor<?x16xf32>
  return %m2 : tensor<?x16xf32>
}

// CHECK-LABEL: func.func @looped
func.func @looped(%x: tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>) {
  // CHECK: moe.loop %{{.*}} passes = 3 mode = resident : tensor<8x16xf32> -> tensor<8xi32> {
  // CHECK-NEXT: ^bb0(%[[H:.*]]: tensor<8x16xf32>):
  %h, %exit = moe.loop %x passes = 3 mode = resident : tensor<8x16xf32> -> tensor<8xi32> {
  ^bb0(%h0: tensor<8x16xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<8x16xf32>
    %ids, %gates = moe.route %n, @router top_k = 2 : tensor<8x16xf32> -> tensor<8x2xi32>, tensor<8x2xf32>
    %y = moe.experts %n, %ids, %gates gate @gate up @up down @down : tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>
    %h1 = arith.addf %h0, %y : tensor<8x16xf32>
    // CHECK: %[[M:.*]] = moe.exit %[[H1:.*]], %[[H]] criterion = relative_l2 threshold = 5.000000e-02 min_passes = 2 : tensor<8x16xf32> -> tensor<8xi1>
    %m = moe.exit %h1, %h0 criterion = relative_l2 threshold = 0.05 min_passes = 2 : tensor<8x16xf32> -> tensor<8xi1>
    // CHECK: moe.yield %[[H1]], %[[M]] : tensor<8x16xf32>, tensor<8xi1>
    moe.yield %h1, %m : tensor<8x16xf32>, tensor<8xi1>
  }
  return %h, %exit : tensor<8x16xf32>, tensor<8xi32>
}

// The default mode (auto) is not printed; a loop without an exit yields only
// the hidden state.
// CHECK-LABEL: func.func @loop_no_exit
func.func @loop_no_exit(%x: tensor<?x16xf32>) -> tensor<?x16xf32> {
  // CHECK: moe.loop %{{.*}} passes = 2 : tensor<?x16xf32> -> tensor<?xi32> {
  %h, %exit = moe.loop %x passes = 2 : tensor<?x16xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x16xf32>):
    // CHECK: moe.yield %{{.*}} : tensor<?x16xf32>
    moe.yield %h0 : tensor<?x16xf32>
  }
  return %h : tensor<?x16xf32>
}

// CHECK-LABEL: func.func @lm_exit
func.func @lm_exit(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %h, %exit = moe.loop %x passes = 4 mode = unroll : tensor<4x16xf32> -> tensor<4xi32> {
  ^bb0(%h0: tensor<4x16xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<4x16xf32>
    // CHECK: moe.exit {{.*}} criterion = entropy threshold = 5.000000e-01 lm_head @lm_head : tensor<4x16xf32> -> tensor<4xi1>
    %m = moe.exit %h1, %h0 criterion = entropy threshold = 0.5 lm_head @lm_head : tensor<4x16xf32> -> tensor<4xi1>
    moe.yield %h1, %m : tensor<4x16xf32>, tensor<4xi1>
  }
  return %h : tensor<4x16xf32>
}

// CHECK-LABEL: func.func @lm_exit_unit_norm
func.func @lm_exit_unit_norm(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %h, %exit = moe.loop %x passes = 2 mode = unroll : tensor<4x16xf32> -> tensor<4xi32> {
  ^bb0(%h0: tensor<4x16xf32>):
    %h1 = moe.rms_norm %h0 : tensor<4x16xf32>
    // CHECK: moe.exit {{.*}} criterion = max_prob threshold = 5.000000e-01 lm_head @lm_head lm_norm_unit lm_norm_eps = 9.99999974E-6 : tensor<4x16xf32> -> tensor<4xi1>
    %m = moe.exit %h1, %h0 criterion = max_prob threshold = 0.5 lm_head @lm_head lm_norm_unit lm_norm_eps = 1.0e-5 : tensor<4x16xf32> -> tensor<4xi1>
    moe.yield %h1, %m : tensor<4x16xf32>, tensor<4xi1>
  }
  return %h : tensor<4x16xf32>
}

// CHECK-LABEL: func.func @decoder
func.func @decoder(%tokens: tensor<?xi32>, %pos: tensor<?xi32>) -> tensor<?x100xf32> {
  // CHECK: %[[E:.*]] = moe.embed %{{.*}}, @embed : tensor<?xi32> -> tensor<?x16xf32>
  %e = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x16xf32>
  // CHECK: moe.attention %[[E]], %{{.*}} q @wq k @wk v @wv o @wo heads = 4 kv_heads = 2 head_dim = 4 rope_theta = 1.000000e+06 causal q_norm @qn k_norm @qn clip_qkv = 8.000000e+00 cache_slot = 3 : tensor<?x16xf32>, tensor<?xi32>
  %a = moe.attention %e, %pos q @wq k @wk v @wv o @wo heads = 4 kv_heads = 2 head_dim = 4 rope_theta = 1.0e6 causal q_norm @qn k_norm @qn clip_qkv = 8.0 cache_slot = 3 : tensor<?x16xf32>, tensor<?xi32>
  // CHECK: moe.attention {{.*}} head_dim = 4 causal q_bias @bias16 k_bias @bias16 v_bias @bias16 o_bias @bias16 cache_slot = 6 :
  %bb = moe.attention %a, %pos q @wq k @wq v @wq o @wo heads = 4 kv_heads = 4 head_dim = 4 causal q_bias @bias16 k_bias @bias16 v_bias @bias16 o_bias @bias16 cache_slot = 6 : tensor<?x16xf32>, tensor<?xi32>
  // CHECK: moe.attention {{.*}} heads = 4 kv_heads = 4 head_dim = 4 : tensor<?x16xf32>, tensor<?xi32>
  %b = moe.attention %bb, %pos q @wq k @wq v @wq o @wo heads = 4 kv_heads = 4 head_dim = 4 : tensor<?x16xf32>, tensor<?xi32>
  // Scaled RoPE: YaRN (a ramp, an attention factor, here with a sliding
  // window) and linear (neither).
  // CHECK: moe.attention {{.*}} head_dim = 4 rope_scaling<factor = 4.000000e+00, ramp = [1.000000e+00, 2.500000e+00], attention_factor = 1.250000e+00> causal sliding_window = 8 cache_slot = 4 :
  %y = moe.attention %b, %pos q @wq k @wq v @wq o @wo heads = 4 kv_heads = 4 head_dim = 4 rope_scaling<factor = 4.0, ramp = [1.0, 2.5], attention_factor = 1.25> causal sliding_window = 8 cache_slot = 4 : tensor<?x16xf32>, tensor<?xi32>
  // CHECK: moe.attention {{.*}} head_dim = 4 rope_theta = 5.000000e+05 rope_scaling<factor = 2.000000e+00> cache_slot = 5 :
  %z = moe.attention %y, %pos q @wq k @wq v @wq o @wo heads = 4 kv_heads = 4 head_dim = 4 rope_theta = 5.0e5 rope_scaling<factor = 2.0, attention_factor = 1.0> cache_slot = 5 : tensor<?x16xf32>, tensor<?xi32>
  // LoopLM: gain-less norms, interleaved RoPE, scores scaled by 1/head_dim.
  // CHECK: %[[N:.*]] = moe.rms_norm %{{.*}} eps = 9.99999974E-6 : tensor<?x16xf32>
  %n = moe.rms_norm %z eps = 1.0e-5 : tensor<?x16xf32>
  // CHECK: moe.attention %[[N]], %{{.*}} head_dim = 4 rope_interleaved scale = 2.500000e-01 causal cache_slot = 1 : tensor<?x16xf32>, tensor<?xi32>
  %c = moe.attention %n, %pos q @wq k @wq v @wq o @wo heads = 4 kv_heads = 4 head_dim = 4 rope_interleaved scale = 0.25 causal cache_slot = 1 : tensor<?x16xf32>, tensor<?xi32>
  // CHECK: moe.unembed %{{.*}}, @lm_head : tensor<?x16xf32> -> tensor<?x100xf32>
  %l = moe.unembed %c, @lm_head : tensor<?x16xf32> -> tensor<?x100xf32>
  return %l : tensor<?x100xf32>
}

// Kernel level.
// CHECK-LABEL: func.func @kernel_level
func.func @kernel_level(%x: tensor<?x16xf32>, %ids: tensor<?x2xi32>, %g: tensor<?x2xf32>) -> tensor<?x16xf32> {
  // CHECK: %[[P:.*]] = moe.plan %{{.*}} : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
  // CHECK: %[[D:.*]] = moe.dispatch %{{.*}}, %[[P]] : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  %d = moe.dispatch %x, %p : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  // CHECK: moe.grouped_matmul %[[D]], %[[P]], @gate : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x32xf32>
  %a = moe.grouped_matmul %d, %p, @gate : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x32xf32>
  %b = moe.grouped_matmul %d, %p, @up : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x32xf32>
  // CHECK: moe.glu %{{.*}}, %{{.*}} activation = gelu : tensor<?x32xf32>
  %h = moe.glu %a, %b activation = gelu : tensor<?x32xf32>
  %y = moe.grouped_matmul %h, %p, @down : tensor<?x32xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16> -> tensor<?x16xf32>
  // CHECK: moe.combine %{{.*}}, %[[P]], %{{.*}} : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32> -> tensor<?x16xf32>
  %c = moe.combine %y, %p, %g : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32> -> tensor<?x16xf32>
  // CHECK: moe.fused_experts %{{.*}}, %[[P]], %{{.*}} gate @gate up @up down @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
  %f = moe.fused_experts %c, %p, %g gate @gate up @up down @down : tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
  return %f : tensor<?x16xf32>
}

// CHECK-LABEL: func.func @compacting_loop
func.func @compacting_loop(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  // CHECK: moe.loop %{{.*}} passes = 2 mode = unroll compact_exits : tensor<4x16xf32> -> tensor<4xi32>
  %h, %exit = moe.loop %x passes = 2 mode = unroll compact_exits : tensor<4x16xf32> -> tensor<4xi32> {
  ^bb0(%h0: tensor<4x16xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<4x16xf32>
    %m = moe.exit %h1, %h0 criterion = cosine threshold = 0.5 : tensor<4x16xf32> -> tensor<4xi1>
    moe.yield %h1, %m : tensor<4x16xf32>, tensor<4xi1>
  }
  return %h : tensor<4x16xf32>
}
