//===- moe-run.cpp - compile a moe model for the CPU and run it -----------===//
//
// moe-run MODEL --weights W.safetensors --inputs X.safetensors
//         --outputs Y.safetensors [--device cpu] [--stats]
//
// MODEL is a .mlir file in the moe dialect or a moe_stack config.json
// (imported on the fly). The model is lowered with moe-cpu-pipeline and
// JIT-compiled; its kernels come from the runtime linked into this tool.
//
//===----------------------------------------------------------------------===//
#include "RunStats.h"

#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "moe/Import/MoEStackImport.h"
#include "moert/CpuKernels.h"
#include "moert/CpuLoopKernels.h"
#include "moert/Safetensors.h"

#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/ExecutionEngine/ExecutionEngine.h"
#include "mlir/ExecutionEngine/OptUtils.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/WithColor.h"

#include <chrono>
#include <cmath>
#include <set>

using namespace mlir;
namespace cl = llvm::cl;

static cl::opt<std::string> modelPath(cl::Positional, cl::Required,
                                      cl::desc("<model.mlir | config.json>"));
static cl::opt<std::string>
    weightsPath("weights", cl::Required, cl::value_desc("file"),
                cl::desc("Weights (.safetensors), named as the model's "
                         "moe.weight sources"));
static cl::opt<std::string>
    inputsPath("inputs", cl::Required, cl::value_desc("file"),
               cl::desc("Inputs (.safetensors) with hidden_states F32 [T, d]"));
static cl::opt<std::string> outputsPath(
    "outputs", cl::Required, cl::value_desc("file"),
    cl::desc("Where to write hidden_states, exit_loop, expert_ids and "
             "expert_gates (.safetensors)"));
static cl::opt<std::string>
    device("device", cl::init("cpu"), cl::value_desc("cpu|cuda"),
           cl::desc("Device to run on (default cpu)"));
// LLVM registers its own -stats (pass statistics) while parsing, so
// --stats is taken out of argv before cl::ParseCommandLineOptions.
static bool stats = false;

namespace {
/// What the runner needs to know about a model before lowering it.
struct ModelInfo {
  std::string entry;
  int64_t hidden = 0, passes = 0, layers = 0, topK = 0, experts = 0;
  SmallVector<moe::WeightOp> weights;
  /// Kept apart from `weights`: lowering erases the weight ops.
  SmallVector<SmallVector<int64_t>> weightShapes;
};

llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Expected<ModelInfo> describe(ModuleOp module) {
  ModelInfo info;
  for (auto func : module.getOps<func::FuncOp>()) {
    auto loops = func.getBody().getOps<moe::LoopOp>();
    if (func.isExternal() || loops.empty())
      continue;
    moe::LoopOp loop = *loops.begin();
    info.entry = func.getName().str();
    info.hidden = cast<RankedTensorType>(loop.getInit().getType()).getDimSize(1);
    info.passes = loop.getPasses();
    for (auto experts : loop.getBody().getOps<moe::ExpertsOp>()) {
      ++info.layers;
      info.topK = cast<RankedTensorType>(experts.getIds().getType()).getDimSize(1);
      auto gate = SymbolTable::lookupNearestSymbolFrom<moe::WeightOp>(
          experts, experts.getGateProjAttr().getAttr());
      info.experts = gate.getTensorType().getDimSize(0);
    }
  }
  if (info.entry.empty())
    return makeError("the model has no function with a moe.loop to run");
  info.weights = llvm::to_vector(module.getOps<moe::WeightOp>());
  for (moe::WeightOp w : info.weights)
    info.weightShapes.emplace_back(w.getTensorType().getShape());
  return info;
}

/// Reads one weight as f32, stacking the per-expert tensors of a `{e}`
/// source; records the tensor names it used.
llvm::Expected<std::vector<float>>
loadWeight(const moert::SafetensorsFile &file, moe::WeightOp weight,
           std::set<std::string> &used) {
  RankedTensorType type = weight.getTensorType();
  moert::DType dtype = type.getElementType().isBF16() ? moert::DType::BF16
                                                       : moert::DType::F32;
  std::string source = weight.getSource().value_or(weight.getSymName()).str();
  SmallVector<std::string> names;
  ArrayRef<int64_t> shape = type.getShape();
  size_t pos = source.find("{e}");
  if (pos != std::string::npos) {
    for (int64_t e = 0; e < shape[0]; ++e)
      names.push_back(std::string(source).replace(pos, 3, std::to_string(e)));
    shape = shape.drop_front();
  } else {
    names.push_back(source);
  }
  std::vector<float> values;
  for (const std::string &name : names) {
    auto tensor = file.get(name, dtype, shape);
    if (!tensor)
      return tensor.takeError();
    auto data = moert::readAsF32(*tensor);
    if (!data)
      return data.takeError();
    values.insert(values.end(), data->begin(), data->end());
    used.insert(name);
  }
  return values;
}

/// A memref descriptor as MLIR's C interface lays it out: base pointer,
/// aligned pointer, offset, sizes, strides (row-major).
class Descriptor {
public:
  Descriptor(const void *data, ArrayRef<int64_t> shape) {
    auto address = reinterpret_cast<intptr_t>(data);
    words = {address, address, 0};
    words.append(shape.begin(), shape.end());
    SmallVector<int64_t> strides(shape.size(), 1);
    for (int64_t i = int64_t(shape.size()) - 2; i >= 0; --i)
      strides[i] = strides[i + 1] * shape[i + 1];
    words.append(strides.begin(), strides.end());
  }
  void *get() { return words.data(); }

private:
  SmallVector<int64_t, 11> words;
};

template <typename T>
ArrayRef<uint8_t> bytesOf(const std::vector<T> &v) {
  return {reinterpret_cast<const uint8_t *>(v.data()), v.size() * sizeof(T)};
}

llvm::orc::SymbolMap kernelSymbols(llvm::orc::MangleAndInterner interner) {
  llvm::orc::SymbolMap map;
  auto add = [&](StringRef name, auto *fn) {
    map[interner(name)] = {llvm::orc::ExecutorAddr::fromPtr(fn),
                           llvm::JITSymbolFlags::Exported};
  };
  add("_mlir_ciface_moert_rms_norm", &_mlir_ciface_moert_rms_norm);
  add("_mlir_ciface_moert_route", &_mlir_ciface_moert_route);
  add("_mlir_ciface_moert_experts", &_mlir_ciface_moert_experts);
  add("_mlir_ciface_moert_exit_test", &_mlir_ciface_moert_exit_test);
  add("_mlir_ciface_moert_loop_init", &_mlir_ciface_moert_loop_init);
  add("_mlir_ciface_moert_gather_rows", &_mlir_ciface_moert_gather_rows);
  add("_mlir_ciface_moert_scatter_rows", &_mlir_ciface_moert_scatter_rows);
  add("_mlir_ciface_moert_record_step", &_mlir_ciface_moert_record_step);
  add("_mlir_ciface_moert_exit_update", &_mlir_ciface_moert_exit_update);
  add("_mlir_ciface_moert_add", &_mlir_ciface_moert_add);
  return map;
}

FailureOr<OwningOpRef<ModuleOp>> loadModel(MLIRContext &ctx,
                                           llvm::SourceMgr &sourceMgr) {
  auto file = llvm::MemoryBuffer::getFile(modelPath, /*IsText=*/true);
  if (!file) {
    llvm::WithColor::error(llvm::errs(), "moe-run")
        << "cannot read model '" << modelPath
        << "': " << file.getError().message() << "\n";
    return failure();
  }
  if (StringRef(modelPath).ends_with(".json"))
    return moe::importMoEStackConfig((*file)->getBuffer(), modelPath, &ctx);
  sourceMgr.AddNewSourceBuffer(std::move(*file), llvm::SMLoc());
  OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(sourceMgr, &ctx);
  if (!module || failed(verify(*module)))
    return failure();
  return module;
}

struct Outputs {
  std::vector<float> hidden, gates;
  std::vector<int32_t> exitLoop, ids, nonFinite;
};

llvm::Error run(ModuleOp module, Outputs &out, double &seconds) {
  llvm::Expected<ModelInfo> info = describe(module);
  if (!info)
    return info.takeError();

  auto weightsFile = moert::SafetensorsFile::open(weightsPath);
  if (!weightsFile)
    return weightsFile.takeError();
  std::set<std::string> used;
  std::vector<std::vector<float>> weights;
  for (moe::WeightOp w : info->weights) {
    auto values = loadWeight(**weightsFile, w, used);
    if (!values)
      return values.takeError();
    weights.push_back(std::move(*values));
  }
  for (const moert::TensorView &t : (*weightsFile)->tensors())
    if (!used.count(t.name))
      return makeError(weightsPath + ": unexpected tensor '" + t.name +
                       "': the model has no weight bound to it");

  auto inputsFile = moert::SafetensorsFile::open(inputsPath);
  if (!inputsFile)
    return inputsFile.takeError();
  const moert::TensorView *input = (*inputsFile)->find("hidden_states");
  if (!input)
    return makeError(inputsPath + ": missing tensor 'hidden_states'");
  if (input->dtype != moert::DType::F32 || input->shape.size() != 2 ||
      input->shape[1] != info->hidden)
    return makeError(inputsPath + ": hidden_states must be F32 [tokens, " +
                     llvm::Twine(info->hidden) + "]");
  auto hiddenIn = moert::readAsF32(*input);
  if (!hiddenIn)
    return hiddenIn.takeError();
  int64_t tokens = input->shape[0], d = info->hidden;
  int64_t steps = info->passes * info->layers;

  // Non-finite inputs still run (the token's outputs are NaN/Inf); the
  // result marks them so callers can tell.
  out.nonFinite.assign(tokens, 0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite((*hiddenIn)[t * d + j]))
        out.nonFinite[t] = 1;

  PassManager pm(module.getContext());
  moe::buildMoECPUPipeline(pm);
  if (failed(pm.run(module)))
    return makeError("lowering the model for the CPU failed");

  auto optimize = makeOptimizingTransformer(3, 0, nullptr);
  ExecutionEngineOptions options;
  options.transformer = optimize;
  auto engine = ExecutionEngine::create(module, options);
  if (!engine)
    return engine.takeError();
  (*engine)->registerSymbols(kernelSymbols);

  out.hidden.assign(tokens * d, 0.0f);
  out.exitLoop.assign(tokens, 0);
  out.ids.assign(steps * tokens * info->topK, -1);
  out.gates.assign(steps * tokens * info->topK, 0.0f);
  SmallVector<Descriptor> descriptors = {
      Descriptor(hiddenIn->data(), {tokens, d}),
      Descriptor(out.hidden.data(), {tokens, d}),
      Descriptor(out.exitLoop.data(), {tokens}),
      Descriptor(out.ids.data(), {steps, tokens, info->topK}),
      Descriptor(out.gates.data(), {steps, tokens, info->topK})};
  for (auto [shape, values] : llvm::zip(info->weightShapes, weights))
    descriptors.emplace_back(values.data(), shape);
  SmallVector<void *> pointers, args;
  for (Descriptor &desc : descriptors)
    pointers.push_back(desc.get());
  for (void *&p : pointers)
    args.push_back(&p);

  // Look the entry up first: that JIT-compiles it, which is not run time.
  auto entry = (*engine)->lookupPacked("_mlir_ciface_" + info->entry);
  if (!entry)
    return entry.takeError();
  auto start = std::chrono::steady_clock::now();
  (*entry)(args.data());
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                          start)
                .count();

  if (stats)
    moe::printRunStats({info->passes, info->layers, tokens, info->topK,
                        info->experts, out.ids, out.exitLoop},
                       seconds, llvm::outs());
  std::vector<moert::TensorToWrite> tensors = {
      {"hidden_states", moert::DType::F32, {tokens, d}, bytesOf(out.hidden)},
      {"exit_loop", moert::DType::I32, {tokens}, bytesOf(out.exitLoop)},
      {"expert_ids", moert::DType::I32, {steps, tokens, info->topK},
       bytesOf(out.ids)},
      {"expert_gates", moert::DType::F32, {steps, tokens, info->topK},
       bytesOf(out.gates)},
      {"non_finite_input", moert::DType::I32, {tokens}, bytesOf(out.nonFinite)}};
  return moert::writeSafetensors(outputsPath, tensors);
}
} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  SmallVector<const char *> args;
  for (int i = 0; i < argc; ++i) {
    StringRef arg(argv[i]);
    if (arg == "--stats" || arg == "-stats")
      stats = true;
    else
      args.push_back(argv[i]);
  }
  cl::ParseCommandLineOptions(
      args.size(), args.data(),
      "moe-run: compile a moe model for the CPU and run it on a batch of "
      "tokens\n\nMODEL is a .mlir file in the moe dialect or a moe_stack "
      "config.json.\nOutputs follow the model contract: hidden_states, "
      "exit_loop, expert_ids,\nexpert_gates, plus non_finite_input (1 for a "
      "token whose input had NaN/Inf).\n\n  --stats  print expert load per "
      "layer, distinct expert paths, path\n           entropy, cross-layer "
      "consistency, exits per pass and wall time\n");
  auto fail = [](const llvm::Twine &message) {
    llvm::WithColor::error(llvm::errs(), "moe-run") << message << "\n";
    return 1;
  };
  if (device == "cuda")
    return fail("--device cuda: this build has no CUDA backend yet; "
                "run with --device cpu (moe-run never falls back silently)");
  if (device != "cpu")
    return fail("unknown --device '" + device + "' (expected cpu or cuda)");

  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  DialectRegistry registry;
  registry.insert<moe::MoEDialect, func::FuncDialect, arith::ArithDialect,
                  memref::MemRefDialect, scf::SCFDialect,
                  cf::ControlFlowDialect, LLVM::LLVMDialect>();
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  MLIRContext ctx(registry);
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diagnostics(sourceMgr, &ctx);

  FailureOr<OwningOpRef<ModuleOp>> module = loadModel(ctx, sourceMgr);
  if (failed(module))
    return 1;
  Outputs outputs;
  double seconds = 0.0;
  if (llvm::Error err = run(**module, outputs, seconds))
    return fail(llvm::toString(std::move(err)));
  int64_t nonFinite = llvm::count(outputs.nonFinite, 1);
  if (nonFinite)
    llvm::WithColor::warning(llvm::errs(), "moe-run")
        << nonFinite << " token(s) had NaN/Inf inputs; see non_finite_input\n";
  return 0;
}
