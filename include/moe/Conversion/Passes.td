//===- Passes.td - moe conversion passes -------------------*- tablegen -*-===//
#ifndef MOE_CONVERSION_PASSES_TD
#define MOE_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertMoEToCPU : Pass<"convert-moe-to-cpu", "::mlir::ModuleOp"> {
  let summary = "Lower a moe model to buffers and calls of the CPU kernel library";
  let description = [{
    Rewrites every model function `@f(hidden) -> (hidden, exit_loop)` (the
    form moe-import emits: optional ops, one `moe.loop`, optional ops) into
    a buffer-level function with MLIR's C interface:

    ```
    @f(%hidden_in: memref<?xDxf32>, %hidden_out: memref<?xDxf32>,
       %exit_loop: memref<?xi32>, %expert_ids: memref<?x?xKxi32>,
       %expert_gates: memref<?x?xKxf32>, %w0: memref<...xf32>, ...)
    ```

    The weights follow in the order of the module's `moe.weight` ops (their
    symbols are removed) as f32 buffers, which the runtime widens bf16 files
    into at bind time (but see `bf16-weights` below). `expert_ids` /
    `expert_gates` are the routing trace
    [passes * layers, tokens, top_k] (-1 / 0 where a token did not run).

    Each MoE op becomes a call into the runtime's CPU kernels
    (`moert_rms_norm`, `moert_route`, `moert_experts`, `moert_exit_test`), whose
    grouped expert GEMMs run only on the tokens routed to each expert.
    `moe.loop` becomes an `scf.for` over passes that gathers the still-active
    tokens into a compact buffer, runs the body on them only, scatters the
    result back, and drops exited tokens (`moert_exit_update`), so exited
    tokens cost no further work.

    With `bf16-weights` (the default), bf16 weights that only kernels
    with a bf16 form read (fused expert groups, attention projections,
    `moe.embed`, `moe.unembed`) stay bf16 buffers, which the `moert_*_bf16`
    kernels widen as they read them: the same results from half the bytes,
    in half the memory. The module's `moe.host_bf16_weights` lists their positions
    among the weights, for the manifest (`"device_dtype": "BF16"`).
  }];
  let options = [
    Option<"bf16Weights", "bf16-weights", "bool",
           /*default=*/"true",
           "Keep bf16 weights that only fused expert groups, attention "
           "projections, embeddings and LM heads read as bf16 buffers (their "
           "kernels' _bf16 forms)">
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::func::FuncDialect",
    "::mlir::memref::MemRefDialect", "::mlir::scf::SCFDialect"
  ];
}

def ConvertMoEToGPU : Pass<"convert-moe-to-gpu", "::mlir::ModuleOp"> {
  let summary = "Lower a moe model to GPU kernels and their launches";
  let description = [{
    Builds the host program of convert-moe-to-cpu (the same function
    signature, buffers, pass loop, token compaction and routing trace) and
    replaces each CPU kernel call with launches of kernels generated into
    `gpu.module @moe_kernels`, specialised for the call: static shapes,
    activation, scoring, plan tile and exit threshold are constants of the
    kernel. Buffers become `gpu.alloc`s; the work of each straight-line
    stretch is queued on one stream (`gpu.wait async` ... `gpu.wait`), and the
    host waits only to read how many tokens are still active after an exit
    test, and at the end. Every pointer the function receives is a device
    pointer.

    bf16 weights stay bf16 in device memory (half the bytes to stream); the
    kernels widen each element to f32 as they load it and accumulate in f32
    (`bf16-weights=false` binds them as f32 instead). A compiled model's
    manifest marks such weights `"device_dtype": "BF16"`.

    The expert GEMMs have three forms, launched side by side with the rows
    each gets: a warp per output for few rows (decode), warp tiles on the
    tensor cores (mma.sync.m16n8k16, f32 accumulation) for more rows when
    the weights are bf16 and the shapes divide into tiles, else a thread per
    output. With `wgmma` (chip sm_90a), the weight GEMMs whose columns and
    depth are multiples of 64 (not the router's) get a fourth form for the rows past a
    hand-over the cost model picks: Hopper warpgroup tiles, 64 x 64 per
    block of 128 threads, from shared memory, the weight tiles loaded by TMA through tensor maps the host
    encodes (the runtime's `moert_cuda_tensor_map_bf16_3d`); not inside
    loops that become resident kernels. The f32 activations enter the tensor cores as a bf16 high part
    and a bf16 remainder (two mma.sync per step, close to f32 accuracy), or
    with `bf16-activations` rounded to bf16 (one mma.sync, bf16 accuracy;
    the experts' plan-ordered intermediates are then bf16 buffers too).
    The dense GEMMs of decoders (attention projections, LM head) have the
    same forms; the router's logits never use tensor cores, so that top-k
    decisions keep f32 activations. A cost model
    of the `chip` picks the row count where the first form hands over and
    the warp tile's width. `emulate-warp-ops` emits, instead of mma.sync and
    the shuffles, the arithmetic each lane receives from them, so that
    moe-emulate-gpu can run those kernels on the CPU.

    A pass loop that is not unrolled (moe.loop mode resident) becomes one
    resident kernel: it runs every pass, each launch of the body a
    grid-stride phase followed by a barrier across the grid, with the count
    of active tokens read on the device. The runtime launches it
    cooperatively with as many blocks as fit at once. `resident-loops=false`
    keeps the host loop of launches instead, which reads the count back
    after each pass.

    Experts must be in fused form (`moe.fused_experts`, as
    moe-fuse-dispatch-gemm makes them). Decoders get kernels for embedding,
    attention over the KV caches (which are device buffers too), the LM head
    and LM-head exits.
  }];
  let options = [
    Option<"bf16Weights", "bf16-weights", "bool", /*default=*/"true",
           "Keep bf16 weights bf16 on the device">,
    Option<"tensorCores", "tensor-cores", "bool", /*default=*/"true",
           "Run the expert GEMMs on tensor cores (mma.sync) where the cost "
           "model picks them">,
    Option<"bf16Activations", "bf16-activations", "bool", /*default=*/"false",
           "Round activations to bf16 for the tensor cores (one mma.sync per "
           "step, bf16 accuracy) instead of splitting each into two bf16 "
           "parts (two mma.sync per step, close to f32 accuracy); the "
           "experts' intermediates are then stored in bf16">,
    Option<"wgmma", "wgmma", "bool", /*default=*/"false",
           "On sm_90a, give the weight GEMMs (not the router's) a warpgroup "
           "form (wgmma.mma_async from shared memory, weight tiles by TMA) "
           "for the rows past a hand-over from the mma.sync warp tiles that "
           "the cost model picks, outside resident loops; not yet validated "
           "on a GPU">,
    Option<"splitChunkRows", "split-chunk-rows", "int64_t", /*default=*/"4",
           "Rows of one expert (1 to 8) that a warp of the decode form takes "
           "at once, reading each weight chunk once for them (resident loop "
           "kernels take one)">,
    Option<"reportForms", "report-forms", "bool", /*default=*/"false",
           "Say in a remark which forms each GEMM got from the cost model">,
    Option<"residentLoops", "resident-loops", "bool", /*default=*/"true",
           "Run each pass loop that is not unrolled as one resident kernel "
           "(grid barriers between its phases, the active-token count kept "
           "on the device) instead of launches from a host loop that reads "
           "the count back after every pass">,
    Option<"emulateWarpOps", "emulate-warp-ops", "bool", /*default=*/"false",
           "Emit kernels for moe-emulate-gpu: warp-collective operations "
           "(mma.sync, shuffles) as the arithmetic each lane gets from them, "
           "resident loop kernels as a grid of one thread (no fences, "
           "watchdog or launch bounds), and loads with no alignment claims">,
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90a\"",
           "The chip whose limits the cost model assumes (sm_<number>; "
           "before sm_80, no tensor cores)">
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::func::FuncDialect",
    "::mlir::gpu::GPUDialect", "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect", "::mlir::scf::SCFDialect",
    "::mlir::LLVM::LLVMDialect", "::mlir::NVVM::NVVMDialect",
    "::mlir::vector::VectorDialect"
  ];
}

def MoEEmulateGPU : Pass<"moe-emulate-gpu", "::mlir::ModuleOp"> {
  let summary = "Run the kernels of a gpu.module on the CPU, one thread at a time";
  let description = [{
    For testing GPU code generation on machines without a GPU: every
    `gpu.func` kernel becomes a `func.func` that takes its block id, block
    size, thread id and grid size as trailing index arguments, and every
    `gpu.launch_func` becomes loops over the grid and the block that call it.
    `gpu.alloc`, `gpu.dealloc`, `gpu.memcpy` and one-dimensional
    `gpu.memset` become their memref counterparts and `gpu.wait` disappears.
    Only one-dimensional kernels that use no shared memory or warp-level
    operations (those of convert-moe-to-gpu) can be emulated, and a kernel
    with barriers only in a grid of one thread; anything else is an error.

    Every buffer access of an emulated kernel checks its indices against the
    buffer's sizes: an access outside it is not made (a load gives 0), and
    the kernel calls `moert_emulated_out_of_bounds` with its name, for which
    the runtime fails the run (on a GPU such an access would read another
    allocation or fault; on the CPU it could go unnoticed).
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::func::FuncDialect",
    "::mlir::LLVM::LLVMDialect", "::mlir::memref::MemRefDialect",
    "::mlir::scf::SCFDialect"
  ];
}

#endif // MOE_CONVERSION_PASSES_TD
