//===- WeightFiles.h - the safetensors files of a checkpoint ----*- C++ -*-===//
//
// A checkpoint is one .safetensors file or, as Hugging Face shards large
// models, a model.safetensors.index.json whose weight_map names the shard of
// every tensor. A directory stands for the one of the two it holds.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_WEIGHTFILES_H
#define MOERT_WEIGHTFILES_H

#include "moert/Safetensors.h"

#include "llvm/ADT/StringMap.h"

#include <memory>
#include <string>
#include <vector>

namespace moert {
class WeightFiles {
public:
  static llvm::Expected<WeightFiles> open(llvm::StringRef path);

  /// The tensor `name` with the given dtype and shape, from its shard.
  llvm::Expected<const TensorView &> get(llvm::StringRef name, DType dtype,
                                         llvm::ArrayRef<int64_t> shape) const;
  /// Whether the checkpoint has a tensor of that name.
  bool has(llvm::StringRef name) const;
  /// Every tensor of every file, with the file it is in.
  std::vector<std::pair<const TensorView *, std::string>> tensors() const;

private:
  std::string path; ///< what the user named, for messages
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  /// Sharded checkpoints: tensor -> index into `files`.
  llvm::StringMap<size_t> shardOf;
};
} // namespace moert

#endif // MOERT_WEIGHTFILES_H
