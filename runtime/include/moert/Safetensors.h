//===- Safetensors.h - Safetensors reader and writer ------------*- C++ -*-===//
//
// Reads model weights and run inputs from safetensors files, and writes run
// outputs. Layout: an 8-byte little-endian header length N, N bytes of JSON
// mapping tensor names to {dtype, shape, data_offsets} (offsets relative to the
// end of the header) plus an optional "__metadata__" object of strings, then
// the raw little-endian tensor data.
//
// Malformed files never crash or abort: every problem is an llvm::Error whose
// message names the file and what is wrong with it.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_SAFETENSORS_H
#define MOERT_SAFETENSORS_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/MemoryBuffer.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// The element types the runtime reads and writes.
enum class DType { F32, BF16, I32 };

/// The safetensors spelling of `dtype`: "F32", "BF16" or "I32".
llvm::StringRef dtypeName(DType dtype);

/// Bytes per element of `dtype`.
size_t dtypeSize(DType dtype);

/// One tensor of a SafetensorsFile, valid as long as the file object lives.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  /// `numBytes` little-endian bytes inside the file mapping. Safetensors does
  /// not align tensor data, so this may be misaligned for `dtype`: read it
  /// with memcpy or the readAs helpers, never through a cast pointer.
  const uint8_t *data;
  size_t numBytes;

  /// The product of `shape` (1 for a scalar).
  int64_t numElements() const;
};

/// Copies the elements of an F32 or BF16 tensor out as floats.
llvm::Expected<std::vector<float>> readAsF32(const TensorView &tensor);

/// Copies the elements of an I32 tensor out.
llvm::Expected<std::vector<int32_t>> readAsI32(const TensorView &tensor);

/// A validated, read-only safetensors file. open() memory-maps the file, so
/// opening large weight files costs no copy.
class SafetensorsFile {
public:
  static llvm::Expected<std::unique_ptr<SafetensorsFile>>
  open(llvm::StringRef path);

  /// Parses an in-memory file; error messages name it by the buffer
  /// identifier.
  static llvm::Expected<std::unique_ptr<SafetensorsFile>>
  fromBuffer(std::unique_ptr<llvm::MemoryBuffer> buffer);

  /// The file name used in error messages.
  llvm::StringRef path() const { return buffer->getBufferIdentifier(); }

  /// The tensor called `name`, or nullptr.
  const TensorView *find(llvm::StringRef name) const;

  /// The tensor called `name`, or an error if it is missing or its dtype or
  /// shape differ from the given ones.
  llvm::Expected<const TensorView &> get(llvm::StringRef name, DType dtype,
                                         llvm::ArrayRef<int64_t> shape) const;

  /// All tensors, sorted by name.
  llvm::ArrayRef<TensorView> tensors() const { return sortedTensors; }

  /// The "__metadata__" entries (empty if the file has none).
  const std::map<std::string, std::string> &metadata() const {
    return metadataEntries;
  }

private:
  explicit SafetensorsFile(std::unique_ptr<llvm::MemoryBuffer> buffer)
      : buffer(std::move(buffer)) {}

  llvm::Error parse();

  std::unique_ptr<llvm::MemoryBuffer> buffer;
  std::vector<TensorView> sortedTensors;
  std::map<std::string, std::string> metadataEntries;
};

/// A tensor for writeSafetensors; `bytes` are its little-endian elements.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  llvm::ArrayRef<uint8_t> bytes;
};

/// Writes `tensors` in the given order, packed without gaps, to `path`.
/// The file is written under a temporary name and renamed into place, so a
/// failure leaves neither a partial file nor the temporary behind.
llvm::Error
writeSafetensors(llvm::StringRef path, llvm::ArrayRef<TensorToWrite> tensors,
                 const std::map<std::string, std::string> &metadata = {});

/// Widens a bfloat16 bit pattern to float (exact).
float bf16ToF32(uint16_t bits);

/// Narrows `value` to bfloat16, rounding to nearest even; NaNs stay NaNs
/// (quieted) with their sign, infinities stay infinities.
uint16_t f32ToBF16(float value);

} // namespace moert

#endif // MOERT_SAFETENSORS_H
