//===- SafetensorsFuzzer.cpp - libFuzzer target for the reader ------------===//
//
// Parses arbitrary bytes as a safetensors file and reads every tensor it
// accepts, so the sanitizers see each byte the reader hands out.
//
//===----------------------------------------------------------------------===//

#include "moert/Safetensors.h"

#include <cstddef>
#include <cstdint>

using namespace llvm;
using namespace moert;

/// Reads every element of `tensor`, checking what the reader promises.
static void readTensor(const SafetensorsFile &file, const TensorView &tensor) {
  Expected<const TensorView &> same =
      file.get(tensor.name, tensor.dtype, tensor.shape);
  if (!same || &*same != &tensor)
    __builtin_trap();
  if (static_cast<uint64_t>(tensor.numElements()) * dtypeSize(tensor.dtype) !=
      tensor.numBytes)
    __builtin_trap();
  if (tensor.dtype == DType::I32) {
    Expected<std::vector<int32_t>> values = readAsI32(tensor);
    if (!values)
      __builtin_trap();
    return;
  }
  Expected<std::vector<float>> values = readAsF32(tensor);
  if (!values)
    __builtin_trap();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  StringRef bytes(reinterpret_cast<const char *>(data), size);
  Expected<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::fromBuffer(
      MemoryBuffer::getMemBufferCopy(bytes, "fuzz-input"));
  if (!file) {
    consumeError(file.takeError());
    return 0;
  }
  for (const TensorView &tensor : (*file)->tensors())
    readTensor(**file, tensor);
  return 0;
}
