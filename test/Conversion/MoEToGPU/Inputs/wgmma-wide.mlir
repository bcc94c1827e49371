// A moe_stack layer with bf16 weights whose down GEMM (512 columns) gets
// warpgroup tiles 128 columns wide (d = 512, f = 128), for the wgmma tests.
moe.weight @router : tensor<4x512xf32>
moe.weight @gate : tensor<4x128x512xbf16>
moe.weight @up : tensor<4x128x512xbf16>
moe.weight @down : tensor<4x512x128xbf16>
func.func @wide(%x: tensor<?x512xf32>) -> (tensor<?x512xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x512xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x512xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x512xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 1>
    %y = moe.fused_experts %h0, %p, %gates gate @gate up @up down @down : tensor<?x512xf32>, !moe.plan<experts = 4, top_k = 2, tile = 1>, tensor<?x2xf32>
    moe.yield %y : tensor<?x512xf32>
  }
  return %h, %exit : tensor<?x512xf32>, tensor<?xi32>
}
