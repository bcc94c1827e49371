//===- moe-run.cpp - compile a moe model and run it (CPU or CUDA) ---------===//
//
// moe-run MODEL --weights W.safetensors --inputs X.safetensors
//         --outputs Y.safetensors [--device cpu] [--stats]
//
// MODEL is a .mlir file in the moe dialect or a moe_stack config.json
// (imported on the fly). The model is lowered with moe-cpu-pipeline (or
// moe-cuda-pipeline for --device cuda) and JIT-compiled; its CPU kernels and
// the CUDA backend come from the runtime linked into this tool.
//
//===----------------------------------------------------------------------===//
#include "RunStats.h"

#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoEOps.h"
#include "moe/Target/ModelArtifact.h"
#include "moe/Tools/CompilerSession.h"
#include "moert/CpuKernelRegistry.h"
#include "moert/GpuEmulation.h"
#include "moert/GpuRuntime.h"
#include "moert/Safetensors.h"
#include "moert/moert.h"

#include "mlir/ExecutionEngine/ExecutionEngine.h"
#include "mlir/ExecutionEngine/OptUtils.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/WithColor.h"

#include <chrono>
#include <cmath>

using namespace mlir;
namespace cl = llvm::cl;

static cl::OptionCategory runCategory("moe-run options");

static cl::opt<std::string> modelPath(cl::Positional, cl::Required,
                                      cl::cat(runCategory),
                                      cl::desc("<model.mlir | config.json>"));
static cl::opt<std::string>
    weightsPath("weights", cl::Required, cl::value_desc("file"),
                cl::cat(runCategory),
                cl::desc("Weights: .safetensors, model.safetensors.index.json, "
                         "or a checkpoint directory"));
static cl::opt<std::string>
    inputsPath("inputs", cl::Required, cl::value_desc("file"),
               cl::cat(runCategory),
               cl::desc("Inputs (.safetensors): hidden_states F32 [T, d], or "
                        "input_ids I32 [B, S] for decoders"));
static cl::opt<std::string> outputsPath(
    "outputs", cl::Required, cl::value_desc("file"), cl::cat(runCategory),
    cl::desc("Where to write the outputs (.safetensors; see above)"));
static cl::opt<unsigned>
    generate("generate", cl::init(0), cl::value_desc("N"), cl::cat(runCategory),
             cl::desc("Decoders: after the prefill, greedily generate N "
                      "tokens per sequence with the KV cache (output "
                      "'generated' I32 [batch, N])"));
static cl::opt<unsigned>
    repeat("repeat", cl::init(1), cl::value_desc("N"), cl::cat(runCategory),
           cl::desc("Run the model N times and print the median and minimum "
                    "run time (for benchmarks)"));
static cl::opt<std::string>
    device("device", cl::init("cpu"), cl::value_desc("cpu|cuda"),
           cl::cat(runCategory),
           cl::desc("Device to run on (default cpu); cuda runs on the first "
                    "GPU, compiled for it (see --chip)"));
static cl::list<std::string> cudaChips(
    "chip", cl::CommaSeparated, cl::value_desc("sm_XY,..."),
    cl::cat(runCategory),
    cl::desc("--device cuda: the chips to build the model for (default: the "
             "GPU's own, sm_90a on compute capability 9.0, else sm_XY); the "
             "runtime runs the build that fits the GPU, so --chip sm_80 on a "
             "newer GPU runs sm_80's PTX, compiled by the driver. "
             "--gpu-emulation: the one chip whose kernels (as its cost model "
             "picks them) to emulate (default sm_90a)"));
static cl::opt<bool> gpuEmulation(
    "gpu-emulation", cl::cat(runCategory),
    cl::desc("Compile through the CUDA kernels (convert-moe-to-gpu) but run "
             "them on the CPU, one GPU thread after another: checks the GPU "
             "code generation on machines without a GPU (slow; small models "
             "only; needs --device cpu)"));
// LLVM registers its own -stats (pass statistics) while parsing, so
// --stats is taken out of argv before cl::ParseCommandLineOptions.
static bool stats = false;

namespace {
llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

/// Turns a runtime status into an llvm::Error (and frees it).
llvm::Error check(moert_status status) {
  if (!status)
    return llvm::Error::success();
  std::string message = moert_status_get_message(status);
  moert_status_free(status);
  return makeError(message);
}

llvm::orc::SymbolMap kernelSymbols(llvm::orc::MangleAndInterner interner) {
  llvm::orc::SymbolMap map;
  for (const moert::cpu::KernelSymbol &kernel : moert::cpu::kernelSymbols())
    map[interner(kernel.name)] = {
        llvm::orc::ExecutorAddr::fromPtr(kernel.address),
        llvm::JITSymbolFlags::Exported};
  // What emulated GPU kernels call instead of an access outside a buffer.
  map[interner("moert_emulated_out_of_bounds")] = {
      llvm::orc::ExecutorAddr::fromPtr(&moert_emulated_out_of_bounds),
      llvm::JITSymbolFlags::Exported};
  return map;
}

/// MLIR's GPU runtime ABI, which libmoert implements on the CUDA driver.
llvm::orc::SymbolMap gpuRuntimeSymbols(llvm::orc::MangleAndInterner interner) {
  llvm::orc::SymbolMap map;
  for (const moert::cuda::RuntimeSymbol &symbol :
       moert::cuda::gpuRuntimeSymbols())
    map[interner(symbol.name)] = {
        llvm::orc::ExecutorAddr::fromPtr(symbol.address),
        llvm::JITSymbolFlags::Exported};
  return map;
}

template <typename T> ArrayRef<uint8_t> bytesOf(const std::vector<T> &v) {
  return {reinterpret_cast<const uint8_t *>(v.data()), v.size() * sizeof(T)};
}

constexpr StringLiteral kSymbol = "moe_model";

/// What --device cuda builds for: --chip, else the GPU's own chip (0: no
/// GPU was asked for).
SmallVector<std::string> chipsFor(int32_t capability) {
  if (!cudaChips.empty())
    return SmallVector<std::string>(cudaChips.begin(), cudaChips.end());
  // wgmma and TMA need the arch-specific sm_90a; other chips get their own.
  if (capability == 90)
    return {"sm_90a"};
  return {"sm_" + std::to_string(capability)};
}
int32_t gpuCapability = 0;

/// Lowers and JIT-compiles the model into the same artifact moe-compile
/// writes to an object file.
llvm::Expected<std::unique_ptr<ExecutionEngine>>
compile(moe::CompilerSession &session, ModuleOp module,
        moe::ModelManifest manifest) {
  SmallVector<moe::CUDABuild> builds;
  if (device == "cuda") {
    auto lowered =
        session.lowerForCUDA(module, chipsFor(gpuCapability), manifest);
    if (failed(lowered))
      return makeError("lowering the model for CUDA failed");
    builds = std::move(*lowered);
  } else if (gpuEmulation) {
    if (cudaChips.size() > 1)
      return makeError("--gpu-emulation runs one chip's kernels: give --chip "
                       "one chip");
    if (failed(session.lowerForGPUEmulation(
            module, manifest, cudaChips.empty() ? "" : cudaChips.front())))
      return makeError("lowering the model through the GPU kernels failed");
  } else if (failed(session.lowerForCPU(module, manifest))) {
    return makeError("lowering the model for the CPU failed");
  }
  auto optimize = makeOptimizingTransformer(3, 0, nullptr);
  ExecutionEngineOptions options;
  options.transformer = optimize;
  auto build = [&](Operation *op, llvm::LLVMContext &context) {
    if (!builds.empty())
      return moe::translateCUDAModel(builds, context, manifest, kSymbol);
    return moe::translateModel(op, context, manifest, kSymbol);
  };
  options.llvmModuleBuilder = build;
  // A cuda model is its builds; `module` is what the CPU code was lowered in.
  auto engine = ExecutionEngine::create(
      builds.empty() ? module : builds.front().module.get(), options);
  if (!engine)
    return engine.takeError();
  (*engine)->registerSymbols(kernelSymbols);
  (*engine)->registerSymbols(gpuRuntimeSymbols);
  return std::move(*engine);
}

/// The compiled model, loaded with its weights.
struct LoadedModel {
  std::unique_ptr<ExecutionEngine> engine;
  std::unique_ptr<moert_context, void (*)(moert_context *)> ctx{
      nullptr, moert_context_free};
  std::unique_ptr<moert_model, void (*)(moert_model *)> model{nullptr,
                                                              moert_model_free};
};

llvm::Expected<LoadedModel> load(moe::CompilerSession &session, ModuleOp module,
                                 const moe::ModelManifest &manifest) {
  LoadedModel loaded;
  auto engine = compile(session, module, manifest);
  if (!engine)
    return engine.takeError();
  loaded.engine = std::move(*engine);
  auto record = loaded.engine->lookup(kSymbol);
  if (!record)
    return record.takeError();
  auto *compiled = static_cast<const moert_compiled_model *>(*record);
  moert_context *ctx = nullptr;
  if (llvm::Error err = check(moert_context_create(device.c_str(), &ctx)))
    return err;
  loaded.ctx.reset(ctx);
  moert_model *model = nullptr;
  if (llvm::Error err =
          check(moert_model_load(ctx, compiled, weightsPath.c_str(), &model)))
    return err;
  loaded.model.reset(model);
  if (const char *chip = moert_model_get_info(model).gpu_chip; stats && chip)
    llvm::outs() << "stats: running the model's " << chip << " build\n";
  return loaded;
}

/// Index of the largest logit; ties go to the lowest token id.
int32_t argmax(const float *logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (logits[v] > logits[best])
      best = v;
  return int32_t(best);
}

/// Decoders: prefill each sequence of input_ids [B, S], then greedy decoding.
llvm::Error runDecoder(moe::CompilerSession &session, ModuleOp module,
                       const moe::ModelManifest &manifest) {
  auto inputsFile = moert::SafetensorsFile::open(inputsPath);
  if (!inputsFile)
    return inputsFile.takeError();
  const moert::TensorView *input = (*inputsFile)->find("input_ids");
  if (!input || input->dtype != moert::DType::I32 || input->shape.size() != 2)
    return makeError(inputsPath + ": needs input_ids I32 [batch, sequence]");
  auto ids = moert::readAsI32(*input);
  if (!ids)
    return ids.takeError();
  int64_t batch = input->shape[0], seq = input->shape[1];
  int64_t vocab = manifest.vocabSize, steps = generate;
  if (seq < 1)
    return makeError(inputsPath + ": input_ids has empty sequences");
  if (seq + steps > manifest.maxPositions)
    return makeError("a sequence of " + llvm::Twine(seq) + " tokens plus " +
                     llvm::Twine(steps) +
                     " generated ones exceeds max_position_embeddings (" +
                     llvm::Twine(manifest.maxPositions) + ")");

  auto loaded = load(session, module, manifest);
  if (!loaded)
    return loaded.takeError();
  std::vector<float> logits(batch * seq * vocab), step(vocab);
  std::vector<int32_t> generated(batch * steps), exitLoop(batch * seq);
  double prefillSeconds = 0, decodeSeconds = 0;
  for (int64_t b = 0; b < batch; ++b) {
    moert_session *raw = nullptr;
    // Caches for this sequence's positions only, not max_positions.
    if (llvm::Error err = check(moert_session_create_with_capacity(
            loaded->model.get(), seq + steps, &raw)))
      return err;
    std::unique_ptr<moert_session, void (*)(moert_session *)> session(
        raw, moert_session_free);
    auto start = std::chrono::steady_clock::now();
    if (llvm::Error err = check(moert_session_forward(
            raw, ids->data() + b * seq, seq, logits.data() + b * seq * vocab,
            exitLoop.data() + b * seq)))
      return err;
    auto mid = std::chrono::steady_clock::now();
    const float *last = logits.data() + (b * seq + seq - 1) * vocab;
    for (int64_t i = 0; i < steps; ++i) {
      int32_t next = argmax(last, vocab);
      generated[b * steps + i] = next;
      if (i + 1 == steps)
        break;
      if (llvm::Error err =
              check(moert_session_forward(raw, &next, 1, step.data(), nullptr)))
        return err;
      last = step.data();
    }
    auto end = std::chrono::steady_clock::now();
    prefillSeconds += std::chrono::duration<double>(mid - start).count();
    decodeSeconds += std::chrono::duration<double>(end - mid).count();
  }
  if (stats && manifest.passes > 1) {
    std::vector<int64_t> perPass(manifest.passes, 0);
    for (int32_t pass : exitLoop)
      if (pass >= 0 && pass < manifest.passes)
        ++perPass[pass];
    llvm::outs() << "stats: prompt tokens stopping after each pass:";
    for (int64_t n : perPass)
      llvm::outs() << " " << n;
    llvm::outs() << "\n";
  }
  if (stats)
    llvm::outs() << llvm::format(
        "stats: %lld sequences; prefill %lld tokens in %.3f ms (%.1f "
        "tokens/s); "
        "decode %lld tokens in %.3f ms (%.1f tokens/s)\n",
        (long long)batch, (long long)(batch * seq), prefillSeconds * 1e3,
        batch * seq / std::max(prefillSeconds, 1e-9),
        (long long)(batch * std::max<int64_t>(steps - 1, 0)),
        decodeSeconds * 1e3,
        batch * std::max<int64_t>(steps - 1, 0) /
            std::max(decodeSeconds, 1e-9));
  std::vector<moert::TensorToWrite> tensors = {
      {"logits", moert::DType::F32, {batch, seq, vocab}, bytesOf(logits)},
      {"exit_loop", moert::DType::I32, {batch, seq}, bytesOf(exitLoop)}};
  if (steps)
    tensors.push_back(
        {"generated", moert::DType::I32, {batch, steps}, bytesOf(generated)});
  return moert::writeSafetensors(outputsPath, tensors);
}

llvm::Error run(moe::CompilerSession &session, ModuleOp module) {
  FailureOr<moe::ModelManifest> manifest = moe::describeModel(module);
  if (failed(manifest))
    return makeError("cannot run this module");
  if (manifest->decoder)
    return runDecoder(session, module, *manifest);

  // Inputs first: a bad input file should not cost a compile.
  auto inputsFile = moert::SafetensorsFile::open(inputsPath);
  if (!inputsFile)
    return inputsFile.takeError();
  const moert::TensorView *input = (*inputsFile)->find("hidden_states");
  if (!input)
    return makeError(inputsPath + ": missing tensor 'hidden_states'");
  int64_t d = manifest->hiddenSize;
  if (input->dtype != moert::DType::F32 || input->shape.size() != 2 ||
      input->shape[1] != d)
    return makeError(inputsPath + ": hidden_states must be F32 [tokens, " +
                     llvm::Twine(d) + "]");
  auto hiddenIn = moert::readAsF32(*input);
  if (!hiddenIn)
    return hiddenIn.takeError();
  int64_t tokens = input->shape[0];

  auto loaded = load(session, module, *manifest);
  if (!loaded)
    return loaded.takeError();
  moert_model *model = loaded->model.get();

  int64_t steps = manifest->passes * manifest->layers;
  int64_t traceSize = steps * tokens * manifest->topK;
  std::vector<float> hidden(tokens * d), gates(traceSize);
  std::vector<int32_t> exitLoop(tokens), ids(traceSize), nonFinite(tokens, 0);
  // Non-finite inputs still run (the token's outputs are NaN/Inf); the
  // result marks them so callers can tell.
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < d; ++j)
      if (!std::isfinite((*hiddenIn)[t * d + j]))
        nonFinite[t] = 1;

  moert_outputs outputs{hidden.data(), exitLoop.data(), ids.data(),
                        gates.data()};
  // Every run gives the same outputs; timing several gives a median. A
  // benchmark's first run (page faults, cold caches) is not timed.
  std::vector<double> times;
  if (repeat > 1)
    if (llvm::Error err =
            check(moert_model_run(model, tokens, hiddenIn->data(), &outputs)))
      return err;
  for (unsigned i = 0; i < std::max(1u, repeat.getValue()); ++i) {
    auto start = std::chrono::steady_clock::now();
    if (llvm::Error err =
            check(moert_model_run(model, tokens, hiddenIn->data(), &outputs)))
      return err;
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
  }
  llvm::sort(times);
  double seconds = times[times.size() / 2];
  if (repeat > 1)
    llvm::outs() << llvm::format("run time: median %.4f ms, min %.4f ms, "
                                 "%zu runs\n",
                                 seconds * 1e3, times.front() * 1e3,
                                 times.size());

  if (stats)
    moe::printRunStats({manifest->passes, manifest->layers, tokens,
                        manifest->topK, manifest->experts, ids, exitLoop},
                       seconds, llvm::outs());
  int64_t badTokens = llvm::count(nonFinite, 1);
  if (badTokens)
    llvm::WithColor::warning(llvm::errs(), "moe-run")
        << badTokens << " token(s) had NaN/Inf inputs; see non_finite_input\n";
  std::vector<moert::TensorToWrite> tensors = {
      {"hidden_states", moert::DType::F32, {tokens, d}, bytesOf(hidden)},
      {"exit_loop", moert::DType::I32, {tokens}, bytesOf(exitLoop)},
      {"expert_ids",
       moert::DType::I32,
       {steps, tokens, manifest->topK},
       bytesOf(ids)},
      {"expert_gates",
       moert::DType::F32,
       {steps, tokens, manifest->topK},
       bytesOf(gates)},
      {"non_finite_input", moert::DType::I32, {tokens}, bytesOf(nonFinite)}};
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
  cl::HideUnrelatedOptions({&runCategory, &moe::getCompilerOptionsCategory()});
  cl::ParseCommandLineOptions(
      args.size(), args.data(),
      "moe-run: compile a moe model and run it on the CPU (default) or an "
      "NVIDIA GPU\n(--device cuda)\n\n"
      "MODEL is a .mlir file in the moe dialect or a config.json (moe_stack, "
      "mixtral,\nolmoe, qwen3_moe, loop-lm). WEIGHTS is a .safetensors file, a "
      "model.safetensors.index.json\nor a directory holding either.\n\n"
      "moe_stack models: inputs hidden_states F32 [T, d]; outputs "
      "hidden_states,\n  exit_loop, expert_ids, expert_gates (the model "
      "contract's), and non_finite_input\n  (1 for a token whose input had "
      "NaN/Inf).\n"
      "Decoders: inputs input_ids I32 [B, S]; outputs logits [B, S, V], "
      "exit_loop [B, S],\n  and with --generate N the greedy tokens "
      "generated [B, N].\n\n"
      "  --stats  moe_stack: expert load per layer, distinct expert paths, "
      "path entropy,\n           cross-layer consistency, exits per pass, "
      "wall time; decoders: exits per\n           pass and prefill/decode "
      "tokens per second\n");
  auto fail = [](const llvm::Twine &message) {
    llvm::WithColor::error(llvm::errs(), "moe-run") << message << "\n";
    return 1;
  };
  if (!cudaChips.empty() && device != "cuda" && !gpuEmulation)
    return fail("--chip picks the chips whose GPU kernels are built: it needs "
                "--device cuda or --gpu-emulation");
  if (gpuEmulation && device != "cpu")
    return fail("--gpu-emulation runs the GPU kernels on the CPU: it needs "
                "--device cpu");
  if (device == "cpu" && !gpuEmulation &&
      moe::CompilerSession::gpuKernelOptionsGiven())
    return fail(
        "--tensor-cores, --bf16-activations, --resident-loops, --wgmma and "
        "--split-chunk-rows shape the GPU kernels: they need --device cuda "
        "or --gpu-emulation");
  // Ask the runtime first: a device it cannot use should not cost a compile.
  moert_context *probe = nullptr;
  if (llvm::Error err = check(moert_context_create(device.c_str(), &probe)))
    return fail(llvm::toString(std::move(err)));
  gpuCapability = moert_context_get_cuda_capability(probe);
  moert_context_free(probe);
  if (device == "cuda" && cudaChips.empty() &&
      moe::CompilerSession::wgmmaRequested() && gpuCapability != 90)
    return fail("--wgmma kernels run on sm_90a GPUs (H100, H200) only; this "
                "GPU is sm_" +
                llvm::Twine(gpuCapability) + ": drop --wgmma");

  moe::CompilerSession session;
  FailureOr<OwningOpRef<ModuleOp>> module = session.readModel(modelPath);
  if (failed(module))
    return 1;
  if (llvm::Error err = run(session, **module))
    return fail(llvm::toString(std::move(err)));
  return 0;
}
