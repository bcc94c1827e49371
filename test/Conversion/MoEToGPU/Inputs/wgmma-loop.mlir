// A resident pass loop whose expert GEMMs divide into warpgroup tiles
// (d = 64, f = 128), for the wgmma tests.
moe.weight @router : tensor<4x64xf32>
moe.weight @gate : tensor<4x128x64xbf16>
moe.weight @up : tensor<4x128x64xbf16>
moe.weight @down : tensor<4x64x128xbf16>
func.func @looped(%x: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 mode = resident compact_exits : tensor<?x64xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x64xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 1>
    %y = moe.fused_experts %h0, %p, %gates gate @gate up @up down @down : tensor<?x64xf32>, !moe.plan<experts = 4, top_k = 2, tile = 1>, tensor<?x2xf32>
    %h1 = arith.addf %h0, %y : tensor<?x64xf32>
    %m = moe.exit %h1, %h0 criterion = cosine threshold = 0.99 : tensor<?x64xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x64xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x64xf32>, tensor<?xi32>
}
