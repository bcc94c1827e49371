//===- WeightFiles.cpp - the safetensors files of a checkpoint ------------===//
#include "WeightFiles.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <map>

using namespace moert;

namespace {
llvm::Error fail(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

/// A directory means its model.safetensors, else its sharded index.
llvm::Expected<std::string> resolve(llvm::StringRef path) {
  if (!llvm::sys::fs::is_directory(path))
    return path.str();
  for (const char *name :
       {"model.safetensors", "model.safetensors.index.json"}) {
    llvm::SmallString<256> candidate(path);
    llvm::sys::path::append(candidate, name);
    if (llvm::sys::fs::exists(candidate))
      return std::string(candidate);
  }
  return fail("'" + path +
              "': the directory has neither model.safetensors nor "
              "model.safetensors.index.json");
}
} // namespace

llvm::Expected<WeightFiles> WeightFiles::open(llvm::StringRef userPath) {
  llvm::Expected<std::string> resolved = resolve(userPath);
  if (!resolved)
    return resolved.takeError();
  WeightFiles weights;
  weights.path = *resolved;
  if (!llvm::StringRef(*resolved).ends_with(".json")) {
    auto file = SafetensorsFile::open(*resolved);
    if (!file)
      return file.takeError();
    weights.files.push_back(std::move(*file));
    return std::move(weights);
  }

  auto text = llvm::MemoryBuffer::getFile(*resolved, /*IsText=*/true);
  if (!text)
    return fail("'" + *resolved + "': " + text.getError().message());
  llvm::Expected<llvm::json::Value> index =
      llvm::json::parse((*text)->getBuffer());
  if (!index)
    return fail("'" + *resolved +
                "': invalid JSON: " + llvm::toString(index.takeError()));
  const llvm::json::Object *root = index->getAsObject();
  const llvm::json::Object *map =
      root ? root->getObject("weight_map") : nullptr;
  if (!map)
    return fail("'" + *resolved + "': no \"weight_map\" object");
  llvm::StringRef dir = llvm::sys::path::parent_path(*resolved);
  // Shards by file name, opened once each, in a stable order.
  std::map<std::string, std::vector<std::string>> tensorsOf;
  for (const auto &[tensor, file] : *map) {
    std::optional<llvm::StringRef> name = file.getAsString();
    if (!name)
      return fail("'" + *resolved + "': the shard of tensor '" + tensor.str() +
                  "' is not a file name");
    tensorsOf[name->str()].push_back(tensor.str());
  }
  for (const auto &[name, tensors] : tensorsOf) {
    llvm::SmallString<256> shard(dir);
    llvm::sys::path::append(shard, name);
    auto file = SafetensorsFile::open(shard);
    if (!file)
      return fail("'" + *resolved + "': shard '" + name + "' (holding '" +
                  tensors.front() +
                  "') cannot be read: " + llvm::toString(file.takeError()));
    for (const std::string &tensor : tensors)
      weights.shardOf[tensor] = weights.files.size();
    weights.files.push_back(std::move(*file));
  }
  return std::move(weights);
}

llvm::Expected<const TensorView &>
WeightFiles::get(llvm::StringRef name, DType dtype,
                 llvm::ArrayRef<int64_t> shape) const {
  if (shardOf.empty())
    return files.front()->get(name, dtype, shape);
  auto it = shardOf.find(name);
  if (it == shardOf.end())
    return fail("'" + path + "': tensor '" + name +
                "' is not in the weight_map");
  return files[it->second]->get(name, dtype, shape);
}

bool WeightFiles::has(llvm::StringRef name) const {
  return shardOf.empty() ? files.front()->find(name) != nullptr
                         : shardOf.count(name) != 0;
}

std::vector<std::pair<const TensorView *, std::string>>
WeightFiles::tensors() const {
  std::vector<std::pair<const TensorView *, std::string>> all;
  for (const auto &file : files)
    for (const TensorView &t : file->tensors())
      all.emplace_back(&t, file->path().str());
  return all;
}
