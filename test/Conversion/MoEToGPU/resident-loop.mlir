// Canonicalised, as moe-cuda-pipeline does next: the views and counts the
// kernel recomputes fold to the values they stand for.
// RUN: moe-opt %s -convert-moe-to-gpu -canonicalize -cse | FileCheck %s
// RUN: moe-opt %s -convert-moe-to-gpu=emulate-warp-ops -canonicalize -cse | FileCheck %s --check-prefix=EMU
// RUN: moe-opt %s -convert-moe-to-gpu=chip=sm_80 -canonicalize -cse | FileCheck %s --check-prefix=SM80

moe.weight @norm : tensor<8xf32>
moe.weight @router : tensor<4x8xf32>
moe.weight @gate : tensor<4x16x8xf32>
moe.weight @up : tensor<4x16x8xf32>
moe.weight @down : tensor<4x8x16xf32>

// A resident pass loop is one kernel launch: the host allocates the body's
// buffers once at their first-pass sizes (all tokens: the router's logits,
// the plan-ordered expert rows), zeroes the grid barrier's counter, launches
// two blocks of 256 threads per SM of the chip (264 on an H100's 132; the
// runtime lowers that to what fits at once)
// and waits. No host loop, and no read-back of the active-token count.
// CHECK-LABEL: func.func @compacting(
// CHECK-SAME: %[[IN:[^:]*]]: memref<?x8xf32>
// CHECK-NOT: memref.alloca
// CHECK: %[[TOKENS:.*]] = memref.dim %[[IN]], %c0
// CHECK: gpu.launch_func {{.*}} @moe_kernels::@trace_init_{{[0-9]+}}
// CHECK: gpu.wait [
// CHECK: %[[S:.*]] = gpu.wait async
// CHECK: %[[LOGITS:.*]], %{{.*}} = gpu.alloc async [%[[S]]] (%[[TOKENS]]) : memref<?x4xf32>
// CHECK: %[[HIDDEN:.*]], %{{.*}} = gpu.alloc async [%{{.*}}] (%[[ROWS:.*]]) : memref<?x16xf32>
// CHECK: %[[Z:.*]] = gpu.memset async [%{{.*}}] %[[COUNTER:.*]], %c0_i32 : memref<1xi32>, i32
// CHECK: %[[L:.*]] = gpu.launch_func async [%[[Z]]] @moe_kernels::@resident_loop_[[K:[0-9]+]] blocks in (%c264, %c1{{.*}}, %c1{{.*}}) threads in (%c256, %c1{{.*}}, %c1{{.*}}) args({{.*}}%[[LOGITS]] : memref<?x4xf32>{{.*}}%[[COUNTER]] : memref<1xi32>)
// CHECK: gpu.dealloc async [%[[L]]] %[[LOGITS]]
// CHECK: gpu.dealloc async [%{{.*}}] %[[COUNTER]]
// CHECK: gpu.wait [
// CHECK-NOT: scf.for
// CHECK-NOT: gpu.memcpy
// CHECK: @moe_kernels::@rms_norm_
// CHECK: return

// The body's own kernels are inlined into the resident one and gone.
// CHECK-NOT: gpu.func @route_
// CHECK-NOT: gpu.func @experts_
// CHECK-NOT: gpu.func @exit_update
// CHECK-LABEL: gpu.func @resident_loop_
// CHECK-SAME: %{{.*}}: memref<?x4xf32>
// CHECK-SAME: %[[COUNT:[^:]*]]: memref<1xi32>, %{{[^:]*}}: memref<?xi32>, %[[BARRIER:[^:]*]]: memref<1xi32>) kernel
// Blocks of 256 threads, two per SM: ptxas keeps each thread within 128
// registers, though the kernel holds its largest phase's all along.
// CHECK-SAME: attributes {nvvm.maxntid = array<i32: 256, 1, 1>, nvvm.minctasm = 2 : i32}
// CHECK: %[[TID:.*]] = gpu.thread_id x
// CHECK: %[[BDIM:.*]] = gpu.block_dim x
// CHECK: %[[GRID:.*]] = gpu.grid_dim x
// CHECK: %[[BID:.*]] = gpu.block_id x
// CHECK: %[[BASE:.*]] = arith.muli %[[BID]], %[[BDIM]]
// CHECK: %[[GID:.*]] = arith.addi %[[BASE]], %[[TID]]
// CHECK: %[[STRIDE:.*]] = arith.muli %[[GRID]], %[[BDIM]]
// The passes, with the count of active tokens carried on the device.
// CHECK: scf.for %{{.*}} = %c0{{.*}} to %c3{{.*}} step %c1{{.*}} iter_args(%[[N:.*]] = %{{.*}}) -> (index) {
// Each launch of the body is a phase: skipped by the whole grid when it has
// no threads, else a grid-stride loop over them, then a barrier across the
// grid: every block syncs, its thread 0 fences, arrives on the counter and
// waits for the next multiple of the grid size, and fences again.
// CHECK:   %[[GATHER:.*]] = arith.muli %[[N]], %c8
// CHECK:   %[[ANY:.*]] = arith.cmpi ugt, %[[GATHER]], %c0
// CHECK:   scf.if %[[ANY]] {
// CHECK:     scf.for %{{.*}} = %[[GID]] to %[[GATHER]] step %[[STRIDE]] {
// CHECK:     gpu.barrier
// CHECK:     scf.if %{{.*}} {
// CHECK:       nvvm.memory.barrier <gpu>
// CHECK:       %[[BLOCKS:.*]] = arith.index_cast %[[GRID]] : index to i32
// CHECK:       %[[OLD:.*]] = memref.atomic_rmw addi %c1_i32, %[[BARRIER]][%c0] : (i32, memref<1xi32>) -> i32
// CHECK:       %[[Q:.*]] = arith.divui %[[OLD]], %[[BLOCKS]] : i32
// CHECK:       %[[NEXT:.*]] = arith.addi %[[Q]], %c1_i32 : i32
// CHECK:       %[[TARGET:.*]] = arith.muli %[[NEXT]], %[[BLOCKS]] : i32
// It sleeps ~32 ns between polls, and its 2^25-th poll (half a minute or
// so) traps: a kernel that cannot complete a barrier fails, not hangs.
// CHECK:       scf.while (%[[POLLS:.*]] = %c0_i32) : (i32) -> i32 {
// CHECK:         %[[NOW:.*]] = memref.atomic_rmw addi %c0_i32, %[[BARRIER]][%c0]
// CHECK:         %[[WAIT:.*]] = arith.cmpi ult, %[[NOW]], %[[TARGET]] : i32
// CHECK:         %[[STUCK:.*]] = arith.cmpi uge, %[[POLLS]], %c33554432_i32 : i32
// CHECK:         scf.if %[[STUCK]] {
// CHECK:           llvm.intr.trap
// CHECK:         scf.condition(%[[WAIT]]) %[[POLLS]] : i32
// CHECK:       } do {
// CHECK:         nvvm.nanosleep %c32_i32
// CHECK:         arith.addi %{{.*}}, %c1_i32 : i32
// CHECK:       nvvm.memory.barrier <gpu>
// CHECK:     gpu.barrier
// A pass views the prefix of a buffer that it uses.
// CHECK:   memref.reinterpret_cast %{{.*}} to offset: [0], sizes: [%[[N]], 4], strides: [4, 1] : memref<?x4xf32> to memref<?x4xf32>
// Warp phases (a warp per output) keep whole warps: their thread counts
// are multiples of 32, as is the grid.
// CHECK:   gpu.shuffle xor
// The exit test's count of kept tokens, loaded by every thread after the
// barrier that ended the phase writing it, is the next pass's row count.
// CHECK:   memref.load %[[COUNT]][%c0] : memref<1xi32>
// CHECK:   scf.yield %{{.*}} : index
// CHECK: gpu.return

// For moe-emulate-gpu, which runs threads one after another: a grid of one
// thread, which does every thread's work and waits for no one; no fences.
// An A100 has 108 SMs.
// SM80-LABEL: func.func @compacting(
// SM80: @moe_kernels::@resident_loop_{{[0-9]+}} blocks in (%c216, %c1{{.*}}, %c1{{.*}}) threads in (%c256,

// EMU-LABEL: func.func @compacting(
// EMU: @moe_kernels::@resident_loop_{{[0-9]+}} blocks in (%c1{{.*}}, %c1{{.*}}, %c1{{.*}}) threads in (%c1{{.*}}, %c1{{.*}}, %c1{{.*}})
// EMU-LABEL: gpu.func @resident_loop_
// EMU-NOT: nvvm.
// EMU-NOT: llvm.intr.trap
// EMU-NOT: gpu.shuffle
// EMU: gpu.return
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
