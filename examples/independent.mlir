// Baseline: 4 MoE layers, each with its own router (independent routing).
// d = 64, f = 128, 8 experts, top-2, softmax.
module attributes {moe.model_type = "moe_stack"} {
  moe.weight @l0_norm : tensor<64xf32> source "model.layers.0.post_attention_layernorm.weight"
  moe.weight @l0_router : tensor<8x64xf32> source "model.layers.0.mlp.gate.weight"
  moe.weight @l0_gate : tensor<8x128x64xf32> source "model.layers.0.mlp.experts.{e}.gate_proj.weight"
  moe.weight @l0_up : tensor<8x128x64xf32> source "model.layers.0.mlp.experts.{e}.up_proj.weight"
  moe.weight @l0_down : tensor<8x64x128xf32> source "model.layers.0.mlp.experts.{e}.down_proj.weight"
  moe.weight @l1_norm : tensor<64xf32> source "model.layers.1.post_attention_layernorm.weight"
  moe.weight @l1_router : tensor<8x64xf32> source "model.layers.1.mlp.gate.weight"
  moe.weight @l1_gate : tensor<8x128x64xf32> source "model.layers.1.mlp.experts.{e}.gate_proj.weight"
  moe.weight @l1_up : tensor<8x128x64xf32> source "model.layers.1.mlp.experts.{e}.up_proj.weight"
  moe.weight @l1_down : tensor<8x64x128xf32> source "model.layers.1.mlp.experts.{e}.down_proj.weight"
  moe.weight @l2_norm : tensor<64xf32> source "model.layers.2.post_attention_layernorm.weight"
  moe.weight @l2_router : tensor<8x64xf32> source "model.layers.2.mlp.gate.weight"
  moe.weight @l2_gate : tensor<8x128x64xf32> source "model.layers.2.mlp.experts.{e}.gate_proj.weight"
  moe.weight @l2_up : tensor<8x128x64xf32> source "model.layers.2.mlp.experts.{e}.up_proj.weight"
  moe.weight @l2_down : tensor<8x64x128xf32> source "model.layers.2.mlp.experts.{e}.down_proj.weight"
  moe.weight @l3_norm : tensor<64xf32> source "model.layers.3.post_attention_layernorm.weight"
  moe.weight @l3_router : tensor<8x64xf32> source "model.layers.3.mlp.gate.weight"
  moe.weight @l3_gate : tensor<8x128x64xf32> source "model.layers.3.mlp.experts.{e}.gate_proj.weight"
  moe.weight @l3_up : tensor<8x128x64xf32> source "model.layers.3.mlp.experts.{e}.up_proj.weight"
  moe.weight @l3_down : tensor<8x64x128xf32> source "model.layers.3.mlp.experts.{e}.down_proj.weight"
  moe.weight @final_norm : tensor<64xf32> source "model.norm.weight"
  func.func @forward(%hidden: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?xi32>) {
    %h, %exit_loop = moe.loop %hidden passes = 1 : tensor<?x64xf32> -> tensor<?xi32> {
    ^bb0(%h0: tensor<?x64xf32>):
      // layer 0
      %n0 = moe.rms_norm %h0, @l0_norm : tensor<?x64xf32>
      %ids0, %gates0 = moe.route %n0, @l0_router top_k = 2 : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
      %y0 = moe.experts %n0, %ids0, %gates0 gate @l0_gate up @l0_up down @l0_down : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32>
      %h1 = arith.addf %h0, %y0 : tensor<?x64xf32>
      // layer 1
      %n1 = moe.rms_norm %h1, @l1_norm : tensor<?x64xf32>
      %ids1, %gates1 = moe.route %n1, @l1_router top_k = 2 : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
      %y1 = moe.experts %n1, %ids1, %gates1 gate @l1_gate up @l1_up down @l1_down : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32>
      %h2 = arith.addf %h1, %y1 : tensor<?x64xf32>
      // layer 2
      %n2 = moe.rms_norm %h2, @l2_norm : tensor<?x64xf32>
      %ids2, %gates2 = moe.route %n2, @l2_router top_k = 2 : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
      %y2 = moe.experts %n2, %ids2, %gates2 gate @l2_gate up @l2_up down @l2_down : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32>
      %h3 = arith.addf %h2, %y2 : tensor<?x64xf32>
      // layer 3
      %n3 = moe.rms_norm %h3, @l3_norm : tensor<?x64xf32>
      %ids3, %gates3 = moe.route %n3, @l3_router top_k = 2 : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
      %y3 = moe.experts %n3, %ids3, %gates3 gate @l3_gate up @l3_up down @l3_down : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32>
      %h4 = arith.addf %h3, %y3 : tensor<?x64xf32>
      moe.yield %h4 : tensor<?x64xf32>
    }
    %out = moe.rms_norm %h, @final_norm : tensor<?x64xf32>
    return %out, %exit_loop : tensor<?x64xf32>, tensor<?xi32>
  }
}
