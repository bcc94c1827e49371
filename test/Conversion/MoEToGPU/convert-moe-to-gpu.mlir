// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu=resident-loops=false -verify-diagnostics | FileCheck %s
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false bf16-weights=false" -verify-diagnostics | FileCheck %s --check-prefix=F32
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false chip=sm_80" -verify-diagnostics | FileCheck %s --check-prefix=SM80
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false emulate-warp-ops" -verify-diagnostics | FileCheck %s --check-prefix=EMU
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false tensor-cores=false" -verify-diagnostics | FileCheck %s --check-prefix=NONE
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false bf16-activations" -verify-diagnostics | FileCheck %s --check-prefix=BF16ACT
// RUN: moe-opt %s -split-input-file -convert-moe-to-gpu="resident-loops=false split-chunk-rows=1" -verify-diagnostics | FileCheck %s --check-prefix=CHUNK1
// RUN: not moe-opt %s -split-input-file -convert-moe-to-gpu=chip=gfx90a 2>&1 | FileCheck %s --check-prefix=BADCHIP
// RUN: moe-opt %S/Inputs/bf16-prefill.mlir -convert-moe-to-gpu=report-forms -o /dev/null 2>&1 | FileCheck %s --check-prefix=FORMS
// FORMS: remark: route_logits (4 x 32 f32 weights): a warp per output up to 256 rows, then a thread per output (cost model for H100 SXM)
// FORMS: remark: experts gate/up (4 experts, 64 x 32 bf16 weights): a warp per output up to 256 rows, then warp tiles of 16 x 32 on the tensor cores (cost model for H100 SXM)
// FORMS: remark: experts down (4 experts, 32 x 64 bf16 weights): a warp per output up to 256 rows, then warp tiles of 16 x 32 on the tensor cores (cost model for H100 SXM)
// Each chip's cost model picks for it:
// RUN: moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu=report-forms -o /dev/null 2>&1 | FileCheck %s --check-prefix=FORMS-SM90A
// RUN: moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu="report-forms chip=sm_80" -o /dev/null 2>&1 | FileCheck %s --check-prefix=FORMS-SM80
// FORMS-SM90A: remark: experts gate/up (4 experts, 128 x 64 bf16 weights): a warp per output up to 178 rows, then warp tiles of 16 x 32 on the tensor cores (cost model for H100 SXM)
// FORMS-SM80: remark: experts gate/up (4 experts, 128 x 64 bf16 weights): a warp per output up to 135 rows, then warp tiles of 16 x 32 on the tensor cores (cost model for A100 SXM)
// The kernels and the host program, with pass loops as host loops of
// launches; resident-loop.mlir checks the resident kernel made of them.
// BADCHIP: error: convert-moe-to-gpu: chip 'gfx90a' is not an NVIDIA architecture (sm_<number>, e.g. sm_90a)

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// The host program is convert-moe-to-cpu's, with the same signature (every
// pointer a device pointer): buffers become stream-ordered device
// allocations and each kernel call one or more launches on one stream.
// CHECK: module attributes {gpu.container_module}
// CHECK-NOT: func.func private @moert_
// CHECK-LABEL: func.func @compacting(
// CHECK-SAME: %[[IN:.*]]: memref<?x8xf32>, %[[OUT:.*]]: memref<?x8xf32>, %[[EXIT:.*]]: memref<?xi32>,
// CHECK-SAME: attributes {llvm.emit_c_interface}
// The count of active tokens is read back into one host slot per function.
// CHECK: %[[KEPT_HOST:.*]] = memref.alloca() : memref<1xi32>
// CHECK: %[[S0:.*]] = gpu.wait async
// CHECK: %[[STATE:.*]], %[[T0:.*]] = gpu.alloc async [%[[S0]]] (%{{.*}}) : memref<?x8xf32>
// Launch shape: 64-thread blocks for grids of at most 132 * 256 threads
// (decode), 256 otherwise; no blocks for no threads (a form that gets no
// rows: the runtime skips empty grids).
// CHECK: %[[SMALL:.*]] = arith.cmpi ule, %[[COPYN:.*]], %c33792
// CHECK: %[[THREADS:.*]] = arith.select %[[SMALL]], %c64, %c256
// CHECK: %[[BLOCKS:.*]] = arith.divui %{{.*}}, %[[THREADS]]
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@copy_{{[0-9]+}} blocks in (%[[BLOCKS]], %c1{{.*}}, %c1{{.*}}) threads in (%[[THREADS]], %c1{{.*}}, %c1{{.*}}) args(%[[COPYN]] : index, %[[IN]] : memref<?x8xf32>, %[[STATE]] : memref<?x8xf32>)
// CHECK: gpu.launch_func async {{.*}} @moe_kernels::@loop_init_{{[0-9]+}}
// CHECK: %[[INIT:.*]] = gpu.launch_func async {{.*}} @moe_kernels::@trace_init_{{[0-9]+}}
// The host waits before the pass loop; each pass queues its own stretch.
// CHECK: gpu.wait [%[[INIT]]]
// CHECK: scf.for %{{.*}} = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%[[N:.*]] = %{{.*}}) -> (index) {
// CHECK:   gpu.wait async
// CHECK:   @moe_kernels::@gather_rows_{{[0-9]+}}
// CHECK:   memref.subview %{{.*}}[0, 0] [%[[N]], 8] [1, 1]
// CHECK:   @moe_kernels::@rms_norm_{{[0-9]+}}
// The router's logits are a GEMM (a warp per output for few rows), then a
// thread per token scores them and picks the top k.
// CHECK:   @moe_kernels::@route_logits_{{[0-9]+}}
// CHECK:   @moe_kernels::@route_logits_split_{{[0-9]+}}
// CHECK-NOT: _lanes_
// CHECK:   @moe_kernels::@route_{{[0-9]+}}
// The plan's counters live for the plan only.
// CHECK:   %[[CURSOR:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] () : memref<4xi32>
// CHECK:   @moe_kernels::@plan_init_{{[0-9]+}}
// CHECK:   @moe_kernels::@plan_count_{{[0-9]+}}
// CHECK:   @moe_kernels::@plan_scan_{{[0-9]+}}
// CHECK:   @moe_kernels::@plan_scatter_{{[0-9]+}}
// CHECK:   gpu.dealloc async [%{{.*}}] %[[CURSOR]] : memref<4xi32>
// Decode-sized plans (up to the rows the cost model gives, here f32
// weights: 256) split each dot product over a warp, larger ones take a
// thread per output: both are launched, the one that does not apply with no
// rows.
// CHECK:   arith.cmpi ule, %{{.*}}, %c256{{.*}} : index
// CHECK:   @moe_kernels::@experts_gate_up_{{[0-9]+}}
// CHECK:   @moe_kernels::@experts_gate_up_split_{{[0-9]+}}
// CHECK:   @moe_kernels::@experts_down_{{[0-9]+}}
// CHECK:   @moe_kernels::@experts_down_split_{{[0-9]+}}
// CHECK-NOT: _lanes_
// CHECK:   @moe_kernels::@experts_combine_{{[0-9]+}}
// CHECK:   @moe_kernels::@record_step_{{[0-9]+}}
// CHECK:   @moe_kernels::@add_{{[0-9]+}}
// CHECK:   @moe_kernels::@exit_test_{{[0-9]+}}
// CHECK:   @moe_kernels::@scatter_rows_{{[0-9]+}}
// Compaction: a thread per active token; survivors take slots of a copy of
// the active list through an atomic counter, which the host reads back.
// CHECK:   %[[KEPT:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] () : memref<1xi32>
// CHECK:   %[[COPY:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] (%{{.*}}) : memref<?xi32>
// CHECK:   @moe_kernels::@exit_update_init_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[KEPT]] : memref<1xi32>)
// CHECK:   @moe_kernels::@exit_update_{{[0-9]+}} blocks in (%{{.*}}) threads in (%{{.*}}) args(%[[N2:.*]] : index,
// CHECK:   @moe_kernels::@exit_update_copy_{{[0-9]+}} {{.*}} args(%[[N2]] : index, %[[COPY]] : memref<?xi32>, %[[KEPT]] : memref<1xi32>,
// CHECK:   %[[COPIED:.*]] = gpu.memcpy async [%{{.*}}] %[[KEPT_HOST]], %[[KEPT]]
// CHECK:   %[[FREED:.*]] = gpu.dealloc async [%[[COPIED]]] %[[KEPT]]
// CHECK:   gpu.wait [%[[FREED]]]
// CHECK:   %[[COUNT32:.*]] = memref.load %[[KEPT_HOST]]
// CHECK:   %[[COUNT:.*]] = arith.extsi %[[COUNT32]] : i32 to i64
// CHECK:   %[[NEXT:.*]] = arith.index_cast %[[COUNT]] : i64 to index
// CHECK:   scf.yield %[[NEXT]] : index
// CHECK: }
// CHECK: @moe_kernels::@rms_norm_{{[0-9]+}}
// CHECK: @moe_kernels::@copy_{{[0-9]+}} {{.*}} %[[OUT]] : memref<?x8xf32>
// CHECK: gpu.dealloc async [%{{.*}}] %[[STATE]]
// CHECK: gpu.wait [%{{.*}}]
// CHECK-NEXT: return

// Kernels are specialised per call: shapes and parameters are constants.
// CHECK: gpu.module @moe_kernels {
// CHECK-LABEL: gpu.func @route_{{[0-9]+}}(
// CHECK-SAME: %{{.*}}: index, %[[X:.*]]: memref<?x4xf32>,
// CHECK-SAME: kernel
// CHECK: %[[BID:.*]] = gpu.block_id x
// CHECK: %[[BDIM:.*]] = gpu.block_dim x
// CHECK: %[[BASE:.*]] = arith.muli %[[BID]], %[[BDIM]]
// CHECK: %[[TID:.*]] = gpu.thread_id x
// CHECK: %[[TOKEN:.*]] = arith.addi %[[BASE]], %[[TID]]
// One thread per token: its 4 logits, sigmoid scores, top-2.
// CHECK: memref.alloca() : memref<4xf32>
// CHECK: memref.load %[[X]][%[[TOKEN]], %{{.*}}]
// CHECK: math.exp
// CHECK: arith.cmpf ogt
// CHECK: gpu.return
// Slots are counted and handed rows with atomics.
// CHECK-LABEL: gpu.func @plan_count_{{[0-9]+}}(
// CHECK: memref.atomic_rmw addi
// CHECK-LABEL: gpu.func @plan_scatter_{{[0-9]+}}(
// CHECK: memref.atomic_rmw addi
// The gate/up GEMM gathers token rows through the plan and applies SiLU.
// CHECK-LABEL: gpu.func @experts_gate_up_{{[0-9]+}}(
// CHECK-SAME: %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<?x16xf32>)
// CHECK: arith.cmpi sge
// CHECK: scf.if
// CHECK: math.exp
// A warp of the split form takes a chunk of up to 4 rows of one expert's
// segment and one column: only the warps of a chunk's first row (a multiple
// of 4 rows past its segment's start) work, and none of the plan's tail rows
// (past the last segment: expert E of 4). Lane l takes 16-byte chunks of
// weights (4 f32) l, l + 32, ..., each one aligned vector load per weight
// for all the chunk's rows, then each row's activation chunk (aligned too:
// rows of 32 bytes from the buffer's start), 8 sums (gate and up per row);
// the warp adds the partial sums with an xor butterfly, and lane 0 stores
// each row that is in the segment.
// CHECK-LABEL: gpu.func @experts_gate_up_split_{{[0-9]+}}(
// CHECK: %[[LANE:.*]] = arith.remui %{{.*}}, %c32
// CHECK: %[[NEXT:.*]] = arith.minui %{{.*}}, %c4
// CHECK: memref.load %{{.*}}[%[[NEXT]]] : memref<5xi32>
// CHECK: %[[INPLAN:.*]] = arith.cmpi ult, %[[EX:.*]], %c4
// CHECK: %[[PAST:.*]] = arith.subi
// CHECK: %[[INCHUNK:.*]] = arith.remui %[[PAST]], %c4
// CHECK: %[[ATSTART:.*]] = arith.cmpi eq, %[[INCHUNK]], %c0
// CHECK: %[[LEADS:.*]] = arith.andi %[[INPLAN]], %[[ATSTART]] : i1
// CHECK: scf.if %[[LEADS]] {
// CHECK: %[[FIRST:.*]] = arith.muli %[[LANE]], %c4
// CHECK: scf.for %[[I:.*]] = %[[FIRST]] to %c8 step %c128 iter_args({{.*}}) -> (f32, f32, f32, f32, f32, f32, f32, f32)
// CHECK: vector.load %{{.*}}[%{{.*}}, %{{.*}}, %[[I]]] {alignment = 16 : i64} : memref<4x16x8xf32>, vector<4xf32>
// CHECK: vector.load %{{.*}}[%{{.*}}, %{{.*}}, %[[I]]] {alignment = 16 : i64} : memref<4x16x8xf32>, vector<4xf32>
// CHECK-COUNT-4: vector.load %{{.*}}[%{{.*}}, %[[I]]] {alignment = 16 : i64} : memref<?x8xf32, strided<[8, 1]>>, vector<4xf32>
// CHECK-NOT: vector.load
// CHECK: gpu.shuffle  xor %{{.*}}, %c16_i32{{.*}}, %c32_i32{{.*}} : f32
// A warp per row with split-chunk-rows=1: two sums, one activation chunk.
// CHUNK1-LABEL: gpu.func @experts_gate_up_split_{{[0-9]+}}(
// CHUNK1: arith.remui %{{.*}}, %c1{{.*}} : index
// CHUNK1: scf.for {{.*}} -> (f32, f32) {
// CHUNK1-COUNT-3: vector.load
// CHUNK1-NOT: vector.load
// CHUNK1: gpu.shuffle
// CHECK: gpu.shuffle  xor %{{.*}}, %c8_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK: gpu.shuffle  xor %{{.*}}, %c4_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK: gpu.shuffle  xor %{{.*}}, %c2_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK: gpu.shuffle  xor %{{.*}}, %c1_i32{{.*}}, %c32_i32{{.*}} : f32
// CHECK: arith.cmpi eq, %[[LANE]], %c0
// CHECK: scf.if
// CHECK: memref.store
// Emulated, lane l computes the shares of all 32 lanes and adds them in the
// butterfly's order, without shuffles, and claims no alignment (host
// weights need not be aligned).
// EMU-LABEL: gpu.func @experts_gate_up_split_{{[0-9]+}}(
// EMU-NOT: gpu.shuffle
// EMU-NOT: alignment = 16
// EMU-COUNT-32: scf.for %{{.*}} = %{{.*}} to %c8{{.*}} step %c128
// EMU-NOT: gpu.shuffle
// EMU: gpu.return
// CHECK-LABEL: gpu.func @exit_update_{{[0-9]+}}(
// CHECK: memref.atomic_rmw addi
func.func @compacting(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 3 mode = resident compact_exits : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %ids, %gates = moe.route %n, @router top_k = 2 scoring = sigmoid : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %y = moe.fused_experts %n, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
    %h1 = arith.addf %h0, %y : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = cosine threshold = 0.99 : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  %out = moe.rms_norm %h, @norm : tensor<?x8xf32>
  return %out, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// Two unrolled passes: the second specialisation of each kernel is reused,
// and GELU is baked into the expert kernel.
// CHECK-LABEL: func.func @unrolled(
// CHECK-NOT: scf.for
// CHECK-COUNT-2: @moe_kernels::@experts_gate_up_[[GELU:[0-9]+]] blocks
// CHECK-LABEL: gpu.func @experts_gate_up_
// CHECK-SAME: moe.signature = "experts_gate_up(1)
// CHECK: arith.constant 4.471500e-02 : f32
func.func @unrolled(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %n = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %ids, %gates = moe.route %n, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %y = moe.fused_experts %n, %p, %gates gate @gate up @up down @down activation = gelu : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
    %h1 = arith.addf %h0, %y : tensor<?x8xf32>
    moe.yield %h1 : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xbf16>
moe.weight @up : tensor<4x16x8xbf16>
moe.weight @down : tensor<4x8x16xbf16>

// bf16 weights stay bf16 on the device; the kernels widen each element as
// they load it and accumulate in f32. With bf16-weights=false they are f32
// buffers (the runtime widens them at load).
// CHECK-LABEL: func.func @bf16(
// CHECK-SAME: %{{.*}}: memref<8xf32>, %{{.*}}: memref<4x8xf32>, %{{.*}}: memref<4x16x8xbf16>, %{{.*}}: memref<4x16x8xbf16>, %{{.*}}: memref<4x8x16xbf16>)
// CHECK-LABEL: gpu.func @experts_gate_up_
// CHECK-SAME: memref<4x16x8xbf16>, %{{.*}}: memref<4x16x8xbf16>, %{{.*}}: memref<?x16xf32>)
// CHECK: %[[W:.*]] = memref.load %{{.*}} : memref<4x16x8xbf16>
// CHECK: arith.extf %[[W]] : bf16 to f32
// F32-LABEL: func.func @bf16(
// F32-SAME: %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x16x8xf32>, %{{.*}}: memref<4x8x16xf32>)
// F32-NOT: bf16
func.func @bf16(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 16>
    %y = moe.fused_experts %h0, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 4, top_k = 2, tile = 16>, tensor<?x2xf32>
    moe.yield %y : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// Whole expert groups have no GPU kernel: moe-cuda-pipeline fuses them.
func.func @unfused(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x8xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    // expected-error @+1 {{convert-moe-to-gpu needs fused expert groups (moe.fused_experts): run moe-decompose-experts and moe-fuse-dispatch-gemm first, as moe-cuda-pipeline does}}
    %y = moe.experts %h0, %ids, %gates gate @gate up @up down @down : tensor<?x8xf32>, tensor<?x2xi32>, tensor<?x2xf32>
    moe.yield %y : tensor<?x8xf32>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

// A decoder: tokens, positions, logits, exit_loop, then the K and V cache of
// each slot (device buffers the session keeps), then the weights.
// CHECK-LABEL: func.func @decoder(
// CHECK-SAME: %[[TOKENS:.*]]: memref<?xi32>, %[[POS:.*]]: memref<?xi32>, %{{.*}}: memref<?x16xf32>, %{{.*}}: memref<?xi32>, %[[KC:.*]]: memref<?x4xf32>, %[[VC:.*]]: memref<?x4xf32>,
// CHECK: @moe_kernels::@embed_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[TOKENS]] : memref<?xi32>,
// Attention: the projections (split over lanes for few rows), k and v into
// their cache rows, norms and RoPE, the softmax over the cache, the output
// projection.
// CHECK: @moe_kernels::@attention_q_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_q_split_{{[0-9]+}}
// CHECK-NOT: @moe_kernels::@attention_q_lanes_
// CHECK: @moe_kernels::@attention_k_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_v_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_cache_store_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[POS]] : memref<?xi32>, %{{.*}} : memref<?x4xf32>, %{{.*}} : memref<?x4xf32>, %[[KC]] : memref<?x4xf32>, %[[VC]] : memref<?x4xf32>)
// CHECK: @moe_kernels::@attention_prepare_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_core_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[POS]] : memref<?xi32>, %[[KC]] : memref<?x4xf32>, %[[VC]] : memref<?x4xf32>,
// CHECK: @moe_kernels::@attention_out_{{[0-9]+}}
// CHECK: @moe_kernels::@unembed_{{[0-9]+}}
// RoPE angles in double precision (positions times theta^(-2i/hd)).
// CHECK-LABEL: gpu.func @attention_prepare_
// CHECK: math.powf %{{.*}} : f64
// CHECK: math.cos %{{.*}} : f64
// CHECK: math.sin %{{.*}} : f64
// One thread per (token, head): a head_dim accumulator, exp of max-shifted
// scores.
// CHECK-LABEL: gpu.func @attention_core_
// CHECK: memref.alloca() : memref<4xf32>
// CHECK: math.exp
// Decode merges the chunks' partial softmaxes: a chunk counts unless its sum
// (slot head_dim + 1) is 0, i.e. empty, so a NaN sum reaches the output as
// in prefill.
// CHECK-LABEL: gpu.func @attention_merge_
// CHECK: %[[SUM:.*]] = memref.load %{{.*}}[%{{.*}}, %{{.*}}, %c5] : memref<?x?x6xf32>
// CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: %[[USED:.*]] = arith.cmpf une, %[[SUM]], %[[ZERO]] : f32
moe.weight @embed : tensor<16x8xf32>
moe.weight @q : tensor<8x8xf32>
moe.weight @k : tensor<4x8xf32>
moe.weight @v : tensor<4x8xf32>
moe.weight @o : tensor<8x8xf32>
moe.weight @q_norm : tensor<4xf32>
moe.weight @k_norm : tensor<4xf32>
moe.weight @router : tensor<2x8xf32>
moe.weight @gate : tensor<2x12x8xf32>
moe.weight @up : tensor<2x12x8xf32>
moe.weight @down : tensor<2x8x12xf32>
moe.weight @lm_head : tensor<16x8xf32>

func.func @decoder(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 4 rope_theta = 1.000000e+04 causal q_norm @q_norm k_norm @k_norm : tensor<?x8xf32>, tensor<?xi32>
    %h1 = arith.addf %h0, %a : tensor<?x8xf32>
    %ids, %gates = moe.route %h1, @router top_k = 1 : tensor<?x8xf32> -> tensor<?x1xi32>, tensor<?x1xf32>
    %p = moe.plan %ids : tensor<?x1xi32> -> !moe.plan<experts = 2, top_k = 1, tile = 1>
    %y = moe.fused_experts %h1, %p, %gates gate @gate up @up down @down : tensor<?x8xf32>, !moe.plan<experts = 2, top_k = 1, tile = 1>, tensor<?x1xf32>
    %h2 = arith.addf %h1, %y : tensor<?x8xf32>
    moe.yield %h2 : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @lm_head : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}

// -----

moe.weight @router : tensor<4x32xf32>
moe.weight @gate : tensor<4x64x32xbf16>
moe.weight @up : tensor<4x64x32xbf16>
moe.weight @down : tensor<4x32x64xbf16>

// bf16 weights whose shapes divide into m16n8k16 tiles: beyond the rows the
// cost model gives the warp-per-output form (for weights this small, all
// it searches, 256, on both chips), the expert GEMMs run as warp tiles on the
// tensor cores, a warp per (row tile, 32 columns), over ceil(rows / 16) + E
// row tiles.
// CHECK-LABEL: func.func @tensor_cores(
// CHECK: gpu.alloc async [%{{.*}}] (%[[ROWS:.*]]) : memref<?x64xf32>
// CHECK: arith.cmpi ule, %[[ROWS]], %c256{{.*}} : index
// CHECK: arith.cmpi ule, %[[ROWS]], %c256{{.*}} : index
// One thread counts each expert's row tiles, where a warp finds its tile.
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_row_tiles_{{[0-9]+}}
// CHECK: arith.ceildivui %{{.*}}, %c16{{.*}} : index
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_gate_up_mma_{{[0-9]+}}
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_down_mma_{{[0-9]+}}
// Gate and up share each row fragment: 2 x 4 subtiles per k-step of 16,
// each two mma.sync: the activations' bf16 high part, then the bf16
// remainder, into the same accumulators.
// CHECK-LABEL: gpu.func @experts_gate_up_mma_
// CHECK-SAME: moe.signature = "experts_gate_up_mma(0,4)
// CHECK: scf.for %{{.*}} = %c0{{.*}} to %c32{{.*}} step %c16
// Activation pairs round to bf16 together (cvt.rn.bf16x2); weight pairs
// are one aligned 32-bit load.
// CHECK: arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK: %[[BACK:.*]] = arith.extf %{{.*}} : bf16 to f32
// CHECK: arith.subf %{{.*}}, %[[BACK]] : f32
// CHECK: vector.load %{{.*}} {alignment = 4 : i64} : memref<4x64x32xbf16>, vector<2xbf16>
// CHECK: %[[D:.*]] = nvvm.mma.sync A[{{.*}}] B[%[[B0:.*]], %[[B1:.*]]] C[{{.*}}] {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK: %[[D0:.*]] = llvm.extractvalue %[[D]][0]
// CHECK: nvvm.mma.sync A[{{.*}}] B[%[[B0]], %[[B1]]] C[%[[D0]],
// CHECK-COUNT-14: nvvm.mma.sync
// CHECK-NOT: nvvm.mma.sync
// CHECK: gpu.return
// CHECK-LABEL: gpu.func @experts_down_mma_
// CHECK: scf.for %{{.*}} = %c0{{.*}} to %c64{{.*}} step %c16
// CHECK-COUNT-8: nvvm.mma.sync
// CHECK-NOT: nvvm.mma.sync
// CHECK: gpu.return
// bf16-activations: the plan-ordered intermediates (gate/up's output, each
// slot's down output) are bf16 buffers, rounded as they are stored; one
// mma.sync per subtile and step.
// BF16ACT-LABEL: func.func @tensor_cores(
// BF16ACT: %[[H:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] (%{{.*}}) : memref<?x64xbf16>
// BF16ACT: %[[Y:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] (%{{.*}}) : memref<?x32xbf16>
// BF16ACT: @moe_kernels::@experts_gate_up_mma_{{[0-9]+}} {{.*}}args({{.*}}%[[H]] : memref<?x64xbf16>, %{{.*}} : memref<5xi32>)
// BF16ACT: @moe_kernels::@experts_combine_{{[0-9]+}} {{.*}}args(%{{.*}} : index, %[[Y]] : memref<?x32xbf16>
// BF16ACT-LABEL: gpu.func @experts_gate_up_{{[0-9]+}}(
// BF16ACT: %[[R:.*]] = arith.truncf %{{.*}} : f32 to bf16
// BF16ACT: memref.store %[[R]], %{{.*}} : memref<?x64xbf16>
// BF16ACT-LABEL: gpu.func @experts_gate_up_mma_
// BF16ACT-COUNT-8: nvvm.mma.sync
// BF16ACT-NOT: nvvm.mma.sync
// BF16ACT: gpu.return
// SM80-LABEL: func.func @tensor_cores(
// SM80: arith.cmpi ule, %{{.*}}, %c256{{.*}} : index
// SM80: arith.cmpi ule, %{{.*}}, %c256{{.*}} : index
// SM80: @moe_kernels::@experts_gate_up_mma_{{[0-9]+}}
// Emulated, the kernels keep their tiles and lose mma.sync.
// EMU-LABEL: gpu.func @experts_gate_up_mma_
// EMU-NOT: nvvm.mma.sync
// EMU: gpu.return
// NONE-LABEL: func.func @tensor_cores(
// NONE-NOT: _mma_
// F32-LABEL: func.func @tensor_cores(
// F32-NOT: _mma_
func.func @tensor_cores(%x: tensor<?x32xf32>) -> (tensor<?x32xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x32xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x32xf32>):
    %ids, %gates = moe.route %h0, @router top_k = 2 : tensor<?x32xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
    %p = moe.plan %ids : tensor<?x2xi32> -> !moe.plan<experts = 4, top_k = 2, tile = 1>
    %y = moe.fused_experts %h0, %p, %gates gate @gate up @up down @down : tensor<?x32xf32>, !moe.plan<experts = 4, top_k = 2, tile = 1>, tensor<?x2xf32>
    moe.yield %y : tensor<?x32xf32>
  }
  return %h, %exit : tensor<?x32xf32>, tensor<?xi32>
}

// -----

// An LM-head exit test: the final norm a thread per token, the LM head's
// GEMM with f32 activations (the decode form: a warp per logit), then the
// softmax's sums in double over chunks of 32 logits (ceil(100 / 32) = 4), a
// thread per (token, chunk), merged a thread per token.
// CHECK-LABEL: func.func @lm_exit(
// CHECK: @moe_kernels::@exit_lm_norm_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %{{.*}} : memref<?x8xf32>, %{{.*}} : memref<8xf32>, %[[NORMED:.*]] : memref<?x8xf32>)
// CHECK: @moe_kernels::@exit_lm_logits_{{[0-9]+}}
// CHECK: @moe_kernels::@exit_lm_logits_split_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[NORMED]] : memref<?x8xf32>, %{{.*}} : memref<100x8xf32>, %[[LOGITS:.*]] : memref<?x100xf32>)
// CHECK: @moe_kernels::@exit_lm_chunk_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[LOGITS]] : memref<?x100xf32>, %[[STATS:.*]] : memref<?x4x3xf64>)
// CHECK: @moe_kernels::@exit_lm_test_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %[[STATS]] : memref<?x4x3xf64>, %{{.*}} : memref<?xi8>)
// Each chunk: its max, then exp(x - max) and exp(x - max) (x - max) summed
// from its first logit to min(first + 32, 100); a chunk of -inf logits
// stores no mass.
// CHECK-LABEL: gpu.func @exit_lm_chunk_
// CHECK: %[[FIRST:.*]] = arith.muli %{{.*}}, %c32
// CHECK: %[[END:.*]] = arith.minui %{{.*}}, %c100
// CHECK: %[[MAX:.*]] = scf.for {{.*}} -> (f64) {
// CHECK: arith.maximumf
// CHECK: scf.for %{{.*}} = %[[FIRST]] to %[[END]] {{.*}} -> (f64, f64) {
// CHECK: %[[X:.*]] = arith.subf %{{.*}}, %[[MAX]] : f64
// CHECK: %[[E:.*]] = math.exp %[[X]] : f64
// CHECK: arith.mulf %[[E]], %[[X]] : f64
// CHECK: %[[NEGINF:.*]] = arith.constant 0xFFF0000000000000 : f64
// CHECK: %[[EMPTY:.*]] = arith.cmpf oeq, %[[MAX]], %[[NEGINF]] : f64
// CHECK: arith.select %[[EMPTY]]
// The merge skips the chunks without mass (a NaN one counts), then the
// entropy log S - W / S must be finite and <= 0.5.
// CHECK-LABEL: gpu.func @exit_lm_test_
// CHECK: %[[S:.*]] = memref.load %{{.*}}[%{{.*}}, %{{.*}}, %c1{{.*}}] : memref<?x4x3xf64>
// CHECK: %[[MASS:.*]] = arith.cmpf une, %[[S]], %{{.*}} : f64
// CHECK: arith.select %[[MASS]]
// CHECK: %[[LOG:.*]] = math.log %[[SUMS:.*]]#0 : f64
// CHECK: %[[MEAN:.*]] = arith.divf %[[SUMS]]#1, %[[SUMS]]#0 : f64
// CHECK: %[[H:.*]] = arith.subf %[[LOG]], %[[MEAN]] : f64
// CHECK: arith.cmpf ole, %[[H]], %{{.*}} : f64
moe.weight @norm : tensor<8xf32>
moe.weight @final_norm : tensor<8xf32>
moe.weight @lm_head : tensor<100x8xf32>

func.func @lm_exit(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?xi32>) {
  %h, %exit = moe.loop %x passes = 2 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %h1 = moe.rms_norm %h0, @norm : tensor<?x8xf32>
    %m = moe.exit %h1, %h0 criterion = entropy threshold = 0.5 lm_head @lm_head lm_norm @final_norm : tensor<?x8xf32> -> tensor<?xi1>
    moe.yield %h1, %m : tensor<?x8xf32>, tensor<?xi1>
  }
  return %h, %exit : tensor<?x8xf32>, tensor<?xi32>
}

// -----

moe.weight @embed : tensor<16x8xf32>
moe.weight @q : tensor<16x8xf32>
moe.weight @k : tensor<8x8xf32>
moe.weight @v : tensor<8x8xf32>
moe.weight @o : tensor<8x16xf32>

// Scaled RoPE (#moe.rope_scaling): pair i's frequency theta^(-2i/hd) times
// (1 - r) + r / factor, the ramp r being 1 from pair 3 on, 0 up to pair 1
// and (i - 1) / 2 between; cos and sin times the attention factor.
// CHECK-LABEL: gpu.func @attention_prepare_
// CHECK: %[[POS:.*]] = arith.sitofp %{{.*}} : i32 to f64
// CHECK: %[[PAIR:.*]] = arith.sitofp %{{.*}} : i32 to f64
// CHECK: %[[FREQ:.*]] = math.powf %{{.*}} : f64
// CHECK: %[[ONE:.*]] = arith.constant 1.000000e+00 : f64
// CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f64
// CHECK-NEXT: %[[HIGH:.*]] = arith.constant 3.000000e+00 : f64
// CHECK-NEXT: %[[PASTHIGH:.*]] = arith.cmpf oge, %[[PAIR]], %[[HIGH]] : f64
// CHECK-NEXT: %[[LOW:.*]] = arith.constant 1.000000e+00 : f64
// CHECK-NEXT: %[[BELOWLOW:.*]] = arith.cmpf ole, %[[PAIR]], %[[LOW]] : f64
// CHECK: %[[FROMLOW:.*]] = arith.subf %[[PAIR]], %{{.*}} : f64
// CHECK: %[[WIDTH:.*]] = arith.constant 2.000000e+00 : f64
// CHECK-NEXT: %[[BETWEEN:.*]] = arith.divf %[[FROMLOW]], %[[WIDTH]] : f64
// CHECK-NEXT: %[[INNER:.*]] = arith.select %[[BELOWLOW]], %[[ZERO]], %[[BETWEEN]] : f64
// CHECK-NEXT: %[[RAMP:.*]] = arith.select %[[PASTHIGH]], %[[ONE]], %[[INNER]] : f64
// CHECK-NEXT: %[[KEPT:.*]] = arith.subf %[[ONE]], %[[RAMP]] : f64
// CHECK-NEXT: %[[FACTOR:.*]] = arith.constant 4.000000e+00 : f64
// CHECK-NEXT: %[[DIVIDED:.*]] = arith.divf %[[RAMP]], %[[FACTOR]] : f64
// CHECK-NEXT: %[[SCALE:.*]] = arith.addf %[[KEPT]], %[[DIVIDED]] : f64
// CHECK: %[[SCALED:.*]] = arith.mulf %[[FREQ]], %[[SCALE]] : f64
// CHECK: %[[ANGLE:.*]] = arith.mulf %[[POS]], %[[SCALED]] : f64
// CHECK: %[[COS:.*]] = math.cos %[[ANGLE]] : f64
// CHECK: %[[ATTN:.*]] = arith.constant 1.250000e+00 : f64
// CHECK: arith.mulf %[[COS]], %[[ATTN]] : f64
// CHECK: %[[SIN:.*]] = math.sin %[[ANGLE]] : f64
// CHECK: arith.mulf %[[SIN]], %{{.*}} : f64
// Unscaled RoPE has none of it.
// CHECK-LABEL: gpu.func @attention_prepare_
// CHECK: math.powf
// CHECK-NOT: arith.cmpf oge
// CHECK: math.cos
func.func @scaled_rope(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 rope_scaling<factor = 4.0, ramp = [1.0, 3.0], attention_factor = 1.25> causal : tensor<?x8xf32>, tensor<?xi32>
    %b = moe.attention %a, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 causal cache_slot = 1 : tensor<?x8xf32>, tensor<?xi32>
    moe.yield %b : tensor<?x8xf32>
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

// A sliding window of 5: a query at pos reads the keys from
// max(pos + 1 - 5, 0); a decode chunk starts there at the earliest, and is
// empty if the window starts past its end. (The kernels' signatures end in
// the window.)
// CHECK-LABEL: gpu.func @attention_core_{{[0-9]+}}({{.*}}moe.signature = "attention_core({{.*}},5)
// CHECK: memref.alloca() : memref<8xf32>
// CHECK-NEXT: %[[POS:.*]] = arith.index_cast %{{.*}} : i32 to index
// CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : index
// CHECK-NEXT: %[[KEYS:.*]] = arith.addi %[[POS]], %[[ONE]] : index
// CHECK-NEXT: %[[W:.*]] = arith.constant 5 : index
// CHECK-NEXT: %[[PAST:.*]] = arith.subi %[[KEYS]], %[[W]] : index
// CHECK: %[[LONGER:.*]] = arith.cmpi ugt, %[[KEYS]], %{{.*}} : index
// CHECK: %[[FIRST:.*]] = arith.select %[[LONGER]], %[[PAST]], %{{.*}} : index
// The first key seeds the softmax; the loop takes the rest.
// CHECK: %[[SECOND:.*]] = arith.addi %[[FIRST]], %{{.*}} : index
// CHECK: scf.for %{{.*}} = %[[SECOND]] to
// CHECK-LABEL: gpu.func @attention_chunks_{{[0-9]+}}({{.*}}moe.signature = "attention_chunks({{.*}},5)
// CHECK: %[[HI:.*]] = arith.minui %{{.*}} : index
// CHECK: %[[FIRSTKEY:.*]] = arith.select %{{.*}} : index
// CHECK-NEXT: %[[LO:.*]] = arith.maxui %{{.*}}, %[[FIRSTKEY]] : index
// CHECK-NEXT: arith.cmpi uge, %[[LO]], %[[HI]] : index
func.func @windowed(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 causal sliding_window = 5 : tensor<?x8xf32>, tensor<?xi32>
    moe.yield %a : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @embed : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}

// -----

// A dense MLP: the gate and up GEMMs, act(g) * u in place, the down GEMM.
// CHECK-LABEL: func.func @dense(
// CHECK: @moe_kernels::@mlp_gate_{{[0-9]+}}
// CHECK: @moe_kernels::@mlp_up_{{[0-9]+}}
// CHECK: @moe_kernels::@mlp_glu_{{[0-9]+}}
// CHECK: @moe_kernels::@mlp_down_{{[0-9]+}}
// tanh GELU: g * sigmoid(2 sqrt(2/pi) (g + 0.044715 g^3)) * u.
// CHECK-LABEL: gpu.func @mlp_glu_
// CHECK: %[[G:.*]] = memref.load %{{.*}} : memref<?x24xf32>
// CHECK: %[[U:.*]] = memref.load %{{.*}} : memref<?x24xf32>
// CHECK: arith.constant 1.59576917 : f32
// CHECK: arith.constant 4.471500e-02 : f32
// CHECK: math.exp
// CHECK: %[[GS:.*]] = arith.mulf %[[G]], %{{.*}} : f32
// CHECK: %[[V:.*]] = arith.mulf %[[GS]], %[[U]] : f32
// CHECK: memref.store %[[V]]
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
// expected-error @+1 {{convert-moe-to-gpu expects a model function (hidden) -> (hidden, exit_loop), as moe-import emits}}
func.func @plain(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %y = moe.rms_norm %x, @norm : tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

// -----

moe.weight @embed : tensor<16x8xf32>
moe.weight @q : tensor<16x8xf32>
moe.weight @k : tensor<8x8xf32>
moe.weight @v : tensor<8x8xf32>
moe.weight @o : tensor<8x16xf32>
moe.weight @qb : tensor<16xf32>
moe.weight @ob : tensor<8xf32>

// Attention biases: added to q after its projection (before the norms and
// RoPE) and to the output after the o projection; k and v have none here.
// CHECK-LABEL: func.func @biased(
// CHECK: @moe_kernels::@attention_v_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_bias_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %{{.*}} : memref<?x16xf32>, %{{.*}} : memref<16xf32>)
// CHECK-NOT: @moe_kernels::@attention_bias_
// CHECK: @moe_kernels::@attention_prepare_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_out_{{[0-9]+}}
// CHECK: @moe_kernels::@attention_bias_{{[0-9]+}} {{.*}} args(%{{.*}} : index, %{{.*}} : memref<?x8xf32>, %{{.*}} : memref<8xf32>)
// CHECK-LABEL: gpu.func @attention_bias_
// CHECK: %[[ROW:.*]] = memref.load %{{.*}} : memref<?x16xf32>
// CHECK: %[[B:.*]] = memref.load %{{.*}} : memref<16xf32>
// CHECK: %[[SUM:.*]] = arith.addf %[[ROW]], %[[B]] : f32
// CHECK: memref.store %[[SUM]]
func.func @biased(%tokens: tensor<?xi32>, %positions: tensor<?xi32>) -> (tensor<?x16xf32>, tensor<?xi32>) {
  %x = moe.embed %tokens, @embed : tensor<?xi32> -> tensor<?x8xf32>
  %h, %exit = moe.loop %x passes = 1 mode = unroll : tensor<?x8xf32> -> tensor<?xi32> {
  ^bb0(%h0: tensor<?x8xf32>):
    %a = moe.attention %h0, %positions q @q k @k v @v o @o heads = 2 kv_heads = 1 head_dim = 8 causal q_bias @qb o_bias @ob : tensor<?x8xf32>, tensor<?xi32>
    moe.yield %a : tensor<?x8xf32>
  }
  %logits = moe.unembed %h, @embed : tensor<?x8xf32> -> tensor<?x16xf32>
  return %logits, %exit : tensor<?x16xf32>, tensor<?xi32>
}
