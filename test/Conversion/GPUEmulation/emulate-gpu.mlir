// RUN: moe-opt %s -split-input-file -moe-emulate-gpu -verify-diagnostics | FileCheck %s

// A kernel becomes a host function taking block id, block size, thread id
// and grid size; its launch becomes loops over the grid and the block; device memory
// operations become memref ones and stream tokens vanish.
// CHECK-NOT: gpu.container_module
// CHECK-LABEL: func.func private @kernels_double(
// CHECK-SAME: %[[N:.*]]: index, %[[A:.*]]: memref<?xf32>, %[[BID:[^:]*]]: index, %[[BDIM:[^:]*]]: index, %[[TID:[^:]*]]: index, %[[GRID:[^:]*]]: index)
// CHECK: %[[BASE:.*]] = arith.muli %[[BID]], %[[BDIM]] : index
// CHECK: %[[I:.*]] = arith.addi %[[BASE]], %[[TID]] : index
// CHECK: arith.cmpi ult, %[[I]], %[[N]]
// CHECK: return
// CHECK-NOT: gpu.
// CHECK-LABEL: func.func @host(
// CHECK-SAME: %[[H:.*]]: memref<?xf32>)
// CHECK: %[[D:.*]] = memref.alloc(%{{.*}}) : memref<?xf32>
// CHECK: memref.copy %[[H]], %[[D]]
// CHECK: scf.for %[[B:.*]] = %{{.*}} to %[[BLOCKS:.*]] step
// CHECK:   scf.for %[[T:.*]] = %{{.*}} to %[[BLOCK:.*]] step
// CHECK:     func.call @kernels_double(%{{.*}}, %[[D]], %[[B]], %[[BLOCK]], %[[T]], %[[BLOCKS]])
// CHECK: memref.copy %[[D]], %[[H]]
// CHECK: memref.dealloc %[[D]]
// CHECK-NOT: gpu.
// CHECK: return
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @double(%n: index, %a: memref<?xf32>) kernel {
      %b = gpu.block_id x
      %d = gpu.block_dim x
      %t = gpu.thread_id x
      %base = arith.muli %b, %d : index
      %i = arith.addi %base, %t : index
      %in = arith.cmpi ult, %i, %n : index
      scf.if %in {
        %v = memref.load %a[%i] : memref<?xf32>
        %w = arith.addf %v, %v : f32
        memref.store %w, %a[%i] : memref<?xf32>
      }
      gpu.return
    }
  }
  func.func @host(%h: memref<?xf32>) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c256 = arith.constant 256 : index
    %n = memref.dim %h, %c0 : memref<?xf32>
    %s = gpu.wait async
    %d, %t0 = gpu.alloc async [%s] (%n) : memref<?xf32>
    %t1 = gpu.memcpy async [%t0] %d, %h : memref<?xf32>, memref<?xf32>
    %t2 = gpu.launch_func async [%t1] @kernels::@double blocks in (%n, %c1, %c1) threads in (%c256, %c1, %c1) args(%n : index, %d : memref<?xf32>)
    %t3 = gpu.memcpy async [%t2] %h, %d : memref<?xf32>, memref<?xf32>
    %t4 = gpu.dealloc async [%t3] %d : memref<?xf32>
    gpu.wait [%t4]
    return
  }
}

// -----

module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @rows(%a: memref<?xf32>) kernel {
      // expected-error @+1 {{moe-emulate-gpu: only one-dimensional kernels can be emulated}}
      %y = gpu.thread_id y
      gpu.return
    }
  }
}

// -----

// A kernel with barriers (a resident loop kernel) runs as a grid of one
// thread, for which a barrier waits for nothing: it vanishes. The grid size
// is the launch's; a memset becomes a loop of stores.
// CHECK-LABEL: func.func private @kernels_sync(
// CHECK-SAME: %[[GRIDSIZE:[^:]*]]: index)
// CHECK-NOT: gpu.barrier
// CHECK: memref.store %[[GRIDSIZE]]
// CHECK-LABEL: func.func @one_thread(
// CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step
// CHECK:   memref.store %{{.*}}, %{{.*}}[%[[I]]] : memref<?xindex>
// CHECK: func.call @kernels_sync(
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @sync(%a: memref<?xindex>) kernel {
      %c0 = arith.constant 0 : index
      %g = gpu.grid_dim x
      gpu.barrier
      memref.store %g, %a[%c0] : memref<?xindex>
      gpu.return
    }
  }
  func.func @one_thread(%a: memref<?xindex>) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %s = gpu.wait async
    %t0 = gpu.memset async [%s] %a, %c0 : memref<?xindex>, index
    %t1 = gpu.launch_func async [%t0] @kernels::@sync blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%a : memref<?xindex>)
    gpu.wait [%t1]
    return
  }
}

// -----

// Threads run one after another: in a larger grid, a barrier would wait
// for threads that run later.
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @sync(%a: memref<?xf32>) kernel {
      gpu.barrier
      gpu.return
    }
  }
  func.func @many_threads(%a: memref<?xf32>) {
    %c1 = arith.constant 1 : index
    %c32 = arith.constant 32 : index
    // expected-error @+1 {{moe-emulate-gpu: a kernel with barriers can be emulated only in a grid of one thread}}
    gpu.launch_func @kernels::@sync blocks in (%c1, %c1, %c1) threads in (%c32, %c1, %c1) args(%a : memref<?xf32>)
    return
  }
}

// -----

module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @planes(%a: memref<?x?xf32>) kernel {
      gpu.return
    }
  }
  func.func @memset_2d(%a: memref<?x?xf32>) {
    %f = arith.constant 0.0 : f32
    // expected-error @+1 {{moe-emulate-gpu: only one-dimensional memsets can be emulated}}
    gpu.memset %a, %f : memref<?x?xf32>, f32
    return
  }
}

// -----

// Warp-collective operations need lanes that run later: convert-moe-to-gpu
// emits them as per-lane arithmetic for the emulator (emulate-warp-ops).
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @butterfly(%v: f32) kernel {
      %c1 = arith.constant 1 : i32
      %c32 = arith.constant 32 : i32
      // expected-error @+1 {{moe-emulate-gpu: cannot emulate a warp-collective operation one thread at a time (build the kernels with convert-moe-to-gpu{emulate-warp-ops})}}
      %s, %ok = gpu.shuffle xor %v, %c1, %c32 : f32
      gpu.return
    }
  }
}

// -----

module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @tensor_cores(%a: i32, %b: i32, %c: f32) kernel {
      // expected-error @+1 {{moe-emulate-gpu: cannot emulate a warp-collective operation one thread at a time (build the kernels with convert-moe-to-gpu{emulate-warp-ops})}}
      %d = nvvm.mma.sync A[%a, %a, %a, %a] B[%b, %b] C[%c, %c, %c, %c] {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
      gpu.return
    }
  }
}

// -----

module attributes {gpu.container_module} {
  gpu.module @kernels {
    // expected-error @+1 {{moe-emulate-gpu: kernels with memory attributions cannot be emulated}}
    gpu.func @shared(%a: memref<?xf32>) workgroup(%s: memref<32xf32, #gpu.address_space<workgroup>>) kernel {
      gpu.return
    }
  }
}
