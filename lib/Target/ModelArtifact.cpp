//===- ModelArtifact.cpp - a compiled model's manifest and entry ----------===//
#include "moe/Target/ModelArtifact.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/ExecutionEngine/OptUtils.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/Linker/Linker.h"
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

namespace {
/// Translates one lowering of the model to LLVM IR, with every function it
/// defines internal (so that several compiled models link into one
/// application) and an external `runName(void **descriptors)` that unpacks
/// the descriptor pointers and calls the C interface of the model function,
/// whatever its arity. Null if the entry is missing.
std::unique_ptr<llvm::Module> translateWithRun(Operation *lowered,
                                               llvm::LLVMContext &context,
                                               const ModelManifest &manifest,
                                               StringRef name,
                                               StringRef runName) {
  std::unique_ptr<llvm::Module> module =
      translateModuleToLLVMIR(lowered, context, name);
  if (!module)
    return nullptr;
  llvm::Function *entry = module->getFunction("_mlir_ciface_" + manifest.entry);
  if (!entry)
    return nullptr;
  for (llvm::Function &fn : *module)
    if (!fn.isDeclaration())
      fn.setLinkage(llvm::GlobalValue::InternalLinkage);
  auto *ptr = llvm::PointerType::getUnqual(context);
  auto *run = llvm::Function::Create(
      llvm::FunctionType::get(llvm::Type::getVoidTy(context), {ptr}, false),
      llvm::GlobalValue::ExternalLinkage, runName, *module);
  llvm::IRBuilder<> b(llvm::BasicBlock::Create(context, "entry", run));
  SmallVector<llvm::Value *> args;
  for (unsigned i = 0; i < entry->arg_size(); ++i)
    args.push_back(
        b.CreateLoad(ptr, b.CreateConstGEP1_64(ptr, run->getArg(0), i)));
  b.CreateCall(entry, args);
  b.CreateRetVoid();
  return module;
}

llvm::Constant *nullPtr(llvm::LLVMContext &context) {
  return llvm::ConstantPointerNull::get(llvm::PointerType::getUnqual(context));
}

llvm::Constant *privateString(llvm::Module &module, StringRef text,
                              const Twine &name) {
  llvm::LLVMContext &context = module.getContext();
  return new llvm::GlobalVariable(
      module,
      llvm::ArrayType::get(llvm::Type::getInt8Ty(context), text.size() + 1),
      /*isConstant=*/true, llvm::GlobalValue::PrivateLinkage,
      llvm::ConstantDataArray::getString(context, text), name);
}

/// Adds `<symbol>`, the moert_compiled_model record: manifest, run,
/// gpu_builds, gpu_build_count.
void addRecord(llvm::Module &module, const ModelManifest &manifest,
               StringRef symbol, llvm::Constant *run, llvm::Constant *builds,
               int64_t buildCount) {
  llvm::LLVMContext &context = module.getContext();
  auto *ptr = llvm::PointerType::getUnqual(context);
  auto *i64 = llvm::Type::getInt64Ty(context);
  auto *recordType = llvm::StructType::get(context, {ptr, ptr, ptr, i64});
  llvm::Constant *manifestData =
      privateString(module, manifest.toJSON(), symbol + "_manifest");
  new llvm::GlobalVariable(
      module, recordType, /*isConstant=*/true,
      llvm::GlobalValue::ExternalLinkage,
      llvm::ConstantStruct::get(recordType,
                                {manifestData, run ? run : nullPtr(context),
                                 builds ? builds : nullPtr(context),
                                 llvm::ConstantInt::get(i64, buildCount)}),
      symbol);
}
} // namespace

std::unique_ptr<llvm::Module>
mlir::moe::translateModel(Operation *lowered, llvm::LLVMContext &context,
                          const ModelManifest &manifest, StringRef symbol) {
  if (manifest.target != "cpu" ||
      !cast<ModuleOp>(lowered).getOps<gpu::BinaryOp>().empty())
    return nullptr;
  std::unique_ptr<llvm::Module> module = translateWithRun(
      lowered, context, manifest, symbol, (symbol + "_run").str());
  if (!module)
    return nullptr;
  addRecord(*module, manifest, symbol,
            module->getFunction(symbol.str() + "_run"), nullptr, 0);
  return module;
}

std::unique_ptr<llvm::Module>
mlir::moe::translateCUDAModel(ArrayRef<CUDABuild> builds,
                              llvm::LLVMContext &context,
                              const ModelManifest &manifest, StringRef symbol) {
  if (manifest.target != "cuda" || builds.empty())
    return nullptr;
  std::unique_ptr<llvm::Module> linked;
  for (const CUDABuild &build : builds) {
    ModuleOp lowered = build.module.get();
    auto binaries = llvm::to_vector(lowered.getOps<gpu::BinaryOp>());
    if (binaries.size() != 1)
      return nullptr;
    std::string run = (symbol + "_run_" + build.chip).str();
    std::unique_ptr<llvm::Module> module =
        translateWithRun(lowered, context, manifest, symbol, run);
    if (!module)
      return nullptr;
    // The translation embeds the kernels (the gpu.binary) as the constant
    // `<name>_binary` and loads them from a global constructor at program
    // start, before any runtime context exists and even on machines without
    // a GPU; the runtime loads them per model instead, from the record.
    for (StringRef list : {"llvm.global_ctors", "llvm.global_dtors"})
      if (llvm::GlobalVariable *g = module->getGlobalVariable(list))
        g->eraseFromParent();
    llvm::GlobalVariable *kernels = module->getGlobalVariable(
        (binaries.front().getName() + "_binary").str(), /*AllowInternal=*/true);
    if (!kernels || !kernels->hasInitializer() ||
        !isa<llvm::ConstantDataSequential>(kernels->getInitializer()))
      return nullptr;
    // External until linked, so that the linker keeps them under these
    // names; the builds' internal functions may be renamed apart.
    kernels->setName(symbol + "_kernels_" + build.chip);
    kernels->setLinkage(llvm::GlobalValue::ExternalLinkage);
    if (!linked)
      linked = std::move(module);
    else if (llvm::Linker::linkModules(*linked, std::move(module)))
      return nullptr;
  }

  auto *ptr = llvm::PointerType::getUnqual(context);
  auto *i64 = llvm::Type::getInt64Ty(context);
  // moert_gpu_build: chip, run, binary, binary_size.
  auto *buildType = llvm::StructType::get(context, {ptr, ptr, ptr, i64});
  SmallVector<llvm::Constant *> entries;
  for (const CUDABuild &build : builds) {
    llvm::Function *run =
        linked->getFunction((symbol + "_run_" + build.chip).str());
    llvm::GlobalVariable *kernels =
        linked->getGlobalVariable((symbol + "_kernels_" + build.chip).str());
    if (!run || !kernels)
      return nullptr;
    run->setLinkage(llvm::GlobalValue::InternalLinkage);
    kernels->setLinkage(llvm::GlobalValue::InternalLinkage);
    auto *data = cast<llvm::ConstantDataSequential>(kernels->getInitializer());
    entries.push_back(llvm::ConstantStruct::get(
        buildType,
        {privateString(*linked, build.chip, symbol + "_chip_" + build.chip),
         run, kernels,
         llvm::ConstantInt::get(i64, data->getNumElements() *
                                         data->getElementByteSize())}));
  }
  auto *tableType = llvm::ArrayType::get(buildType, entries.size());
  auto *table = new llvm::GlobalVariable(
      *linked, tableType, /*isConstant=*/true,
      llvm::GlobalValue::PrivateLinkage,
      llvm::ConstantArray::get(tableType, entries), symbol + "_gpu_builds");
  addRecord(*linked, manifest, symbol, nullptr, table, entries.size());
  return linked;
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
