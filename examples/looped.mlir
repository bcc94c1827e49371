// Looped-MoE: a block of 2 MoE layers applied 3 times with shared weights.
// After passes 0 and 1 a token exits when its hidden state stopped moving
// (relative L2 change <= 0.05); exit_loop reports the pass it stopped after.
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
  moe.weight @final_norm : tensor<64xf32> source "model.norm.weight"
  func.func @forward(%hidden: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?xi32>) {
    %h, %exit_loop = moe.loop %hidden passes = 3 : tensor<?x64xf32> -> tensor<?xi32> {
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
      %exits = moe.exit %h2, %h0 criterion = relative_l2 threshold = 5.000000e-02 : tensor<?x64xf32> -> tensor<?xi1>
      moe.yield %h2, %exits : tensor<?x64xf32>, tensor<?xi1>
    }
    %out = moe.rms_norm %h, @final_norm : tensor<?x64xf32>
    return %out, %exit_loop : tensor<?x64xf32>, tensor<?xi32>
  }
}
