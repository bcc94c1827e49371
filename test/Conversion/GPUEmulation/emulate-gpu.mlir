// RUN: moe-opt %s -split-input-file -moe-emulate-gpu -verify-diagnostics | FileCheck %s

// A kernel becomes a host function taking block id, block size, thread id
// and grid size; its launch becomes loops over the grid and the block; device memory
// operations become memref ones and stream tokens vanish.
// CHECK-NOT: gpu.container_module
// CHECK: func.func private @moert_emulated_out_of_bounds(!llvm.ptr)
// CHECK: llvm.mlir.global internal constant @[[NAME:kernels_double_name]]("double\00")
// CHECK-LABEL: func.func private @kernels_double(
// CHECK-SAME: %[[N:.*]]: index, %[[A:.*]]: memref<?xf32>, %[[BID:[^:]*]]: index, %[[BDIM:[^:]*]]: index, %[[TID:[^:]*]]: index, %[[GRID:[^:]*]]: index)
// CHECK: %[[BASE:.*]] = arith.muli %[[BID]], %[[BDIM]] : index
// CHECK: %[[I:.*]] = arith.addi %[[BASE]], %[[TID]] : index
// CHECK: arith.cmpi ult, %[[I]], %[[N]]
// Every access checks its indices against the buffer's sizes; outside them
// it is not made (a load gives 0) and the kernel reports its name.
// CHECK: %[[SIZE:.*]] = memref.dim %[[A]], %c0 : memref<?xf32>
// CHECK: %[[FITS:.*]] = arith.cmpi ult, %[[I]], %[[SIZE]] : index
// CHECK: %[[V:.*]] = scf.if %[[FITS]] -> (f32) {
// CHECK-NEXT: %[[LOADED:.*]] = memref.load %[[A]][%[[I]]] : memref<?xf32>
// CHECK-NEXT: scf.yield %[[LOADED]] : f32
// CHECK-NEXT: } else {
// CHECK-NEXT: %[[AT:.*]] = llvm.mlir.addressof @[[NAME]] : !llvm.ptr
// CHECK-NEXT: func.call @moert_emulated_out_of_bounds(%[[AT]]) : (!llvm.ptr) -> ()
// CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: scf.yield %[[ZERO]] : f32
// CHECK: arith.addf %[[V]], %[[V]] : f32
// CHECK: scf.if %{{.*}} {
// CHECK-NEXT: memref.store %{{.*}}, %[[A]][%[[I]]] : memref<?xf32>
// CHECK-NEXT: } else {
// CHECK: func.call @moert_emulated_out_of_bounds(
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

// -----

// A vector access must fit whole (its index plus its width at most the
// size), and one that does not gives a zero vector.
// CHECK-LABEL: func.func private @vectors_sum4(
// CHECK-SAME: %[[A:[^:]*]]: memref<8x?xf32>
// CHECK: %[[ROWS:.*]] = memref.dim %[[A]], %c0 : memref<8x?xf32>
// CHECK: %[[ROW_OK:.*]] = arith.cmpi ult, %[[ROW:.*]], %[[ROWS]] : index
// CHECK: %[[COLS:.*]] = memref.dim %[[A]], %c1 : memref<8x?xf32>
// CHECK: %[[END:.*]] = arith.addi %[[COL:.*]], %c4{{.*}} : index
// CHECK: %[[COL_OK:.*]] = arith.cmpi ule, %[[END]], %[[COLS]] : index
// CHECK: %[[OK:.*]] = arith.andi %[[ROW_OK]], %[[COL_OK]] : i1
// CHECK: scf.if %[[OK]] -> (vector<4xf32>) {
// CHECK-NEXT: vector.load %[[A]][%[[ROW]], %[[COL]]] : memref<8x?xf32>, vector<4xf32>
// CHECK: } else {
// CHECK: func.call @moert_emulated_out_of_bounds(
// CHECK-NEXT: arith.constant dense<0.000000e+00> : vector<4xf32>
module attributes {gpu.container_module} {
  gpu.module @vectors {
    gpu.func @sum4(%a: memref<8x?xf32>, %out: memref<8xf32>) kernel {
      %t = gpu.thread_id x
      %c4 = arith.constant 4 : index
      %col = arith.muli %t, %c4 : index
      %v = vector.load %a[%t, %col] : memref<8x?xf32>, vector<4xf32>
      %s = vector.extract %v[0] : f32 from vector<4xf32>
      memref.store %s, %out[%t] : memref<8xf32>
      gpu.return
    }
  }
}
