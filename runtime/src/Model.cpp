//===- Model.cpp - the moe runtime C API ----------------------------------===//
#include "CudaBackend.h"
#include "WeightFiles.h"
#include "moert/CpuKernels.h"
#include "moert/GpuEmulation.h"
#include "moert/Safetensors.h"
#include "moert/moert.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/ADT/bit.h"
#include "llvm/Support/Endian.h"
#include "llvm/Support/JSON.h"

#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <vector>

struct moert_status_t {
  moert_status_code code;
  std::string message;
};

struct moert_context {
  std::string device;                        ///< "cpu" or "cuda"
  std::unique_ptr<moert::cuda::Device> cuda; ///< for "cuda"
};

namespace {
struct WeightSpec {
  std::string source;
  moert::DType dtype;
  std::vector<int64_t> shape;
  /// The manifest's "transpose": the file stores each matrix with its last
  /// two dimensions swapped (LoopLM's [E, in, out] expert weights).
  bool transpose = false;
  /// The manifest's "device_dtype": what the entry reads, F32 (bf16 files
  /// widened) or BF16 (raw bfloat16 bits; f32 files rounded to nearest even).
  moert::DType deviceDType = moert::DType::F32;
};

/// One weight as the entry point reads it: `elements` row-major elements of
/// `dtype` (f32, or raw bfloat16 bits), in host byte order.
struct WeightBuffer {
  moert::DType dtype = moert::DType::F32;
  size_t elements = 0;
  /// operator new[]'s alignment, enough for f32 elements.
  std::unique_ptr<uint8_t[]> storage;

  size_t bytes() const { return elements * moert::dtypeSize(dtype); }
  void *data() const { return storage.get(); }
  /// Uninitialised room for `elements` elements; an error naming `weight`
  /// where there is no memory for them.
  static llvm::Expected<WeightBuffer>
  allocate(moert::DType dtype, size_t elements, const std::string &weight) {
    WeightBuffer buffer{dtype, elements, nullptr};
    buffer.storage.reset(new (std::nothrow) uint8_t[buffer.bytes()]);
    if (!buffer.storage)
      return llvm::createStringError("cannot allocate " +
                                     std::to_string(buffer.bytes()) +
                                     " bytes for weight '" + weight + "'");
    return std::move(buffer);
  }
};

moert_status makeStatus(moert_status_code code, std::string message) {
  return new moert_status_t{code, std::move(message)};
}

moert_status fromError(llvm::Error err, moert_status_code code) {
  return makeStatus(code, llvm::toString(std::move(err)));
}

/// A memref descriptor as MLIR's C interface lays it out: base pointer,
/// aligned pointer, offset, sizes, strides (row-major, contiguous).
class Descriptor {
public:
  Descriptor(const void *data, llvm::ArrayRef<int64_t> shape) {
    auto address = reinterpret_cast<intptr_t>(data);
    words = {address, address, 0};
    words.append(shape.begin(), shape.end());
    llvm::SmallVector<int64_t, 4> strides(shape.size(), 1);
    for (int64_t i = int64_t(shape.size()) - 2; i >= 0; --i)
      strides[i] = strides[i + 1] * shape[i + 1];
    words.append(strides.begin(), strides.end());
  }
  void *get() { return words.data(); }

private:
  llvm::SmallVector<int64_t, 11> words;
};
} // namespace

struct moert_model {
  moert_model_info info{};
  std::string target = "cpu";                ///< "cpu" or "cuda"
  void (*run)(void **descriptors) = nullptr; ///< cpu, or the cuda build's
  std::vector<int64_t> cacheWidths;          ///< decoders: per cache slot
  std::vector<WeightSpec> specs;
  std::vector<WeightBuffer> weights;              ///< cpu
  std::unique_ptr<moert::cuda::DeviceModel> cuda; ///< cuda: device weights
};

struct moert_session {
  explicit moert_session(moert_model *model) : model(model) {}
  ~moert_session() {
    if (model->cuda)
      model->cuda->freePersistent(caches);
  }
  moert_session(const moert_session &) = delete;
  moert_session &operator=(const moert_session &) = delete;

  moert_model *model;
  int64_t position = 0;
  /// The positions its caches hold: max_positions unless the session was
  /// created with less.
  int64_t capacity = 0;
  /// K and V of every cache slot, [capacity, width] each (in device
  /// memory for cuda). Left uninitialised: attention reads only positions it
  /// has written, so pages past the sequence are never touched.
  std::vector<void *> caches;
  std::vector<std::unique_ptr<float[]>> hostCaches; ///< cpu: owns `caches`
};

namespace {
/// Calls the compiled entry point with `descriptors` (its leading arguments)
/// followed by the model's weights (in device memory for cuda).
void runCompiled(moert_model &model,
                 llvm::SmallVectorImpl<Descriptor> &descriptors) {
  for (size_t i = 0; i < model.specs.size(); ++i)
    descriptors.emplace_back(model.cuda ? model.cuda->weights()[i]
                                        : model.weights[i].data(),
                             model.specs[i].shape);
  llvm::SmallVector<void *> pointers;
  for (Descriptor &d : descriptors)
    pointers.push_back(d.get());
  model.run(pointers.data());
}

/// runCompiled for a model that runs on the host: fails if its emulated GPU
/// kernels (if any) accessed memory outside a buffer.
moert_status runOnHost(moert_model &model,
                       llvm::SmallVectorImpl<Descriptor> &descriptors) {
  moert::takeEmulatedFault();
  runCompiled(model, descriptors);
  if (const char *kernel = moert::takeEmulatedFault())
    return makeStatus(MOERT_INTERNAL,
                      std::string("the emulated GPU kernel '") + kernel +
                          "' accessed memory outside a buffer (a compiler "
                          "bug: on a GPU it would read another allocation or "
                          "fault); the run's outputs are not valid");
  return nullptr;
}

/// What every target checks before a session forward: the arguments, the
/// token ids and the room left for n more positions.
moert_status checkForward(const moert_session *session, const int32_t *tokens,
                          int64_t n, const float *logits) {
  if (!session || !tokens || !logits)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_session_forward: null argument");
  const moert_model_info &info = session->model->info;
  if (n < 1)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_session_forward: tokens must be at least 1");
  if (session->position + n > session->capacity) {
    std::string sequence =
        "sequence of " + std::to_string(session->position + n) + " tokens";
    if (session->capacity == info.max_positions)
      return makeStatus(MOERT_INVALID_ARGUMENT,
                        sequence + " exceeds max_position_embeddings (" +
                            std::to_string(info.max_positions) + ")");
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      sequence + " exceeds the session's capacity of " +
                          std::to_string(session->capacity) +
                          " positions (max_position_embeddings is " +
                          std::to_string(info.max_positions) + ")");
  }
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= info.vocab_size)
      return makeStatus(MOERT_INVALID_ARGUMENT,
                        "token id " + std::to_string(tokens[i]) + " at index " +
                            std::to_string(i) +
                            " is outside the vocabulary [0, " +
                            std::to_string(info.vocab_size) + ")");
  return nullptr;
}

/// The positions of a forward's n tokens: the session's next ones.
std::vector<int32_t> nextPositions(const moert_session &session, int64_t n) {
  std::vector<int32_t> positions(n);
  for (int64_t i = 0; i < n; ++i)
    positions[i] = int32_t(session.position + i);
  return positions;
}

/// A forward's leading descriptors over `data` (host pointers on cpu,
/// device pointers on cuda): tokens [n], positions [n], logits [n, vocab],
/// exit_loop [n], then K and V [capacity, width] of every cache slot.
llvm::SmallVector<Descriptor> forwardDescriptors(const moert_session &session,
                                                 int64_t n,
                                                 void *const data[4]) {
  const moert_model &model = *session.model;
  const moert_model_info &info = model.info;
  llvm::SmallVector<Descriptor> descriptors = {
      Descriptor(data[0], {n}), Descriptor(data[1], {n}),
      Descriptor(data[2], {n, info.vocab_size}), Descriptor(data[3], {n})};
  for (size_t slot = 0; slot < model.cacheWidths.size(); ++slot)
    for (int kv = 0; kv < 2; ++kv)
      descriptors.emplace_back(
          session.caches[2 * slot + kv],
          llvm::ArrayRef<int64_t>{session.capacity, model.cacheWidths[slot]});
  return descriptors;
}

llvm::Error parseManifest(llvm::StringRef text, moert_model &model) {
  auto fail = [](const llvm::Twine &why) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "invalid model manifest: " + why);
  };
  llvm::Expected<llvm::json::Value> json = llvm::json::parse(text);
  if (!json)
    return fail(llvm::toString(json.takeError()));
  const llvm::json::Object *root = json->getAsObject();
  if (!root)
    return fail("not an object");
  auto integer = [&](llvm::StringRef key, int64_t &out) {
    std::optional<int64_t> v = root->getInteger(key);
    if (v)
      out = *v;
    return v.has_value();
  };
  moert_model_info &info = model.info;
  const llvm::json::Array *weights = root->getArray("weights");
  if (!integer("hidden_size", info.hidden_size) ||
      !integer("passes", info.passes) || !integer("layers", info.layers) ||
      !integer("top_k", info.top_k) || !integer("experts", info.experts) ||
      !weights)
    return fail("missing a field");
  info.is_decoder = root->getString("kind") == "decoder";
  if (std::optional<llvm::StringRef> target = root->getString("target"))
    model.target = target->str();
  if (model.target != "cpu" && model.target != "cuda")
    return fail("unknown target '" + model.target + "' (expected cpu or cuda)");
  if (info.is_decoder) {
    const llvm::json::Array *widths = root->getArray("cache_widths");
    if (!integer("vocab_size", info.vocab_size) ||
        !integer("max_positions", info.max_positions) || !widths)
      return fail("a decoder lacks vocab_size, max_positions or cache_widths");
    for (const llvm::json::Value &w : *widths)
      model.cacheWidths.push_back(w.getAsInteger().value_or(0));
  }
  for (const llvm::json::Value &w : *weights) {
    const llvm::json::Object *obj = w.getAsObject();
    std::optional<llvm::StringRef> source =
        obj ? obj->getString("source") : std::nullopt;
    std::optional<llvm::StringRef> dtype =
        obj ? obj->getString("dtype") : std::nullopt;
    const llvm::json::Array *shape = obj ? obj->getArray("shape") : nullptr;
    if (!source || !dtype || !shape)
      return fail("a weight lacks source, dtype or shape");
    WeightSpec spec{source->str(),
                    *dtype == "BF16" ? moert::DType::BF16 : moert::DType::F32,
                    {},
                    obj->getBoolean("transpose").value_or(false)};
    if (const llvm::json::Value *device = obj->get("device_dtype")) {
      std::optional<llvm::StringRef> name = device->getAsString();
      if (name == "BF16")
        spec.deviceDType = moert::DType::BF16;
      else if (name != "F32")
        return fail(
            "weight '" + spec.source + "' has device_dtype " +
            (name ? "'" + *name + "'" : llvm::Twine("that is no string")) +
            " (expected F32 or BF16)");
    }
    for (const llvm::json::Value &d : *shape) {
      std::optional<int64_t> size = d.getAsInteger();
      if (!size || *size < 0)
        return fail("weight '" + spec.source + "' has a bad shape");
      spec.shape.push_back(*size);
    }
    model.specs.push_back(std::move(spec));
  }
  return llvm::Error::success();
}

/// A run of one file tensor's elements that goes next into a weight. With
/// `rows` > 0 the run is [.., cols, rows] matrices that go in transposed,
/// as [.., rows, cols].
struct Piece {
  const moert::TensorView *tensor;
  size_t first, count;
  int64_t rows = 0, cols = 0;
};

/// Newer Hugging Face checkpoints store an expert group fused:
/// `<prefix>.experts.gate_up_proj` [E, 2f, d] (gate rows first, then up) and
/// `<prefix>.experts.down_proj` [E, d, f]. Plans a `{e}` source from there
/// when the per-expert tensors are absent; returns std::nullopt when the
/// source has no fused form in this checkpoint.
std::optional<llvm::Error>
planFusedExperts(const moert::WeightFiles &files, const WeightSpec &spec,
                 llvm::SmallVectorImpl<Piece> &pieces,
                 std::vector<std::string> &names) {
  llvm::StringRef source = spec.source;
  auto [prefix, rest] = source.split(".experts.{e}.");
  if (rest.empty() || spec.shape.size() != 3)
    return std::nullopt;
  bool down = rest == "down_proj.weight";
  bool gate = rest == "gate_proj.weight";
  if (!down && !gate && rest != "up_proj.weight")
    return std::nullopt;
  std::string fused =
      (prefix + ".experts." + (down ? "down_proj" : "gate_up_proj")).str();
  if (!files.has(fused))
    return std::nullopt;
  int64_t experts = spec.shape[0], rows = spec.shape[1], cols = spec.shape[2];
  llvm::SmallVector<int64_t, 3> shape = {experts, down ? rows : 2 * rows, cols};
  auto tensor = files.get(fused, spec.dtype, shape);
  if (!tensor)
    return tensor.takeError();
  names = {fused};
  size_t matrix = size_t(rows * cols);
  if (down) {
    pieces.push_back({&*tensor, 0, size_t(experts) * matrix});
    return llvm::Error::success();
  }
  // Each expert's gate (first f rows) or up (next f rows) half.
  for (int64_t e = 0; e < experts; ++e)
    pieces.push_back({&*tensor, (e * 2 + (gate ? 0 : 1)) * matrix, matrix});
  return llvm::Error::success();
}

/// Finds the file tensors of one weight (checking their dtypes and shapes):
/// its source, the per-expert tensors of a `{e}` source stacked, or a slice
/// of the fused expert tensors; and the pieces of them that make the
/// weight, in order.
llvm::Error planWeight(const moert::WeightFiles &files, const WeightSpec &spec,
                       llvm::SmallVectorImpl<Piece> &pieces,
                       std::vector<std::string> &names) {
  llvm::SmallVector<int64_t, 4> shape(spec.shape.begin(), spec.shape.end());
  size_t pos = spec.source.find("{e}");
  if (pos != std::string::npos) {
    if (shape.empty())
      return llvm::createStringError(
          "weight '" + spec.source +
          "' has an {e} source but no expert dimension");
    for (int64_t e = 0; e < shape[0]; ++e)
      names.push_back(
          std::string(spec.source).replace(pos, 3, std::to_string(e)));
    shape.erase(shape.begin());
    if (!names.empty() && !files.has(names.front()))
      if (auto fused = planFusedExperts(files, spec, pieces, names))
        return std::move(*fused);
  } else {
    names.push_back(spec.source);
  }
  // A transposed weight is stored [..., cols, rows] for a [..., rows, cols]
  // weight; each matrix is transposed back as it is copied.
  size_t rank = shape.size();
  if (spec.transpose && rank < 2)
    return llvm::createStringError("weight '" + spec.source +
                                   "' is marked transposed but is no matrix");
  llvm::SmallVector<int64_t, 4> stored = shape;
  if (spec.transpose)
    std::swap(stored[rank - 2], stored[rank - 1]);
  for (const std::string &name : names) {
    auto tensor = files.get(name, spec.dtype, stored);
    if (!tensor)
      return tensor.takeError();
    Piece piece{&*tensor, 0, size_t(tensor->numElements())};
    if (spec.transpose)
      piece.rows = shape[rank - 2], piece.cols = shape[rank - 1];
    pieces.push_back(piece);
  }
  return llvm::Error::success();
}

/// Element i of an F32 or BF16 file tensor as T: float (bf16 widened,
/// exactly) or uint16_t (the bits of a BF16 tensor as they are).
template <typename T> T elementAt(const moert::TensorView &t, size_t i);
template <> float elementAt<float>(const moert::TensorView &t, size_t i) {
  return t.dtype == moert::DType::F32
             ? llvm::bit_cast<float>(
                   llvm::support::endian::read32le(t.data + 4 * i))
             : moert::bf16ToF32(
                   llvm::support::endian::read16le(t.data + 2 * i));
}
template <> uint16_t elementAt<uint16_t>(const moert::TensorView &t, size_t i) {
  return llvm::support::endian::read16le(t.data + 2 * i);
}

/// Copies the pieces, one after the other, to `out`.
template <typename T> void copyPieces(llvm::ArrayRef<Piece> pieces, T *out) {
  for (const Piece &p : pieces) {
    if (p.rows == 0) {
      for (size_t i = 0; i < p.count; ++i)
        out[i] = elementAt<T>(*p.tensor, p.first + i);
    } else {
      size_t rows = size_t(p.rows), cols = size_t(p.cols);
      for (size_t m = 0; m < p.count; m += rows * cols)
        for (size_t r = 0; r < rows; ++r)
          for (size_t c = 0; c < cols; ++c)
            out[m + r * cols + c] =
                elementAt<T>(*p.tensor, p.first + m + c * rows + r);
    }
    out += p.count;
  }
}

/// Rounds an f32 weight to bf16, to nearest even (NaNs stay NaNs).
llvm::Expected<WeightBuffer> narrowToBF16(const WeightBuffer &f32,
                                          const std::string &weight) {
  auto bf16 = WeightBuffer::allocate(moert::DType::BF16, f32.elements, weight);
  if (!bf16)
    return bf16.takeError();
  const auto *in = static_cast<const float *>(f32.data());
  auto *out = static_cast<uint16_t *>(bf16->data());
  for (size_t i = 0; i < f32.elements; ++i)
    out[i] = moert::f32ToBF16(in[i]);
  return bf16;
}

/// Reads one weight in its device dtype, stacking the per-expert tensors of
/// a `{e}` source (or slicing the fused expert tensors) and transposing
/// where the manifest says; records the tensor names it used. The elements
/// are f32 (bf16 widened) while they are stacked and transposed, except
/// that a BF16 file tensor bound as BF16 keeps its bits; rounding f32 to a
/// BF16 device dtype is the last step.
llvm::Expected<WeightBuffer> loadWeight(const moert::WeightFiles &files,
                                        const WeightSpec &spec,
                                        std::set<std::string> &used) {
  llvm::SmallVector<Piece, 4> pieces;
  std::vector<std::string> names;
  if (llvm::Error err = planWeight(files, spec, pieces, names))
    return std::move(err);
  bool bits = spec.deviceDType == moert::DType::BF16 &&
              spec.dtype == moert::DType::BF16;
  size_t elements = 0;
  for (const Piece &p : pieces)
    elements += p.count;
  auto buffer = WeightBuffer::allocate(
      bits ? moert::DType::BF16 : moert::DType::F32, elements, spec.source);
  if (!buffer)
    return buffer.takeError();
  if (bits)
    copyPieces(pieces, static_cast<uint16_t *>(buffer->data()));
  else
    copyPieces(pieces, static_cast<float *>(buffer->data()));
  used.insert(names.begin(), names.end());
  if (buffer->dtype != spec.deviceDType)
    return narrowToBF16(*buffer, spec.source);
  return buffer;
}
} // namespace

extern "C" {
moert_status_code moert_status_get_code(moert_status status) {
  return status ? status->code : MOERT_OK;
}
const char *moert_status_get_message(moert_status status) {
  return status ? status->message.c_str() : "ok";
}
void moert_status_free(moert_status status) { delete status; }

moert_status moert_context_create(const char *device, moert_context **out) {
  llvm::StringRef name = device ? device : "";
  if (!out)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_context_create: null argument");
  if (name == "cuda") {
    // Say exactly what is missing; never fall back to the CPU silently.
    std::string problem;
    auto cuda = moert::cuda::Device::create(problem);
    if (!cuda)
      return makeStatus(MOERT_UNAVAILABLE,
                        "device 'cuda': " + problem +
                            "; use 'cpu' (there is no silent CPU fallback)");
    *out = new moert_context{name.str(), std::move(cuda)};
    return nullptr;
  }
  if (name != "cpu")
    return makeStatus(MOERT_INVALID_ARGUMENT, "unknown device '" + name.str() +
                                                  "' (expected cpu or cuda)");
  std::string problem = moert::cpu::environmentProblem();
  if (!problem.empty())
    return makeStatus(MOERT_INVALID_ARGUMENT, "device 'cpu': " + problem);
  *out = new moert_context{name.str(), nullptr};
  return nullptr;
}
void moert_context_free(moert_context *ctx) { delete ctx; }

moert_status moert_context_set_cuda_stream(moert_context *ctx, void *stream) {
  if (!ctx)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_context_set_cuda_stream: null context");
  if (!ctx->cuda)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_context_set_cuda_stream: the context's device is "
                      "'" +
                          ctx->device + "', not 'cuda'");
  ctx->cuda->setStream(static_cast<moert::cuda::CUstream>(stream));
  return nullptr;
}

int32_t moert_context_get_cuda_capability(const moert_context *ctx) {
  return ctx && ctx->cuda ? ctx->cuda->computeCapability() : 0;
}

moert_status moert_model_load(moert_context *ctx,
                              const moert_compiled_model *compiled,
                              const char *weights_path, moert_model **out) {
  if (!ctx || !compiled || !compiled->manifest || !weights_path || !out)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_model_load: null argument");
  auto model = std::make_unique<moert_model>();
  if (llvm::Error err = parseManifest(compiled->manifest, *model))
    return fromError(std::move(err), MOERT_INVALID_ARGUMENT);
  if (model->target != ctx->device)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_model_load: the model was compiled for target '" +
                          model->target + "' but the context's device is '" +
                          ctx->device + "'; create the context with device '" +
                          model->target +
                          "' or compile the model with "
                          "moe-compile --target " +
                          ctx->device);
  if (ctx->cuda) {
    if (!compiled->gpu_builds || compiled->gpu_build_count <= 0)
      return makeStatus(MOERT_INVALID_ARGUMENT,
                        "moert_model_load: the model's manifest says target "
                        "'cuda' but its record has no gpu_builds");
    std::vector<moert::cuda::KernelBuild> builds;
    for (int64_t i = 0; i < compiled->gpu_build_count; ++i) {
      const moert_gpu_build &build = compiled->gpu_builds[i];
      if (!build.chip || !build.run || !build.binary || build.binary_size <= 0)
        return makeStatus(MOERT_INVALID_ARGUMENT,
                          "moert_model_load: GPU build " + std::to_string(i) +
                              " of the record lacks its chip, run function "
                              "or binary");
      builds.push_back({build.chip, build.binary});
    }
    // The kernels first: a GPU they cannot run on should not cost a read
    // of the weights.
    auto cuda = moert::cuda::DeviceModel::load(*ctx->cuda, builds);
    if (!cuda)
      return fromError(cuda.takeError(), MOERT_UNAVAILABLE);
    model->cuda = std::move(*cuda);
    const moert_gpu_build &loaded =
        compiled->gpu_builds[model->cuda->buildIndex()];
    model->run = loaded.run;
    model->info.gpu_chip = loaded.chip;
  } else if (!(model->run = compiled->run)) {
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_model_load: the record of this cpu model has no "
                      "run function");
  }

  auto files = moert::WeightFiles::open(weights_path);
  if (!files)
    return fromError(files.takeError(), MOERT_INVALID_ARGUMENT);
  std::set<std::string> used;
  for (const WeightSpec &spec : model->specs) {
    auto values = loadWeight(*files, spec, used);
    if (!values)
      return fromError(values.takeError(), MOERT_INVALID_ARGUMENT);
    if (!model->cuda) {
      model->weights.push_back(std::move(*values));
      continue;
    }
    // On cuda the host copy goes once it is on the device.
    if (llvm::Error err = model->cuda->addWeight(
            spec.source,
            llvm::ArrayRef(static_cast<const uint8_t *>(values->data()),
                           values->bytes())))
      return fromError(std::move(err), MOERT_INTERNAL);
  }
  if (model->cuda)
    if (llvm::Error err = model->cuda->finishLoading())
      return fromError(std::move(err), MOERT_INTERNAL);
  for (const auto &[tensor, file] : files->tensors())
    if (!used.count(tensor->name))
      return makeStatus(MOERT_INVALID_ARGUMENT,
                        file + ": unexpected tensor '" + tensor->name +
                            "': the model has no weight bound to it");
  *out = model.release();
  return nullptr;
}

moert_model_info moert_model_get_info(const moert_model *model) {
  return model->info;
}
void moert_model_free(moert_model *model) { delete model; }

moert_status moert_model_run(moert_model *model, int64_t tokens,
                             const float *hidden, const moert_outputs *out) {
  if (!model || !hidden || !out || !out->hidden_states || !out->exit_loop ||
      !out->expert_ids || !out->expert_gates)
    return makeStatus(MOERT_INVALID_ARGUMENT, "moert_model_run: null argument");
  if (model->info.is_decoder)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_model_run: this model is a decoder (token ids "
                      "to logits); run it with moert_session_forward");
  if (tokens < 1)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_model_run: tokens must be at least 1");
  const moert_model_info &info = model->info;
  int64_t steps = info.passes * info.layers;
  llvm::SmallVector<int64_t, 3> shapes[] = {{tokens, info.hidden_size},
                                            {tokens, info.hidden_size},
                                            {tokens},
                                            {steps, tokens, info.top_k},
                                            {steps, tokens, info.top_k}};
  void *host[] = {const_cast<float *>(hidden), out->hidden_states,
                  out->exit_loop, out->expert_ids, out->expert_gates};
  if (!model->cuda) {
    llvm::SmallVector<Descriptor> descriptors;
    for (int i = 0; i < 5; ++i)
      descriptors.emplace_back(host[i], shapes[i]);
    return runOnHost(*model, descriptors);
  }
  // Every element is 4 bytes (f32 or i32); hidden_in is the only input.
  moert::cuda::DeviceModel::Buffer buffers[5];
  for (int i = 0; i < 5; ++i) {
    int64_t elements = 1;
    for (int64_t size : shapes[i])
      elements *= size;
    buffers[i] = {host[i], size_t(elements) * 4, i == 0, i != 0};
  }
  llvm::Error err = model->cuda->run(buffers, [&] {
    llvm::SmallVector<Descriptor> descriptors;
    for (int i = 0; i < 5; ++i)
      descriptors.emplace_back(buffers[i].device, shapes[i]);
    runCompiled(*model, descriptors);
  });
  if (err)
    return fromError(std::move(err), MOERT_INTERNAL);
  return nullptr;
}

moert_status moert_session_create(moert_model *model, moert_session **out) {
  return moert_session_create_with_capacity(
      model, model ? model->info.max_positions : 0, out);
}

moert_status moert_session_create_with_capacity(moert_model *model,
                                                int64_t capacity,
                                                moert_session **out) {
  if (!model || !out)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_session_create: null argument");
  if (!model->info.is_decoder)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_session_create: this model is not a decoder; "
                      "run it with moert_model_run");
  if (capacity < 1 || capacity > model->info.max_positions)
    return makeStatus(MOERT_INVALID_ARGUMENT,
                      "moert_session_create: a capacity of " +
                          std::to_string(capacity) +
                          " positions is outside [1, max_position_embeddings "
                          "= " +
                          std::to_string(model->info.max_positions) + "]");
  auto session = std::make_unique<moert_session>(model);
  session->capacity = capacity;
  int64_t positions = capacity;
  for (int64_t width : model->cacheWidths)
    for (int kv = 0; kv < 2; ++kv) {
      if (model->cuda) {
        // Device memory once per session; its destructor frees what the
        // loop got so far.
        auto cache = model->cuda->allocatePersistent(
            size_t(positions * width) * sizeof(float),
            "a KV cache of " + llvm::Twine(positions) + " positions");
        if (!cache)
          return makeStatus(MOERT_INTERNAL,
                            "moert_session_create on cuda: " +
                                llvm::toString(cache.takeError()));
        session->caches.push_back(*cache);
        continue;
      }
      session->hostCaches.emplace_back(
          new (std::nothrow) float[positions * width]);
      if (!session->hostCaches.back())
        return makeStatus(MOERT_INTERNAL, "cannot allocate a KV cache of " +
                                              std::to_string(positions) +
                                              " positions");
      session->caches.push_back(session->hostCaches.back().get());
    }
  *out = session.release();
  return nullptr;
}

moert_status moert_session_forward(moert_session *session,
                                   const int32_t *tokens, int64_t n,
                                   float *logits, int32_t *exit_loop) {
  if (moert_status status = checkForward(session, tokens, n, logits))
    return status;
  moert_model *model = session->model;
  std::vector<int32_t> positions = nextPositions(*session, n);
  if (!model->cuda) {
    std::vector<int32_t> exitScratch;
    if (!exit_loop) {
      exitScratch.resize(n);
      exit_loop = exitScratch.data();
    }
    void *data[4] = {const_cast<int32_t *>(tokens), positions.data(), logits,
                     exit_loop};
    llvm::SmallVector<Descriptor> descriptors =
        forwardDescriptors(*session, n, data);
    if (moert_status failed = runOnHost(*model, descriptors))
      return failed;
    session->position += n;
    return nullptr;
  }
  // tokens and positions go in, logits (and exit_loop if asked for) come
  // out; the entry writes exit_loop on the device either way. Every element
  // is 4 bytes.
  size_t bytes = size_t(n) * 4;
  moert::cuda::DeviceModel::Buffer buffers[4] = {
      {const_cast<int32_t *>(tokens), bytes, true, false},
      {positions.data(), bytes, true, false},
      {logits, bytes * size_t(model->info.vocab_size), false, true},
      {exit_loop, bytes, false, exit_loop != nullptr}};
  llvm::Error err = model->cuda->run(
      buffers,
      [&] {
        void *data[4];
        for (int i = 0; i < 4; ++i)
          data[i] = buffers[i].device;
        llvm::SmallVector<Descriptor> descriptors =
            forwardDescriptors(*session, n, data);
        runCompiled(*model, descriptors);
      },
      "moert_session_forward");
  // A failed forward leaves the position: a retry rewrites the same cache
  // rows, and attention never reads past them.
  if (err)
    return fromError(std::move(err), MOERT_INTERNAL);
  session->position += n;
  return nullptr;
}

int64_t moert_session_position(const moert_session *session) {
  return session ? session->position : 0;
}

void moert_session_free(moert_session *session) { delete session; }
}
