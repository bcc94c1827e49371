// RUN: moe-opt %s -split-input-file -verify-diagnostics -allow-unregistered-dialect

// One case per verifier rule, in generic form so that the verifier, not the
// custom parser, sees the bad IR.

// A weight's source must not be empty.
"builtin.module"() ({
    // expected-error @+1 {{'moe.weight' op source must not be empty; omit it to bind the weight by its symbol name}}
  "moe.weight"() <{source = "", sym_name = "w", type = tensor<4xf32>}> : () -> ()
}) : () -> ()

// -----

// '{e}' stacks experts, so the weight needs a leading expert dimension.
"builtin.module"() ({
    // expected-error @+1 {{'moe.weight' op source with '{e}' stacks experts along the first dimension, so the weight needs rank >= 2}}
  "moe.weight"() <{source = "experts.{e}.w", sym_name = "w", type = tensor<4xf32>}> : () -> ()
}) : () -> ()

// -----

// Weights have static shapes.
"builtin.module"() ({
    // expected-error @+1 {{'moe.weight' op attribute 'type' failed to satisfy constraint: type attribute of statically shaped tensor of 32-bit float or bfloat16 type or 16-bit float values}}
  "moe.weight"() <{sym_name = "w", type = tensor<?x4xf32>}> : () -> ()
}) : () -> ()

// -----

// eps must be positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.rms_norm' op eps must be positive}}
    %n = "moe.rms_norm"(%h) <{eps = 0.0 : f32, weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A norm weight must name a moe.weight.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.rms_norm' op norm weight @f does not name a moe.weight}}
    %n = "moe.rms_norm"(%h) <{weight = @f}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The norm weight has the hidden size.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.rms_norm' op norm weight @router must have shape [hidden] = [16], but it has [4, 16]}}
    %n = "moe.rms_norm"(%h) <{weight = @router}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Activations are rank-2 [tokens, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%v: tensor<16xf32>):
    // expected-error @+1 {{'moe.rms_norm' op operand #0 must be 2D tensor of 32-bit float or bfloat16 type or 16-bit float values, but got 'tensor<16xf32>'}}
    %n = "moe.rms_norm"(%v) <{weight = @norm}> : (tensor<16xf32>) -> tensor<16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// top_k is at least 1.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op top_k must be at least 1, got 0}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 0 : i64}> : (tensor<8x16xf32>) -> (tensor<8x0xi32>, tensor<8x0xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// ids are [tokens, top_k].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op ids must have shape [tokens, top_k] = [8, 2], but it has [8, 3]}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x3xi32>, tensor<8x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// gates are [tokens, top_k].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op gates must have shape [tokens, top_k] = [8, 2], but it has [4, 2]}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<4x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// scaling must be positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op scaling must be positive}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64, scaling = -1.0 : f32}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The router is [experts, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op router @gate must have shape [experts, hidden] = [?, 16], but it has [4, 32, 16]}}
    %i, %g = "moe.route"(%h) <{router = @gate, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The router must be a weight.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op router @nothing does not name a moe.weight}}
    %i, %g = "moe.route"(%h) <{router = @nothing, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// top_k cannot exceed the router's experts.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op top_k = 5 exceeds the 4 experts of router @router}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 5 : i64}> : (tensor<8x16xf32>) -> (tensor<8x5xi32>, tensor<8x5xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Routes sharing a router agree on top_k and scoring.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.route' op routes sharing router @router must agree on top_k and scoring}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-note @+1 {{other route of the router is here}}
    %i2, %g2 = "moe.route"(%h) <{router = @router, top_k = 1 : i64}> : (tensor<8x16xf32>) -> (tensor<8x1xi32>, tensor<8x1xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Unknown scoring functions are rejected by the parser.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+2 {{expected ::mlir::moe::ScoringFunc to be one of: softmax, sigmoid}}
    // expected-error @+1 {{failed to parse MoE_ScoringFuncAttr parameter 'value' which is to be a `::mlir::moe::ScoringFunc`}}
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64, scoring = #moe<scoring tanh>}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// ids and gates have the same shape.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x1xf32>
    // expected-error @+1 {{'moe.experts' op ids [8, 2] and gates [8, 1] must have the same shape [tokens, top_k]}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x1xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// ids route the input's tokens.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<4x2xi32>
    %g = "test.gates"() : () -> tensor<4x2xf32>
    // expected-error @+1 {{'moe.experts' op ids route 4 tokens, but the input has 8}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// gate_proj is [experts, ffn, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op gate_proj @router must have shape [experts, ffn, hidden] = [?, ?, 16], but it has [4, 16]}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @router, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// gate_proj's hidden size matches the input.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op gate_proj @down must have shape [experts, ffn, hidden] = [4, 16, 16], but it has [4, 16, 32]}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @down, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// up_proj matches gate_proj.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op up_proj @down must have shape [experts, ffn, hidden] = [4, 32, 16], but it has [4, 16, 32]}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @down}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// down_proj is [experts, hidden, ffn].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op down_proj @up must have shape [experts, hidden, ffn] = [4, 16, 32], but it has [4, 32, 16]}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @up, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A weight symbol must name a moe.weight.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op gate_proj @f does not name a moe.weight}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @f, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// top_k cannot exceed the group's experts.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x5xi32>
    %g = "test.gates"() : () -> tensor<8x5xf32>
    // expected-error @+1 {{'moe.experts' op routes top_k = 5 experts per token, but the group has only 4}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x5xi32>, tensor<8x5xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Expert ids index the group, so its router has as many experts.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router8", type = tensor<8x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i, %g = "moe.route"(%h) <{router = @router8, top_k = 2 : i64}> : (tensor<8x16xf32>) -> (tensor<8x2xi32>, tensor<8x2xf32>)
    // expected-error @+1 {{'moe.experts' op has 4 experts, but its ids come from router @router8 over 8}}
    %y = "moe.experts"(%h, %i, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A loop runs at least one pass.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.loop' op passes must be at least 1, got 0}}
    %r:2 = "moe.loop"(%h) <{passes = 0 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      "moe.yield"(%h0) : (tensor<8x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// exit_loop has one entry per token.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.loop' op exit_loop must have one entry per token (8), but it has 4}}
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      "moe.yield"(%h0) : (tensor<8x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<4xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The body takes the hidden state.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.loop' op body must take one argument, the hidden state 'tensor<8x16xf32>'}}
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xbf16>):
      "moe.yield"(%h) : (tensor<8x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The body yields the hidden state.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      // expected-error @+1 {{'moe.yield' op must yield the hidden state and, optionally, an exit mask}}
      "moe.yield"() : () -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The yielded state has the carried type.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %c = "test.state"() : () -> tensor<4x16xf32>
      // expected-error @+1 {{'moe.yield' op yields hidden state 'tensor<4x16xf32>', but the loop carries 'tensor<8x16xf32>'}}
      "moe.yield"(%c) : (tensor<4x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The second yielded value is an exit mask from moe.exit.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %m = "test.mask"() : () -> tensor<8xi1>
      // expected-error @+1 {{'moe.yield' op second operand must be the exit mask of a moe.exit in this body}}
      "moe.yield"(%h0, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// moe.yield belongs to moe.loop.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.yield' op expects parent op 'moe.loop'}}
    "moe.yield"(%h) : (tensor<8x16xf32>) -> ()
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Exits live inside loops.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.exit' op expects parent op 'moe.loop'}}
    %m = "moe.exit"(%h, %h) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// An exit compares with the state at the start of the pass.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op previous must be the loop body's argument (the hidden state at the start of the pass)}}
      %m = "moe.exit"(%h1, %h1) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// An exit tests the state the pass yields (a loop boundary).
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op hidden must be the state the loop body yields: exits are only allowed at loop pass boundaries}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      %h2 = "moe.rms_norm"(%h1) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      "moe.yield"(%h2, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The exit mask is only yielded.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op exit mask may only be yielded by the loop body: exits are only allowed at loop pass boundaries}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "test.use"(%m) : (tensor<8xi1>) -> ()
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// min_passes is at least 1.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op min_passes must be at least 1, got 0}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32, min_passes = 0 : i64}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// An exit that can never fire is rejected.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op min_passes = 3 leaves no pass boundary to exit at in a loop of 3 passes}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32, min_passes = 3 : i64}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// cosine thresholds lie in [-1, 1].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op cosine threshold must be in [-1, 1], got 1.5}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 1.5 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// relative_l2 thresholds are non-negative.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op relative_l2 threshold must be non-negative, got -0.5}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion relative_l2>, threshold = -0.5 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// max_prob thresholds lie in [0, 1].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "head", type = tensor<100x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op max_prob threshold must be in [0, 1], got 2}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion max_prob>, threshold = 2.0 : f32, lm_head = @head}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// entropy thresholds are non-negative.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "head", type = tensor<100x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op entropy threshold must be non-negative, got -1}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion entropy>, threshold = -1.0 : f32, lm_head = @head}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// LM-head criteria need the head.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op criterion max_prob tests the LM head's distribution and needs lm_head}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion max_prob>, threshold = 0.5 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Hidden-state criteria take no head.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "head", type = tensor<100x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op criterion cosine tests hidden states and takes no lm_head}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32, lm_head = @head}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The LM head is [vocab, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op lm_head @gate must have shape [vocab, hidden] = [?, 16], but it has [4, 32, 16]}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion entropy>, threshold = 1.0 : f32, lm_head = @gate}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Unknown exit criteria are rejected by the parser.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) <{weight = @norm}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+2 {{expected ::mlir::moe::ExitCriterion to be one of: cosine, relative_l2, max_prob, entropy}}
      // expected-error @+1 {{failed to parse MoE_ExitCriterionAttr parameter 'value' which is to be a `::mlir::moe::ExitCriterion`}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion kl>, threshold = 0.9 : f32}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// An embedding gives one row per token.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%t: tensor<8xi32>):
    // expected-error @+1 {{'moe.embed' op result must have one row per token}}
    %e = "moe.embed"(%t) <{table = @embed}> : (tensor<8xi32>) -> tensor<4x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The embedding table is [vocab, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%t: tensor<8xi32>):
    // expected-error @+1 {{'moe.embed' op table @embed must have shape [vocab, hidden] = [?, 32], but it has [100, 16]}}
    %e = "moe.embed"(%t) <{table = @embed}> : (tensor<8xi32>) -> tensor<8x32xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Logits have one row per token.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.unembed' op logits must have one row per token}}
    %l = "moe.unembed"(%h) <{lm_head = @embed}> : (tensor<8x16xf32>) -> tensor<4x100xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The LM head is [vocab, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.unembed' op lm_head @embed must have shape [vocab, hidden] = [50, 16], but it has [100, 16]}}
    %l = "moe.unembed"(%h) <{lm_head = @embed}> : (tensor<8x16xf32>) -> tensor<8x50xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Head counts are positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op heads, kv_heads and head_dim must be at least 1}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 0 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// GQA needs heads to be a multiple of kv_heads.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op heads = 4 must be a multiple of kv_heads = 3 (grouped-query attention)}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 3 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// KV cache slots are non-negative.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op cache_slot must be non-negative}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, cache_slot = -1 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// clip_qkv is positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op clip_qkv must be positive}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, clip_qkv = 0.0 : f32}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// rope_theta is positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op rope_theta must be positive}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, rope_theta = 0.0 : f32}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Positions have one entry per token.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<4xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<4xi32>):
    // expected-error @+1 {{'moe.attention' op positions must have one entry per token}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<4xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// q_proj is [heads * head_dim, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op q_proj @wkv must have shape [heads * head_dim, hidden] = [16, 16], but it has [8, 16]}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wkv, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// k_proj is [kv_heads * head_dim, hidden].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op k_proj @wq must have shape [kv_heads * head_dim, hidden] = [8, 16], but it has [16, 16]}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wq, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// o_proj is [hidden, heads * head_dim].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op o_proj @wkv must have shape [hidden, heads * head_dim] = [16, 16], but it has [8, 16]}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wkv, q_proj = @wq, v_proj = @wkv}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// q_norm is [head_dim] or the full projection width.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op q_norm @wq must have shape [head_dim] = [4] (per head) or [16] (full width), but it has [16, 16]}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, q_norm = @wq}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// q_norm and k_norm come together.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op q_norm and k_norm come together}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, q_norm = @qn}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A plan picks top_k of its experts.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    // expected-error @+1 {{plan top_k = 5 exceeds its 4 experts}}
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 5, tile = 16>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A plan's top_k is the ids'.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    // expected-error @+1 {{'moe.plan' op ids have top_k = 2, but the plan is for top_k = 3}}
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 3, tile = 16>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// dispatch keeps the row width.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    // expected-error @+1 {{'moe.dispatch' op result rows have 8 columns, but the input rows have 16}}
    %d = "moe.dispatch"(%h, %p) : (tensor<8x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>) -> tensor<?x8xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A grouped GEMM's weight is [experts, out, in].
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %d = "moe.dispatch"(%h, %p) : (tensor<8x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>) -> tensor<?x16xf32>
    // expected-error @+1 {{'moe.grouped_matmul' op weight @down must have shape [experts, out, in] = [4, 32, 16], but it has [4, 16, 32]}}
    %y = "moe.grouped_matmul"(%d, %p) <{weight = @down}> : (tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>) -> tensor<?x32xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// combine's gates have the plan's top_k.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %y = "test.rows"() : () -> tensor<?x16xf32>
    %g1 = "test.gates1"() : () -> tensor<8x1xf32>
    // expected-error @+1 {{'moe.combine' op gates have top_k = 1, but the plan is for top_k = 2}}
    %c = "moe.combine"(%y, %p, %g1) : (tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<8x1xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// combine gives one row per token.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %y = "test.rows"() : () -> tensor<?x16xf32>
    // expected-error @+1 {{'moe.combine' op result must have one row per token of the gates}}
    %c = "moe.combine"(%y, %p, %g) : (tensor<?x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<8x2xf32>) -> tensor<4x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A fused group's gates route its input's tokens.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<4x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    // expected-error @+1 {{'moe.fused_experts' op gates route 4 tokens, but the input has 8}}
    %f = "moe.fused_experts"(%h, %p, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<4x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A fused group's weights match its plan's experts.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %i = "test.ids"() : () -> tensor<8x2xi32>
    %g = "test.gates"() : () -> tensor<8x2xf32>
    %p = "moe.plan"(%i) : (tensor<8x2xi32>) -> !moe.plan<experts = 8, top_k = 2, tile = 16>
    // expected-error @+1 {{'moe.fused_experts' op gate_proj @gate must have shape [experts, ffn, hidden] = [8, ?, 16], but it has [4, 32, 16]}}
    %f = "moe.fused_experts"(%h, %p, %g) <{down_proj = @down, gate_proj = @gate, up_proj = @up}> : (tensor<8x16xf32>, !moe.plan<experts = 8, top_k = 2, tile = 16>, tensor<8x2xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Compaction needs an exit.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.loop' op compact_exits needs an exit in the loop body}}
    %r:2 = "moe.loop"(%h) <{compact_exits, passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      "moe.yield"(%h0) : (tensor<8x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A loop body's attention ops use cache slots 0, 1, ... once each.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %p = "test.positions"() : () -> tensor<8xi32>
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      // expected-error @+1 {{'moe.attention' op cache_slot = 1: the attention ops of a loop body must use cache slots 0, 1, ... once each}}
      %a = "moe.attention"(%h0, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, cache_slot = 1 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
      "moe.yield"(%h0) : (tensor<8x16xf32>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A transposed weight must be a matrix (after the '{e}' dimension).
"builtin.module"() ({
  // expected-error @+1 {{'moe.weight' op transposed swaps the last two dimensions of the stored tensor, so it needs a matrix (rank >= 2, after the '{e}' dimension)}}
  "moe.weight"() <{sym_name = "w", type = tensor<4x16xf32>, source = "experts.{e}.norm", transposed}> : () -> ()
}) : () -> ()

// -----

// The attention scale is positive.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op scale must be positive and finite}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, scale = 0.0 : f32, rope_interleaved}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Attentions outside a loop (LoopLM head and tail layers) need distinct slots.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op cache_slot = 1 is also used by another attention outside the loop; each needs its own KV cache slot}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, cache_slot = 1 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    %b = "moe.attention"(%a, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, cache_slot = 1 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A gain-less LM-head norm excludes an lm_norm weight.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "head", type = tensor<100x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op lm_norm_unit (a norm without gain) and an lm_norm weight exclude each other}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion max_prob>, threshold = 0.5 : f32, lm_head = @head, lm_norm = @norm, lm_norm_unit}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// lm_norm_unit belongs to the LM-head criteria.
"builtin.module"() ({
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    %r:2 = "moe.loop"(%h) <{passes = 3 : i64}> ({
    ^bb0(%h0: tensor<8x16xf32>):
      %h1 = "moe.rms_norm"(%h0) : (tensor<8x16xf32>) -> tensor<8x16xf32>
      // expected-error @+1 {{'moe.exit' op lm_norm belongs to the LM-head criteria (max_prob, entropy)}}
      %m = "moe.exit"(%h1, %h0) <{criterion = #moe<criterion cosine>, threshold = 0.9 : f32, lm_norm_unit}> : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8xi1>
      "moe.yield"(%h1, %m) : (tensor<8x16xf32>, tensor<8xi1>) -> ()
    }) : (tensor<8x16xf32>) -> (tensor<8x16xf32>, tensor<8xi32>)
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// #moe.rope_scaling: a positive factor,
// expected-error @+1 {{rope_scaling factor must be positive and finite}}
"test.op"() {scaling = #moe.rope_scaling<factor = 0.0>} : () -> ()

// -----

// a ramp that starts at pair 0 or later and does not end before it starts,
// expected-error @+1 {{rope_scaling ramp must have 0 <= low <= high}}
"test.op"() {scaling = #moe.rope_scaling<factor = 4.0, ramp = [3.0, 2.0]>} : () -> ()

// -----

// expected-error @+1 {{rope_scaling ramp must have 0 <= low <= high}}
"test.op"() {scaling = #moe.rope_scaling<factor = 4.0, ramp = [-1.0, 2.0]>} : () -> ()

// -----

// a positive attention factor,
// expected-error @+1 {{rope_scaling attention_factor must be positive and finite}}
"test.op"() {scaling = #moe.rope_scaling<factor = 4.0, attention_factor = -1.0>} : () -> ()

// -----

// and no other parameters.
// expected-error @+1 {{expected 'ramp' or 'attention_factor', got 'beta_fast'}}
"test.op"() {scaling = #moe.rope_scaling<factor = 4.0, beta_fast = 32.0>} : () -> ()

// -----

// A sliding window has at least one key,
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op sliding_window must be at least 1}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, causal, sliding_window = 0 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// and needs a causal mask.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "norm", type = tensor<16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "router", type = tensor<4x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "gate", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "up", type = tensor<4x32x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<4x16x32xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "embed", type = tensor<100x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "qn", type = tensor<4xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op sliding_window needs a causal mask}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, sliding_window = 4 : i64}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A dense MLP's down_proj is [hidden, ffn], ffn from gate_proj.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "gate", type = tensor<24x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<24x16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.mlp' op down_proj @down must have shape [hidden, ffn] = [16, 24], but it has [24, 16]}}
    %y = "moe.mlp"(%h) <{down_proj = @down, gate_proj = @gate, up_proj = @gate}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Its gate_proj is a matrix.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "gate", type = tensor<4x24x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "down", type = tensor<16x24xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>):
    // expected-error @+1 {{'moe.mlp' op gate_proj @gate must have shape [ffn, hidden] = [?, 16], but it has [4, 24, 16]}}
    %y = "moe.mlp"(%h) <{down_proj = @down, gate_proj = @gate, up_proj = @gate}> : (tensor<8x16xf32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

// An attention bias is as wide as its projection.
"builtin.module"() ({
  "moe.weight"() <{sym_name = "wq", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wkv", type = tensor<8x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "wo", type = tensor<16x16xf32>}> : () -> ()
  "moe.weight"() <{sym_name = "bias", type = tensor<16xf32>}> : () -> ()
  "func.func"() <{function_type = (tensor<8x16xf32>, tensor<8xi32>) -> (), sym_name = "f"}> ({
  ^bb0(%h: tensor<8x16xf32>, %p: tensor<8xi32>):
    // expected-error @+1 {{'moe.attention' op k_bias @bias must have shape [projection width] = [8], but it has [16]}}
    %a = "moe.attention"(%h, %p) <{head_dim = 4 : i64, k_proj = @wkv, num_heads = 4 : i64, num_kv_heads = 2 : i64, o_proj = @wo, q_proj = @wq, v_proj = @wkv, k_bias = @bias}> : (tensor<8x16xf32>, tensor<8xi32>) -> tensor<8x16xf32>
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()
