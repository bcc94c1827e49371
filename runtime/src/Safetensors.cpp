//===- Safetensors.cpp - Safetensors reader and writer --------------------===//
//
// Every check runs before the value it guards is used, so any byte sequence
// either yields a file whose tensors lie inside the buffer or an error.
//
//===----------------------------------------------------------------------===//

#include "moert/Safetensors.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/bit.h"
#include "llvm/Support/Endian.h"
#include "llvm/Support/EndianStream.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MathExtras.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <tuple>

using namespace llvm;
using namespace moert;

/// Bytes of the little-endian header length that starts every file.
static constexpr uint64_t lengthBytes = 8;

/// The reference implementation's limit; it bounds what parsing may allocate.
static constexpr uint64_t maxHeaderBytes = 100'000'000;

/// llvm::json::parse recurses once per nesting level, so a header of a few
/// hundred thousand '[' would overflow the stack. Real headers nest 3 deep.
static constexpr unsigned maxHeaderDepth = 64;

static constexpr StringLiteral metadataKey = "__metadata__";

static Error makeError(const Twine &message) {
  return createStringError(message);
}

/// Prefixes `err` with `context`, e.g. the tensor it concerns.
static Error withContext(const Twine &context, Error err) {
  return makeError(context + ": " + toString(std::move(err)));
}

static std::string formatShape(ArrayRef<int64_t> shape) {
  std::string text;
  raw_string_ostream os(text);
  os << '[';
  interleaveComma(shape, os);
  os << ']';
  return text;
}

StringRef moert::dtypeName(DType dtype) {
  switch (dtype) {
  case DType::F32:
    return "F32";
  case DType::BF16:
    return "BF16";
  case DType::I32:
    return "I32";
  }
  llvm_unreachable("unknown DType");
}

size_t moert::dtypeSize(DType dtype) {
  switch (dtype) {
  case DType::F32:
  case DType::I32:
    return 4;
  case DType::BF16:
    return 2;
  }
  llvm_unreachable("unknown DType");
}

/// The byte size of a `dtype` tensor of `shape`. The product is checked in
/// shape order, so numElements() cannot overflow on a shape that passed.
static Expected<uint64_t> byteSize(ArrayRef<int64_t> shape, DType dtype) {
  for (auto [index, dim] : enumerate(shape))
    if (dim < 0)
      return makeError(
          formatv("shape dimension {0} is negative ({1})", index, dim));
  uint64_t bytes = dtypeSize(dtype);
  for (int64_t dim : shape) {
    bool overflowed;
    bytes = SaturatingMultiply(bytes, static_cast<uint64_t>(dim), &overflowed);
    if (overflowed)
      return makeError(formatv("shape {0} of {1} overflows a 64-bit byte size",
                               formatShape(shape), dtypeName(dtype)));
  }
  return bytes;
}

int64_t TensorView::numElements() const {
  int64_t count = 1;
  for (int64_t dim : shape)
    count *= dim;
  return count;
}

float moert::bf16ToF32(uint16_t bits) {
  return bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t moert::f32ToBF16(float value) {
  uint32_t bits = bit_cast<uint32_t>(value);
  // Truncation could drop every set payload bit and turn the NaN into an
  // infinity, so force the quiet bit.
  if (std::isnan(value))
    return static_cast<uint16_t>(bits >> 16) | 0x0040;
  // Adding just under half an ulp, plus the kept lowest bit, rounds ties to
  // even; a carry into the exponent is the correct round-up (up to infinity).
  uint32_t keptLowestBit = (bits >> 16) & 1;
  return static_cast<uint16_t>((bits + 0x7fff + keptLowestBit) >> 16);
}

Expected<std::vector<float>> moert::readAsF32(const TensorView &tensor) {
  if (tensor.dtype == DType::I32)
    return makeError(formatv("tensor '{0}' has dtype I32; readAsF32 reads "
                             "F32 or BF16",
                             tensor.name));
  std::vector<float> values(tensor.numBytes / dtypeSize(tensor.dtype));
  for (size_t i = 0, e = values.size(); i < e; ++i)
    values[i] =
        tensor.dtype == DType::F32
            ? bit_cast<float>(support::endian::read32le(tensor.data + 4 * i))
            : bf16ToF32(support::endian::read16le(tensor.data + 2 * i));
  return values;
}

Expected<std::vector<int32_t>> moert::readAsI32(const TensorView &tensor) {
  if (tensor.dtype != DType::I32)
    return makeError(formatv("tensor '{0}' has dtype {1}; readAsI32 reads I32",
                             tensor.name, dtypeName(tensor.dtype)));
  std::vector<int32_t> values(tensor.numBytes / 4);
  for (size_t i = 0, e = values.size(); i < e; ++i)
    values[i] =
        support::endian::read<int32_t>(tensor.data + 4 * i, endianness::little);
  return values;
}

//===----------------------------------------------------------------------===//
// Reader
//===----------------------------------------------------------------------===//

/// Whether `json` opens more than `limit` arrays or objects at once. Brackets
/// inside strings do not count.
static bool nestsDeeperThan(StringRef json, unsigned limit) {
  unsigned depth = 0;
  bool inString = false;
  for (size_t i = 0, e = json.size(); i < e; ++i) {
    char c = json[i];
    if (inString) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit)
        return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

/// The members of `object` sorted by key: json::Object is a hash map, and
/// sorting makes which error is reported first independent of hashing.
static std::vector<const json::Object::value_type *>
sortedMembers(const json::Object &object) {
  std::vector<const json::Object::value_type *> members;
  for (const json::Object::value_type &member : object)
    members.push_back(&member);
  sort(members, [](const auto *lhs, const auto *rhs) {
    return StringRef(lhs->first) < StringRef(rhs->first);
  });
  return members;
}

/// The elements of `value` if it is an array of integers.
static std::optional<SmallVector<int64_t>>
getIntegers(const json::Value &value) {
  const json::Array *array = value.getAsArray();
  if (!array)
    return std::nullopt;
  SmallVector<int64_t> integers;
  for (const json::Value &element : *array) {
    std::optional<int64_t> integer = element.getAsInteger();
    if (!integer)
      return std::nullopt;
    integers.push_back(*integer);
  }
  return integers;
}

static Expected<const json::Value &> getField(const json::Object &entry,
                                              StringRef key) {
  if (const json::Value *value = entry.get(key))
    return *value;
  return makeError("missing '" + key + "'");
}

static Expected<DType> parseDType(const json::Value &value) {
  std::optional<StringRef> name = value.getAsString();
  if (!name)
    return makeError("'dtype' must be a string");
  if (*name == "F32")
    return DType::F32;
  if (*name == "BF16")
    return DType::BF16;
  if (*name == "I32")
    return DType::I32;
  return makeError("unsupported dtype '" + *name +
                   "' (supported: F32, BF16, I32)");
}

/// Parses one tensor entry and checks it against the `data` section.
static Expected<TensorView> parseTensor(StringRef name,
                                        const json::Value &entryValue,
                                        ArrayRef<uint8_t> data) {
  const json::Object *entry = entryValue.getAsObject();
  if (!entry)
    return makeError("entry is not a JSON object");

  Expected<const json::Value &> dtypeValue = getField(*entry, "dtype");
  if (!dtypeValue)
    return dtypeValue.takeError();
  Expected<DType> dtype = parseDType(*dtypeValue);
  if (!dtype)
    return dtype.takeError();

  Expected<const json::Value &> shapeValue = getField(*entry, "shape");
  if (!shapeValue)
    return shapeValue.takeError();
  std::optional<SmallVector<int64_t>> shape = getIntegers(*shapeValue);
  if (!shape)
    return makeError("'shape' must be an array of integers");
  Expected<uint64_t> bytes = byteSize(*shape, *dtype);
  if (!bytes)
    return bytes.takeError();

  Expected<const json::Value &> offsetsValue = getField(*entry, "data_offsets");
  if (!offsetsValue)
    return offsetsValue.takeError();
  std::optional<SmallVector<int64_t>> offsets = getIntegers(*offsetsValue);
  if (!offsets || offsets->size() != 2 || (*offsets)[0] < 0 ||
      (*offsets)[1] < 0)
    return makeError(
        "'data_offsets' must be an array of two non-negative integers");
  uint64_t begin = (*offsets)[0];
  uint64_t end = (*offsets)[1];
  if (begin > end)
    return makeError(
        formatv("data_offsets begin {0} is past their end {1}", begin, end));
  if (end > data.size())
    return makeError(formatv("data_offsets end {0} is past the end of the "
                             "data section ({1} bytes)",
                             end, data.size()));
  if (end - begin != *bytes)
    return makeError(formatv("shape {0} of {1} needs {2} bytes, but "
                             "data_offsets [{3}, {4}] hold {5}",
                             formatShape(*shape), dtypeName(*dtype), *bytes,
                             begin, end, end - begin));

  return TensorView{name.str(), *dtype,
                    std::vector<int64_t>(shape->begin(), shape->end()),
                    data.data() + begin, static_cast<size_t>(end - begin)};
}

static Expected<std::map<std::string, std::string>>
parseMetadata(const json::Value &value) {
  const json::Object *object = value.getAsObject();
  if (!object)
    return makeError("'__metadata__' must be an object of strings");
  std::map<std::string, std::string> metadata;
  for (const json::Object::value_type *member : sortedMembers(*object)) {
    std::optional<StringRef> text = member->second.getAsString();
    if (!text)
      return makeError("'__metadata__' entry '" + StringRef(member->first) +
                       "' must be a string");
    metadata.emplace(member->first.str(), text->str());
  }
  return metadata;
}

/// Checks that no two non-empty tensors share a byte. Bytes no tensor covers
/// are allowed.
static Error checkDisjoint(ArrayRef<TensorView> tensors,
                           const uint8_t *dataStart) {
  std::vector<const TensorView *> byOffset;
  for (const TensorView &tensor : tensors)
    if (tensor.numBytes != 0)
      byOffset.push_back(&tensor);
  // Ties go by name so that the message is deterministic.
  sort(byOffset, [](const TensorView *lhs, const TensorView *rhs) {
    return std::tie(lhs->data, lhs->name) < std::tie(rhs->data, rhs->name);
  });
  for (size_t i = 1; i < byOffset.size(); ++i) {
    const TensorView &prev = *byOffset[i - 1];
    const TensorView &next = *byOffset[i];
    if (next.data >= prev.data + prev.numBytes)
      continue;
    size_t prevBegin = prev.data - dataStart;
    size_t nextBegin = next.data - dataStart;
    return makeError(formatv("tensors '{0}' (data_offsets [{1}, {2}]) and "
                             "'{3}' (data_offsets [{4}, {5}]) overlap",
                             prev.name, prevBegin, prevBegin + prev.numBytes,
                             next.name, nextBegin, nextBegin + next.numBytes));
  }
  return Error::success();
}

Error SafetensorsFile::parse() {
  StringRef contents = buffer->getBuffer();
  if (contents.size() < lengthBytes)
    return makeError(formatv("file is {0} bytes, too short for the 8-byte "
                             "header length",
                             contents.size()));
  uint64_t headerBytes = support::endian::read64le(contents.data());
  if (headerBytes > maxHeaderBytes)
    return makeError(formatv("header length {0} exceeds the limit of {1} bytes",
                             headerBytes, maxHeaderBytes));
  uint64_t available = contents.size() - lengthBytes;
  if (headerBytes > available)
    return makeError(formatv("header length {0} runs past the end of the "
                             "file: only {1} bytes follow the length",
                             headerBytes, available));

  StringRef header = contents.substr(lengthBytes, headerBytes);
  ArrayRef<uint8_t> data =
      arrayRefFromStringRef(contents.drop_front(lengthBytes + headerBytes));
  if (nestsDeeperThan(header, maxHeaderDepth))
    return makeError(
        formatv("header JSON nests deeper than {0} levels", maxHeaderDepth));
  Expected<json::Value> json = json::parse(header);
  if (!json)
    return withContext("header is not valid JSON", json.takeError());
  const json::Object *root = json->getAsObject();
  if (!root)
    return makeError("header is not a JSON object");

  // Sorted members make the tensors come out sorted by name.
  for (const json::Object::value_type *member : sortedMembers(*root)) {
    StringRef key = member->first;
    if (key == metadataKey) {
      Expected<std::map<std::string, std::string>> metadata =
          parseMetadata(member->second);
      if (!metadata)
        return metadata.takeError();
      metadataEntries = std::move(*metadata);
      continue;
    }
    Expected<TensorView> tensor = parseTensor(key, member->second, data);
    if (!tensor)
      return withContext("tensor '" + key + "'", tensor.takeError());
    sortedTensors.push_back(std::move(*tensor));
  }
  return checkDisjoint(sortedTensors, data.data());
}

Expected<std::unique_ptr<SafetensorsFile>>
SafetensorsFile::open(StringRef path) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(
      path, /*IsText=*/false, /*RequiresNullTerminator=*/false);
  if (!buffer)
    return createFileError(path, buffer.getError());
  return fromBuffer(std::move(*buffer));
}

Expected<std::unique_ptr<SafetensorsFile>>
SafetensorsFile::fromBuffer(std::unique_ptr<MemoryBuffer> buffer) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(buffer)));
  if (Error err = file->parse())
    return createFileError(file->path(), std::move(err));
  return std::move(file);
}

const TensorView *SafetensorsFile::find(StringRef name) const {
  auto it = partition_point(sortedTensors, [&](const TensorView &tensor) {
    return StringRef(tensor.name) < name;
  });
  if (it == sortedTensors.end() || it->name != name)
    return nullptr;
  return &*it;
}

Expected<const TensorView &>
SafetensorsFile::get(StringRef name, DType dtype,
                     ArrayRef<int64_t> shape) const {
  const TensorView *tensor = find(name);
  if (!tensor)
    return createFileError(path(),
                           makeError("tensor '" + name + "' not found"));
  if (tensor->dtype != dtype)
    return createFileError(
        path(),
        makeError(formatv("tensor '{0}' has dtype {1}, expected {2}", name,
                          dtypeName(tensor->dtype), dtypeName(dtype))));
  if (ArrayRef<int64_t>(tensor->shape) != shape)
    return createFileError(
        path(),
        makeError(formatv("tensor '{0}' has shape {1}, expected {2}", name,
                          formatShape(tensor->shape), formatShape(shape))));
  return *tensor;
}

//===----------------------------------------------------------------------===//
// Writer
//===----------------------------------------------------------------------===//

/// Rejects what would make a file the reader refuses or json::OStream
/// silently rewrites (it replaces invalid UTF-8).
static Error checkWritable(ArrayRef<TensorToWrite> tensors,
                           const std::map<std::string, std::string> &metadata) {
  StringSet<> names;
  for (const TensorToWrite &tensor : tensors) {
    if (tensor.name == metadataKey)
      return makeError("'__metadata__' is reserved and cannot name a tensor");
    if (!json::isUTF8(tensor.name))
      return makeError("tensor name '" + tensor.name + "' is not valid UTF-8");
    if (!names.insert(tensor.name).second)
      return makeError("duplicate tensor name '" + tensor.name + "'");
    Expected<uint64_t> bytes = byteSize(tensor.shape, tensor.dtype);
    if (!bytes)
      return withContext("tensor '" + tensor.name + "'", bytes.takeError());
    if (*bytes != tensor.bytes.size())
      return makeError(formatv("tensor '{0}': shape {1} of {2} needs {3} "
                               "bytes, but {4} were given",
                               tensor.name, formatShape(tensor.shape),
                               dtypeName(tensor.dtype), *bytes,
                               tensor.bytes.size()));
  }
  for (const auto &[key, value] : metadata)
    if (!json::isUTF8(key) || !json::isUTF8(value))
      return makeError("'__metadata__' entry '" + key + "' is not valid UTF-8");
  return Error::success();
}

/// The JSON header for `tensors` packed in order, space-padded as the
/// reference writer does so that the data section starts 8-byte aligned.
static std::string
renderHeader(ArrayRef<TensorToWrite> tensors,
             const std::map<std::string, std::string> &metadata) {
  std::string header;
  raw_string_ostream os(header);
  json::OStream json(os);
  json.object([&] {
    if (!metadata.empty())
      json.attributeObject(metadataKey, [&] {
        for (const auto &[key, value] : metadata)
          json.attribute(key, value);
      });
    uint64_t offset = 0;
    for (const TensorToWrite &tensor : tensors) {
      json.attributeObject(tensor.name, [&] {
        json.attribute("dtype", dtypeName(tensor.dtype));
        json.attributeArray("shape", [&] {
          for (int64_t dim : tensor.shape)
            json.value(dim);
        });
        json.attributeArray("data_offsets", [&] {
          json.value(offset);
          json.value(offset + tensor.bytes.size());
        });
      });
      offset += tensor.bytes.size();
    }
  });
  header.append(alignTo(header.size(), 8) - header.size(), ' ');
  return header;
}

static std::error_code writeContents(int fd, StringRef header,
                                     ArrayRef<TensorToWrite> tensors) {
  raw_fd_ostream os(fd, /*shouldClose=*/false);
  support::endian::write<uint64_t>(os, header.size(), endianness::little);
  os << header;
  for (const TensorToWrite &tensor : tensors)
    os << toStringRef(tensor.bytes);
  os.flush();
  std::error_code ec = os.error();
  // raw_fd_ostream aborts on destruction while it holds an error.
  os.clear_error();
  return ec;
}

Error moert::writeSafetensors(
    StringRef path, ArrayRef<TensorToWrite> tensors,
    const std::map<std::string, std::string> &metadata) {
  if (Error err = checkWritable(tensors, metadata))
    return createFileError(path, std::move(err));
  std::string header = renderHeader(tensors, metadata);

  Expected<sys::fs::TempFile> temp =
      sys::fs::TempFile::create(path + ".tmp-%%%%%%");
  if (!temp)
    return createFileError(
        path, withContext("cannot create a temporary file", temp.takeError()));
  if (std::error_code ec = writeContents(temp->FD, header, tensors))
    return createFileError(
        path, joinErrors(makeError("cannot write: " + ec.message()),
                         temp->discard()));
  // keep() removes the temporary itself when the rename fails.
  if (Error err = temp->keep(path))
    return createFileError(
        path, withContext("cannot move the temporary file into place",
                          std::move(err)));
  return Error::success();
}
