//===- CpuKernelRegistry.cpp - every CPU kernel the compiler calls --------===//
#include "moert/CpuKernelRegistry.h"
#include "moert/CpuDecoderKernels.h"
#include "moert/CpuKernels.h"
#include "moert/CpuLoopKernels.h"
#include "moert/CpuPlanKernels.h"

using moert::cpu::KernelSymbol;

#define MOERT_KERNEL(name)                                                     \
  KernelSymbol {                                                               \
    "_mlir_ciface_" #name, reinterpret_cast<void *>(&_mlir_ciface_##name)      \
  }

llvm::ArrayRef<KernelSymbol> moert::cpu::kernelSymbols() {
  static const KernelSymbol table[] = {
      MOERT_KERNEL(moert_rms_norm),
      MOERT_KERNEL(moert_route),
      MOERT_KERNEL(moert_experts),
      MOERT_KERNEL(moert_exit_test),
      MOERT_KERNEL(moert_loop_init),
      MOERT_KERNEL(moert_gather_rows),
      MOERT_KERNEL(moert_scatter_rows),
      MOERT_KERNEL(moert_record_step),
      MOERT_KERNEL(moert_exit_update),
      MOERT_KERNEL(moert_add),
      MOERT_KERNEL(moert_plan),
      MOERT_KERNEL(moert_dispatch),
      MOERT_KERNEL(moert_grouped_matmul),
      MOERT_KERNEL(moert_glu),
      MOERT_KERNEL(moert_combine),
      MOERT_KERNEL(moert_fused_experts),
      MOERT_KERNEL(moert_embed),
      MOERT_KERNEL(moert_unembed),
      MOERT_KERNEL(moert_attention),
      MOERT_KERNEL(moert_mlp),
      MOERT_KERNEL(moert_mlp_bf16),
      MOERT_KERNEL(moert_exit_test_lm),
      MOERT_KERNEL(moert_fused_experts_bf16),
      MOERT_KERNEL(moert_embed_bf16),
      MOERT_KERNEL(moert_unembed_bf16),
      MOERT_KERNEL(moert_attention_bf16),
  };
  return table;
}
