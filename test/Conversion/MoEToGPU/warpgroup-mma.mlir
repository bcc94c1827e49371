// The expert GEMMs' warpgroup form (Hopper warpgroup tiles, wgmma=true,
// chip sm_90a): d = 64 and f = 128 divide into tiles of 64 x 64. Canonicalised
// as moe-cuda-pipeline does next.
// RUN: moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu=wgmma -canonicalize -cse | FileCheck %s
// RUN: moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu="wgmma bf16-activations" -canonicalize -cse | FileCheck %s --check-prefix=BF16ACT
// RUN: moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu="wgmma emulate-warp-ops" -canonicalize -cse | FileCheck %s --check-prefix=EMU
// RUN: not moe-opt %S/Inputs/wgmma-prefill.mlir -convert-moe-to-gpu="wgmma chip=sm_80" 2>&1 | FileCheck %s --check-prefix=SM80
// RUN: moe-opt %S/Inputs/wgmma-wide.mlir -convert-moe-to-gpu=wgmma -canonicalize -cse | FileCheck %s --check-prefix=WIDE
// RUN: moe-opt %S/Inputs/wgmma-loop.mlir -convert-moe-to-gpu=wgmma | FileCheck %s --check-prefix=RESIDENT
// RUN: moe-opt %S/Inputs/wgmma-loop.mlir -convert-moe-to-gpu="wgmma resident-loops=false" | FileCheck %s --check-prefix=HOSTLOOP

// The rows past the split form's go to the mma.sync tiles up to the cost
// model's hand-over (1280 rows for gate/up here), the rest to the warpgroup
// tiles: both forms are launched, one of them with no rows. When the
// warpgroup tiles get rows, the host asks for a tensor map per weight (dims
// innermost first: depth, columns, experts; boxes of 64 x 64; else null), and
// launches a block of one warpgroup (128 threads) per tile, the maps last
// among the arguments, with the dynamic shared memory of the kernel's stages:
// gate/up (d = 64, one slice) one stage of A's two parts and two B tiles
// (32768 bytes), its mbarrier (8) and 1024 bytes of alignment slack; down
// (f = 128, two slices) two stages of A's two parts and a B tile (2 x 24576),
// two mbarriers and the slack.
// CHECK-LABEL: func.func @prefill(
// CHECK: %[[SPLIT:.*]] = arith.cmpi ule, %[[ROWS:.*]], %c178 : index
// CHECK: %[[OTHER:.*]] = arith.select %[[SPLIT]], %c0, %[[ROWS]] : index
// CHECK-NEXT: %[[MMA:.*]] = arith.cmpi ule, %[[OTHER]], %c1279 : index
// CHECK-NEXT: %[[MMAROWS:.*]] = arith.select %[[MMA]], %[[OTHER]], %c0 : index
// CHECK-NEXT: %[[WGROWS:.*]] = arith.select %[[MMA]], %c0, %[[OTHER]] : index
// CHECK: %[[ANY:.*]] = arith.cmpi ugt, %[[WGROWS]], %c0 : index
// CHECK-NEXT: %[[GATE:.*]] = scf.if %[[ANY]] -> (!llvm.ptr) {
// CHECK-NEXT: %[[MAP:.*]] = func.call @moert_cuda_tensor_map_bf16_3d(%{{.*}}, %c64_i64, %c128_i64, %c4_i64, %c64_i64, %c64_i64)
// CHECK-NEXT: scf.yield %[[MAP]] : !llvm.ptr
// CHECK-NEXT: } else {
// CHECK-NEXT: scf.yield %[[NULL:.*]] : !llvm.ptr
// CHECK: %[[UP:.*]] = scf.if %[[ANY]] -> (!llvm.ptr) {
// CHECK-NEXT: func.call @moert_cuda_tensor_map_bf16_3d(%{{.*}}, %c64_i64, %c128_i64, %c4_i64, %c64_i64, %c64_i64)
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_gate_up_wgmma_{{[0-9]+}} blocks in (%{{.*}}, %c1, %c1) threads in (%c128, %c1, %c1) dynamic_shared_memory_size %c33800_i32 args({{.*}}, %[[GATE]] : !llvm.ptr, %[[UP]] : !llvm.ptr)
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_gate_up_mma_{{[0-9]+}}
// CHECK: %[[DOWN:.*]] = scf.if
// CHECK-NEXT: func.call @moert_cuda_tensor_map_bf16_3d(%{{.*}}, %c128_i64, %c64_i64, %c4_i64, %c64_i64, %c64_i64)
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_down_wgmma_{{[0-9]+}} blocks in (%{{.*}}, %c1, %c1) threads in (%c128, %c1, %c1) dynamic_shared_memory_size %c50192_i32 args({{.*}}, %[[DOWN]] : !llvm.ptr)
// CHECK: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_down_mma_{{[0-9]+}}
// CHECK: return

// gate/up: one slice of 64 (d = 64). The dynamic shared memory's window is
// used from its first 1024-byte aligned byte (the swizzle's alignment): A's
// high part at 0, its remainder at 8192, the B tiles at 16384 and 24576, the
// stage's mbarrier at 32768. Thread 0 initialises the barrier, acquires the
// tensor maps, arms the barrier for both B tiles (2 x 8192 bytes) and issues
// their TMA loads at (slice, column tile, expert); every thread stores its A
// chunks and fences them for the async proxy; bar.sync; all wait on the
// barrier's phase, then 4 steps of 16 per matrix, each twice (high part and
// remainder).
// The kernel records the bytes its launches ask for.
// CHECK-LABEL: gpu.func @experts_gate_up_wgmma_
// CHECK-SAME: moe.dynamic_shared_bytes = 33800 : i64
// CHECK: %[[WINDOW:.*]] = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
// CHECK-NEXT: %[[START:.*]] = memref.extract_aligned_pointer_as_index %[[WINDOW]]
// CHECK-NEXT: %[[PAST:.*]] = arith.remui %[[START]], %c1024 : index
// CHECK-NEXT: %[[TOEND:.*]] = arith.subi %c1024, %[[PAST]] : index
// CHECK-NEXT: %[[SHIFT:.*]] = arith.remui %[[TOEND]], %c1024 : index
// CHECK: %[[BAROFF:.*]] = arith.addi %[[SHIFT]], %c32768 : index
// CHECK-NEXT: memref.view %[[WINDOW]][%[[BAROFF]]][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<1xi64, #gpu.address_space<workgroup>>
// CHECK: nvvm.mbarrier.init %[[BAR:.*]], %c1_i32 : !llvm.ptr<3>, i32
// CHECK-NEXT: nvvm.fence.mbarrier.init
// The leader acquires the tensor maps the host copied to global memory.
// CHECK-NEXT: nvvm.fence.proxy.acquire <sys> %[[GMAP:.*]], %c128_i32
// CHECK-NEXT: nvvm.fence.proxy.acquire <sys> %[[UMAP:.*]], %c128_i32
// CHECK-NEXT: nvvm.mbarrier.arrive.expect_tx %[[BAR]], %c16384_i32 : !llvm.ptr<3>, i32
// CHECK: %[[GOFF:.*]] = arith.addi %[[SHIFT]], %c16384 : index
// CHECK-NEXT: memref.view %[[WINDOW]][%[[GOFF]]][]
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.*}}, %[[GMAP]], %[[BAR]], box[%c0_i32, %[[COL:.*]], %[[EXPERT:.*]]] : !llvm.ptr<7>, !llvm.ptr
// CHECK: %[[UOFF:.*]] = arith.addi %[[SHIFT]], %c24576 : index
// CHECK-NEXT: memref.view %[[WINDOW]][%[[UOFF]]][]
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global %{{.*}}, %[[UMAP]], %[[BAR]], box[%c0_i32, %[[COL]], %[[EXPERT]]] : !llvm.ptr<7>, !llvm.ptr
// CHECK: %[[AHIGH:.*]] = memref.view %[[WINDOW]][%[[SHIFT]]][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<4096xbf16, #gpu.address_space<workgroup>>
// CHECK-NEXT: %[[LOWOFF:.*]] = arith.addi %[[SHIFT]], %c8192 : index
// CHECK-NEXT: %[[ALOW:.*]] = memref.view %[[WINDOW]][%[[LOWOFF]]][]
// CHECK-COUNT-4: vector.store %{{.*}}, %[[AHIGH]][%[[AT:.*]]] : memref<4096xbf16, #gpu.address_space<workgroup>>, vector<8xbf16>
// CHECK-NEXT: arith.extf
// CHECK-NEXT: arith.subf
// CHECK-NEXT: arith.truncf
// CHECK-NEXT: vector.store %{{.*}}, %[[ALOW]][%[[AT]]]
// The wait tries for up to 1 ms at a time and traps at the 2^15-th try (a
// load that never lands fails the run instead of hanging the GPU).
// CHECK: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NEXT: gpu.barrier
// CHECK: scf.while (%[[TRIES:.*]] = %c0_i32, %[[DONE:.*]] = %false)
// CHECK-NEXT: %[[WAITING:.*]] = arith.xori %[[DONE]], %true : i1
// CHECK-NEXT: %[[STUCK:.*]] = arith.cmpi uge, %[[TRIES]], %c32768_i32 : i32
// CHECK-NEXT: %[[TRAP:.*]] = arith.andi %[[WAITING]], %[[STUCK]] : i1
// CHECK-NEXT: scf.if %[[TRAP]] {
// CHECK-NEXT: llvm.intr.trap
// CHECK: scf.condition(%[[WAITING]])
// CHECK: nvvm.mbarrier.try_wait %{{.*}}, %c0_i32, %c1000000_i32 : !llvm.ptr<3>, i32, i32 -> i1
// CHECK: nvvm.wgmma.fence.aligned
// CHECK-COUNT-16: nvvm.wgmma.mma_async {{.*}}, <m = 64, n = 64, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>]
// CHECK-NOT: nvvm.wgmma.mma_async
// CHECK: nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT: nvvm.wgmma.wait.group.sync.aligned 0
// CHECK-NEXT: gpu.barrier
// CHECK-NOT: nvvm.cp.async.bulk.tensor
// CHECK: gpu.return

// down: two slices of 64 (f = 128) through two stages of 24576 bytes (A's
// two parts, then B), their mbarriers at 49152 and 49160. Slice 0 is loaded
// before the loop; in slice j's iteration the threads wait on stage j % 2's
// barrier for parity (j / 2) % 2, issue its wgmmas on that stage's tiles,
// commit them, then (when j + 1 < 2) load slice j + 1 into stage (j + 1) % 2
// while they run, wait for them and meet at bar.sync.
// A's 16-byte chunk c of row r goes to chunk c ^ (r % 8); the descriptors
// (128-byte swizzle, 1024 bytes between 8-row groups) advance 32 bytes a step.
// CHECK-LABEL: gpu.func @experts_down_wgmma_
// CHECK-SAME: moe.dynamic_shared_bytes = 50192 : i64
// CHECK-DAG: %[[FIXED:.*]] = arith.constant 4611686293305360384 : i64
// CHECK: %[[WINDOW:.*]] = gpu.dynamic_shared_memory
// CHECK: arith.subi %c1024
// CHECK-NEXT: %[[SHIFT:.*]] = arith.remui %{{.*}}, %c1024 : index
// CHECK: arith.addi %[[SHIFT]], %c49152 : index
// CHECK: nvvm.mbarrier.init
// CHECK: arith.addi %[[SHIFT]], %c49160 : index
// CHECK: nvvm.mbarrier.init
// CHECK-NOT: nvvm.mbarrier.init
// CHECK: nvvm.mbarrier.arrive.expect_tx %{{.*}}, %c8192_i32
// CHECK: %[[ROW:.*]] = arith.divui %[[T:.*]], %c8 : index
// CHECK-NEXT: %[[CHUNK:.*]] = arith.remui %[[T]], %c8 : index
// CHECK: %[[RM:.*]] = arith.remui %[[ROW]], %c8 : index
// CHECK-NEXT: %[[SW:.*]] = arith.xori %[[CHUNK]], %[[RM]] : index
// CHECK-NEXT: %[[ROWAT:.*]] = arith.muli %[[ROW]], %c64 : index
// CHECK-NEXT: %[[CHAT:.*]] = arith.muli %[[SW]], %c8 : index
// CHECK-NEXT: %[[AT:.*]] = arith.addi %[[ROWAT]], %[[CHAT]] : index
// CHECK: vector.store %{{.*}}, %{{.*}}[%[[AT]]] : memref<4096xbf16, #gpu.address_space<workgroup>>, vector<8xbf16>
// CHECK: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>
// CHECK-NEXT: gpu.barrier
// CHECK: scf.for %[[SLICE:.*]] = %c0 to %c2 step %c1 iter_args(
// CHECK-NEXT: %[[STAGE:.*]] = arith.remui %[[SLICE]], %c2 : index
// CHECK-NEXT: %[[ROUND:.*]] = arith.divui %[[SLICE]], %c2 : index
// CHECK-NEXT: %[[PHASE:.*]] = arith.remui %[[ROUND]], %c2 : index
// CHECK-NEXT: %[[PHASE32:.*]] = arith.index_cast %[[PHASE]] : index to i32
// CHECK-NEXT: %[[BARAT:.*]] = arith.muli %[[STAGE]], %c8 : index
// CHECK-NEXT: %[[BAROFF:.*]] = arith.addi %[[BARAT]], %c49152 : index
// CHECK-NEXT: arith.addi %[[SHIFT]], %[[BAROFF]] : index
// CHECK: scf.while
// CHECK: nvvm.mbarrier.try_wait %{{.*}}, %[[PHASE32]], %c1000000_i32
// CHECK: nvvm.wgmma.fence.aligned
// CHECK-NEXT: %[[STAGEAT:.*]] = arith.muli %[[STAGE]], %c24576 : index
// CHECK-NEXT: %[[AOFF:.*]] = arith.addi %[[SHIFT]], %[[STAGEAT]] : index
// CHECK-NEXT: memref.view %[[WINDOW]][%[[AOFF]]][]
// CHECK: %[[BOFFIN:.*]] = arith.addi %[[STAGEAT]], %c16384 : index
// CHECK-NEXT: %[[BOFF:.*]] = arith.addi %[[SHIFT]], %[[BOFFIN]] : index
// CHECK-NEXT: memref.view %[[WINDOW]][%[[BOFF]]][]
// CHECK-NEXT: memref.extract_aligned_pointer_as_index
// CHECK-NEXT: %[[ADDR:.*]] = arith.index_castui %{{.*}} : index to i64
// CHECK: %[[SHIFTED:.*]] = arith.shrui %[[ADDR]], %c4_i64 : i64
// CHECK-NEXT: %[[START:.*]] = arith.andi %[[SHIFTED]], %c16383_i64 : i64
// CHECK-NEXT: %[[DESC:.*]] = arith.ori %[[START]], %[[FIXED]] : i64
// CHECK: nvvm.wgmma.mma_async %{{.*}}, %[[DESC]], %{{.*}}, <m = 64
// CHECK: arith.addi %[[ADDR]], %c32_i64 : i64
// CHECK-COUNT-6: nvvm.wgmma.mma_async
// CHECK-NOT: nvvm.wgmma.mma_async
// CHECK: nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT: %[[AHEAD:.*]] = arith.addi %[[SLICE]], %c1 : index
// CHECK-NEXT: %[[MORE:.*]] = arith.cmpi ult, %[[AHEAD]], %c2 : index
// CHECK-NEXT: scf.if %[[MORE]] {
// CHECK-NEXT: %[[NEXTSTAGE:.*]] = arith.remui %[[AHEAD]], %c2 : index
// CHECK: nvvm.mbarrier.arrive.expect_tx %{{.*}}, %c8192_i32
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK: arith.muli %[[NEXTSTAGE]], %c24576 : index
// CHECK: vector.store
// CHECK: nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NEXT: }
// CHECK-NEXT: nvvm.wgmma.wait.group.sync.aligned 0
// CHECK-NEXT: gpu.barrier
// CHECK: scf.yield
// CHECK: gpu.return

// bf16-activations: one A tile and one wgmma per step and matrix.
// BF16ACT-LABEL: gpu.func @experts_gate_up_wgmma_
// BF16ACT: nvvm.mbarrier.arrive.expect_tx %{{.*}}, %c16384_i32
// BF16ACT: arith.addi %{{.*}}, %c8192 : index
// BF16ACT: nvvm.cp.async.bulk.tensor
// BF16ACT: arith.addi %{{.*}}, %c16384 : index
// BF16ACT: nvvm.cp.async.bulk.tensor
// BF16ACT-COUNT-4: vector.store
// BF16ACT-NOT: vector.store
// BF16ACT: nvvm.fence.proxy
// BF16ACT-COUNT-8: nvvm.wgmma.mma_async
// BF16ACT-NOT: nvvm.wgmma.mma_async
// BF16ACT: gpu.return

// Emulated: no shared memory, barriers, TMA or tensor maps; each thread of
// the 128-thread blocks computes its own accumulators.
// EMU-LABEL: func.func @prefill(
// EMU-NOT: moert_cuda_tensor_map_bf16_3d
// EMU: gpu.launch_func async [%{{.*}}] @moe_kernels::@experts_gate_up_wgmma_{{[0-9]+}} blocks in (%{{.*}}, %c1, %c1) threads in (%c128, %c1, %c1) args(
// EMU-LABEL: gpu.func @experts_gate_up_wgmma_
// EMU-NOT: nvvm.
// EMU-NOT: gpu.barrier
// EMU-NOT: moe.dynamic_shared_bytes
// EMU-NOT: gpu.dynamic_shared_memory
// EMU: gpu.return

// SM80: error: convert-moe-to-gpu: wgmma kernels need chip sm_90a, not 'sm_80'

// Wide tiles: the down GEMM of d = 512 columns gets 64 x 128 tiles (the cost
// model's pick; gate/up, two matrices, keeps 64 columns): its tensor map's
// boxes are 128 weight rows of 64, a block per (row tile, 4 column tiles),
// two stages of A's two parts and a 16 KiB B tile (2 x 32776 + 1024 bytes),
// and per slice one 16384-byte TMA load and 4 steps of m64n128k16 per A part,
// into 64 accumulators a thread, each stored by the epilogue.
// WIDE-LABEL: func.func @wide(
// WIDE: launch_func async [%{{.*}}] @moe_kernels::@experts_gate_up_wgmma_{{[0-9]+}} {{.*}} dynamic_shared_memory_size %c99352_i32
// WIDE: func.call @moert_cuda_tensor_map_bf16_3d(%{{.*}}, %c128_i64, %c512_i64, %c4_i64, %c64_i64, %c128_i64)
// WIDE: launch_func async [%{{.*}}] @moe_kernels::@experts_down_wgmma_{{[0-9]+}} {{.*}} dynamic_shared_memory_size %c66576_i32
// WIDE-LABEL: gpu.func @experts_gate_up_wgmma_
// WIDE-NOT: n = 128
// WIDE-LABEL: gpu.func @experts_down_wgmma_
// WIDE: %[[BLOCK:.*]] = arith.divui %{{.*}}, %c128 : index
// WIDE: arith.remui %[[BLOCK]], %c4 : index
// WIDE: nvvm.mbarrier.arrive.expect_tx %{{.*}}, %c16384_i32
// WIDE: memref.view {{.*}} to memref<8192xbf16, #gpu.address_space<workgroup>>
// WIDE: nvvm.cp.async.bulk.tensor.shared.cluster.global
// WIDE: scf.for
// WIDE-COUNT-8: nvvm.wgmma.mma_async {{.*}}, <m = 64, n = 128, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>] : !llvm.struct<([[ACC:(f32, ){63}f32]])>
// WIDE-NOT: nvvm.wgmma.mma_async
// WIDE: scf.yield
// WIDE-COUNT-64: memref.store
// WIDE-NOT: memref.store
// WIDE: gpu.return

// A resident loop keeps mma.sync warp tiles (its phases are grid-stride loops
// of independent threads, with no block-wide barriers); a host loop of
// launches gets the warpgroup tiles.
// RESIDENT-LABEL: func.func @looped(
// RESIDENT-NOT: moert_cuda_tensor_map_bf16_3d
// RESIDENT: @moe_kernels::@resident_loop_
// RESIDENT-NOT: wgmma
// RESIDENT: nvvm.mma.sync
// RESIDENT-NOT: wgmma
// HOSTLOOP-LABEL: func.func @looped(
// HOSTLOOP: scf.for
// HOSTLOOP: call @moert_cuda_tensor_map_bf16_3d
// HOSTLOOP: @moe_kernels::@experts_gate_up_wgmma_
