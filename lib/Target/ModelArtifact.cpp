//===- ModelArtifact.cpp - a compiled model's manifest and entry ----------===//
#include "moe/Target/ModelArtifact.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/ExecutionEngine/OptUtils.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/Host.h"

using namespace mlir;
using namespace mlir::moe;

std::string ModelManifest::toJSON() const {
  llvm::json::Array ws;
  for (const Weight &w : weights) {
    llvm::json::Object o{{"source", w.source},
                         {"dtype", w.dtype},
                         {"shape", llvm::json::Array(w.shape)}};
    if (w.transpose) // stored with its last two dimensions swapped
      o["transpose"] = true;
    if (w.deviceDtype != "F32")
      o["device_dtype"] = w.deviceDtype;
    ws.push_back(std::move(o));
  }
  llvm::json::Object root{{"entry", entry},   {"hidden_size", hiddenSize},
                          {"passes", passes}, {"layers", layers},
                          {"top_k", topK},    {"experts", experts},
                          {"target", target}, {"weights", std::move(ws)}};
  if (!gpuArchs.empty())
    root["gpu_archs"] = llvm::json::Array(gpuArchs);
  if (decoder) {
    root["kind"] = "decoder";
    root["vocab_size"] = vocabSize;
    root["max_positions"] = maxPositions;
    root["cache_widths"] = llvm::json::Array(cacheWidths);
  }
  std::string text;
  llvm::raw_string_ostream(text) << llvm::json::Value(std::move(root));
  return text;
}

FailureOr<ModelManifest> mlir::moe::describeModel(ModuleOp module) {
  ModelManifest manifest;
  for (auto func : module.getOps<func::FuncOp>()) {
    if (!func.isExternal() && !func.getOps<EmbedOp>().empty()) {
      manifest.entry = func.getName().str();
      manifest.decoder = true;
      auto logits = cast<RankedTensorType>(func.getResultTypes()[0]);
      manifest.vocabSize = logits.getDimSize(1);
      auto embed = *func.getOps<EmbedOp>().begin();
      manifest.hiddenSize =
          cast<RankedTensorType>(embed.getType()).getDimSize(1);
      auto maxPositions =
          module->getAttrOfType<IntegerAttr>("moe.max_positions");
      manifest.maxPositions = maxPositions ? maxPositions.getInt() : 4096;
      // Caches are pass-major: pass p's slot s is p * slots + s.
      auto loops = func.getBody().getOps<LoopOp>();
      if (loops.empty())
        return func.emitError("a decoder's layers must run in a moe.loop");
      LoopOp loop = *loops.begin();
      SmallVector<AttentionOp> attentions = loop.getAttentionsBySlot();
      manifest.passes = loop.getPasses();
      manifest.layers = attentions.size();
      for (int64_t p = 0; p < manifest.passes; ++p)
        for (AttentionOp a : attentions)
          manifest.cacheWidths.push_back(a.getNumKvHeads() * a.getHeadDim());
      // Then the attentions outside the loop (head/tail layers), by slot.
      SmallVector<AttentionOp> outer(func.getBody().getOps<AttentionOp>());
      llvm::sort(outer, [](AttentionOp a, AttentionOp b) {
        return a.getCacheSlot() < b.getCacheSlot();
      });
      for (AttentionOp a : outer)
        manifest.cacheWidths.push_back(a.getNumKvHeads() * a.getHeadDim());
      break;
    }
    auto loops = func.getBody().getOps<LoopOp>();
    if (func.isExternal() || loops.empty())
      continue;
    LoopOp loop = *loops.begin();
    manifest.entry = func.getName().str();
    manifest.hiddenSize =
        cast<RankedTensorType>(loop.getInit().getType()).getDimSize(1);
    manifest.passes = loop.getPasses();
    for (Operation &op : loop.getBody().front()) {
      if (!isExpertLayer(&op))
        continue;
      ++manifest.layers;
      manifest.topK = cast<RankedTensorType>(getExpertLayerIds(&op).getType())
                          .getDimSize(1);
      manifest.experts = getExpertLayerExperts(&op);
    }
    break;
  }
  if (manifest.entry.empty())
    return module.emitError("the model has no function with a moe.loop");
  for (WeightOp w : module.getOps<WeightOp>()) {
    RankedTensorType type = w.getTensorType();
    manifest.weights.push_back({w.getSource().value_or(w.getSymName()).str(),
                                type.getElementType().isBF16() ? "BF16" : "F32",
                                SmallVector<int64_t>(type.getShape()),
                                w.getTransposed()});
  }
  return manifest;
}

std::unique_ptr<llvm::Module>
mlir::moe::translateModel(Operation *lowered, llvm::LLVMContext &context,
                          const ModelManifest &manifest, StringRef symbol) {
  std::unique_ptr<llvm::Module> module =
      translateModuleToLLVMIR(lowered, context, symbol);
  if (!module)
    return nullptr;
  llvm::Function *entry = module->getFunction("_mlir_ciface_" + manifest.entry);
  if (!entry)
    return nullptr;
  // Only the record and its entry point are exported, so that several
  // compiled models link into one application.
  for (llvm::Function &fn : *module)
    if (!fn.isDeclaration())
      fn.setLinkage(llvm::GlobalValue::InternalLinkage);

  // A model lowered for CUDA embeds its kernels (one gpu.binary, which the
  // translation emits as the constant `<name>_binary`). MLIR loads them
  // from a global constructor at program start, before any runtime context
  // exists and even on machines without a GPU; the runtime loads them per
  // model instead, from the record's gpu_binary.
  llvm::Constant *binary =
      llvm::ConstantPointerNull::get(llvm::PointerType::getUnqual(context));
  int64_t binarySize = 0;
  auto binaries =
      llvm::to_vector(cast<ModuleOp>(lowered).getOps<gpu::BinaryOp>());
  if (binaries.size() > 1 || (manifest.target == "cuda") != !binaries.empty())
    return nullptr;
  if (!binaries.empty()) {
    for (StringRef list : {"llvm.global_ctors", "llvm.global_dtors"})
      if (llvm::GlobalVariable *g = module->getGlobalVariable(list))
        g->eraseFromParent();
    llvm::GlobalVariable *g = module->getGlobalVariable(
        (binaries.front().getName() + "_binary").str(), /*AllowInternal=*/true);
    auto *data =
        g && g->hasInitializer()
            ? dyn_cast<llvm::ConstantDataSequential>(g->getInitializer())
            : nullptr;
    if (!data)
      return nullptr;
    binary = g;
    binarySize = data->getNumElements() * data->getElementByteSize();
  }

  std::string json = manifest.toJSON();
  auto *manifestData = new llvm::GlobalVariable(
      *module,
      llvm::ArrayType::get(llvm::Type::getInt8Ty(context), json.size() + 1),
      /*isConstant=*/true, llvm::GlobalValue::PrivateLinkage,
      llvm::ConstantDataArray::getString(context, json),
      (symbol + "_manifest").str());

  // <symbol>_run(void **descriptors) unpacks the descriptor pointers and
  // calls the C interface of the model function, whatever its arity.
  auto *ptr = llvm::PointerType::getUnqual(context);
  auto *run = llvm::Function::Create(
      llvm::FunctionType::get(llvm::Type::getVoidTy(context), {ptr}, false),
      llvm::GlobalValue::ExternalLinkage, (symbol + "_run").str(), *module);
  llvm::IRBuilder<> b(llvm::BasicBlock::Create(context, "entry", run));
  SmallVector<llvm::Value *> args;
  for (unsigned i = 0; i < entry->arg_size(); ++i)
    args.push_back(
        b.CreateLoad(ptr, b.CreateConstGEP1_64(ptr, run->getArg(0), i)));
  b.CreateCall(entry, args);
  b.CreateRetVoid();

  // moert_compiled_model: manifest, run, gpu_binary, gpu_binary_size.
  auto *i64 = llvm::Type::getInt64Ty(context);
  auto *recordType = llvm::StructType::get(context, {ptr, ptr, ptr, i64});
  new llvm::GlobalVariable(
      *module, recordType, /*isConstant=*/true,
      llvm::GlobalValue::ExternalLinkage,
      llvm::ConstantStruct::get(
          recordType,
          {manifestData, run, binary, llvm::ConstantInt::get(i64, binarySize)}),
      symbol);
  return module;
}

llvm::Error mlir::moe::emitObjectFile(llvm::Module &module, StringRef path) {
  std::string triple = llvm::sys::getDefaultTargetTriple();
  std::string error;
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(llvm::Triple(triple), error);
  if (!target)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "no target for " + triple + ": " + error);
  llvm::TargetOptions options;
  std::unique_ptr<llvm::TargetMachine> machine(target->createTargetMachine(
      llvm::Triple(triple), llvm::sys::getHostCPUName(), "", options,
      llvm::Reloc::PIC_, std::nullopt, llvm::CodeGenOptLevel::Aggressive));
  module.setTargetTriple(llvm::Triple(triple));
  module.setDataLayout(machine->createDataLayout());
  // The same -O3 pipeline moe-run's JIT applies, so both run the same code.
  if (llvm::Error err = makeOptimizingTransformer(3, 0, machine.get())(&module))
    return err;

  std::error_code ec;
  llvm::ToolOutputFile out(path, ec, llvm::sys::fs::OF_None);
  if (ec)
    return llvm::createStringError(ec, "cannot write '" + path +
                                           "': " + ec.message());
  llvm::legacy::PassManager pm;
  if (machine->addPassesToEmitFile(pm, out.os(), nullptr,
                                   llvm::CodeGenFileType::ObjectFile))
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "the target cannot emit object files");
  pm.run(module);
  out.keep();
  return llvm::Error::success();
}

std::string mlir::moe::emitHeader(const ModelManifest &manifest,
                                  StringRef symbol) {
  std::string guard = symbol.upper() + "_H";
  std::string text;
  llvm::raw_string_ostream os(text);
  os << "/* Generated by moe-compile. Link with the object file and the moe\n"
     << " * runtime; load with moert_model_load(ctx, &" << symbol
     << ", weights, &model). */\n"
     << "#ifndef " << guard << "\n#define " << guard << "\n\n"
     << "#include \"moert/moert.h\"\n\n"
     << "#define " << symbol.upper() << "_HIDDEN_SIZE " << manifest.hiddenSize
     << "\n#define " << symbol.upper() << "_PASSES " << manifest.passes
     << "\n#define " << symbol.upper() << "_LAYERS " << manifest.layers
     << "\n#define " << symbol.upper() << "_TOP_K " << manifest.topK
     << "\n#define " << symbol.upper() << "_EXPERTS " << manifest.experts
     << "\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
     << "extern const moert_compiled_model " << symbol << ";\n\n"
     << "#ifdef __cplusplus\n}\n#endif\n\n#endif /* " << guard << " */\n";
  return text;
}
