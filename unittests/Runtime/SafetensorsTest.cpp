//===- SafetensorsTest.cpp - Tests of the safetensors reader/writer -------===//

#include "moert/Safetensors.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/bit.h"
#include "llvm/Support/Endian.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"

#include "gtest/gtest.h"

#include <cmath>

using namespace llvm;
using namespace moert;

namespace {

/// The message of `err`, or "" on success.
std::string message(Error err) { return err ? toString(std::move(err)) : ""; }

/// A file made of the 8-byte little-endian length of `header`, `header` and
/// `data`.
std::string makeFile(StringRef header, StringRef data = "") {
  std::string file(8, '\0');
  support::endian::write64le(file.data(), header.size());
  return file + header.str() + data.str();
}

Expected<std::unique_ptr<SafetensorsFile>> parse(StringRef contents) {
  return SafetensorsFile::fromBuffer(
      MemoryBuffer::getMemBufferCopy(contents, "t.safetensors"));
}

/// The error of parsing `contents`, which must fail.
std::string parseError(StringRef contents) {
  Expected<std::unique_ptr<SafetensorsFile>> file = parse(contents);
  return file ? "<parsed>" : toString(file.takeError());
}

/// The error of a file holding one tensor `a` with the JSON `entry` and 8
/// data bytes.
std::string entryError(StringRef entry) {
  return parseError(makeFile(("{\"a\":" + entry + "}").str(), "01234567"));
}

std::vector<uint8_t> f32Bytes(ArrayRef<float> values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  for (auto [i, value] : enumerate(values))
    support::endian::write32le(&bytes[i * 4], bit_cast<uint32_t>(value));
  return bytes;
}

std::vector<uint8_t> bf16Bytes(ArrayRef<float> values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  for (auto [i, value] : enumerate(values))
    support::endian::write16le(&bytes[i * 2], f32ToBF16(value));
  return bytes;
}

std::vector<uint8_t> i32Bytes(ArrayRef<int32_t> values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  for (auto [i, value] : enumerate(values))
    support::endian::write32le(&bytes[i * 4], static_cast<uint32_t>(value));
  return bytes;
}

/// Tests that touch the file system, in a fresh directory each.
class SafetensorsFileTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_FALSE(sys::fs::createUniqueDirectory("moert-safetensors", dir));
  }
  void TearDown() override { sys::fs::remove_directories(dir); }

  std::string pathTo(StringRef name) const {
    SmallString<128> path(dir);
    sys::path::append(path, name);
    return std::string(path);
  }

  std::vector<std::string> listDir() const {
    std::vector<std::string> names;
    std::error_code ec;
    for (sys::fs::directory_iterator it(dir, ec), end; it != end && !ec;
         it.increment(ec))
      names.push_back(sys::path::filename(it->path()).str());
    EXPECT_FALSE(ec);
    return names;
  }

  SmallString<128> dir;
};

//===----------------------------------------------------------------------===//
// Round trip and writer
//===----------------------------------------------------------------------===//

TEST_F(SafetensorsFileTest, RoundTrip) {
  std::vector<float> weightValues = {1.5f, -2.0f, 0.0f, 3.25f, 1e-20f, -7.0f};
  std::vector<float> normValues = {1.0f, -0.5f, 3.0f, 96.0f};
  std::vector<int32_t> idValues = {-1, 0, 7};
  std::vector<uint8_t> weights = f32Bytes(weightValues);
  std::vector<uint8_t> norm = bf16Bytes(normValues);
  std::vector<uint8_t> ids = i32Bytes(idValues);
  std::vector<uint8_t> scalar = f32Bytes({42.0f});
  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {"note", "\"quoted\""}};
  std::string path = pathTo("model.safetensors");
  EXPECT_EQ(message(writeSafetensors(path,
                                     {{"w", DType::F32, {2, 3}, weights},
                                      {"norm", DType::BF16, {4}, norm},
                                      {"ids", DType::I32, {3}, ids},
                                      {"s", DType::F32, {}, scalar},
                                      {"empty", DType::F32, {0, 4}, {}}},
                                     metadata)),
            "");

  Expected<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(path);
  ASSERT_TRUE(bool(file)) << toString(file.takeError());
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(), metadata);

  std::vector<std::string> names;
  for (const TensorView &tensor : (*file)->tensors())
    names.push_back(tensor.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"empty", "ids", "norm", "s", "w"}));

  Expected<const TensorView &> w = (*file)->get("w", DType::F32, {2, 3});
  ASSERT_TRUE(bool(w)) << toString(w.takeError());
  EXPECT_EQ(w->numElements(), 6);
  EXPECT_EQ(ArrayRef<uint8_t>(w->data, w->numBytes), ArrayRef(weights));
  Expected<std::vector<float>> wValues = readAsF32(*w);
  ASSERT_TRUE(bool(wValues)) << toString(wValues.takeError());
  EXPECT_EQ(*wValues, weightValues);

  const TensorView *normView = (*file)->find("norm");
  ASSERT_NE(normView, nullptr);
  EXPECT_EQ(normView->dtype, DType::BF16);
  EXPECT_EQ(normView->shape, (std::vector<int64_t>{4}));
  Expected<std::vector<float>> normRead = readAsF32(*normView);
  ASSERT_TRUE(bool(normRead)) << toString(normRead.takeError());
  EXPECT_EQ(*normRead, normValues);

  const TensorView *idView = (*file)->find("ids");
  ASSERT_NE(idView, nullptr);
  Expected<std::vector<int32_t>> idRead = readAsI32(*idView);
  ASSERT_TRUE(bool(idRead)) << toString(idRead.takeError());
  EXPECT_EQ(*idRead, idValues);

  const TensorView *s = (*file)->find("s");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->numElements(), 1);

  const TensorView *empty = (*file)->find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numElements(), 0);
  EXPECT_EQ(empty->numBytes, 0u);
  EXPECT_EQ((*file)->find("absent"), nullptr);
}

TEST_F(SafetensorsFileTest, WriterPacksDataAfterAlignedHeader) {
  std::vector<uint8_t> a = bf16Bytes({1.0f});
  std::vector<uint8_t> b = f32Bytes({2.0f});
  std::string path = pathTo("packed.safetensors");
  EXPECT_EQ(message(writeSafetensors(
                path, {{"b", DType::BF16, {1}, a}, {"a", DType::F32, {1}, b}})),
            "");
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(path);
  ASSERT_TRUE(bool(buffer));
  StringRef contents = (*buffer)->getBuffer();
  uint64_t headerBytes = support::endian::read64le(contents.data());
  EXPECT_EQ(headerBytes % 8, 0u);
  EXPECT_EQ(contents.size(), 8 + headerBytes + 6);
  // Tensors are stored in the order given, without gaps.
  EXPECT_EQ(contents.substr(8, headerBytes).rtrim(' '),
            R"({"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},)"
            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})");
}

TEST_F(SafetensorsFileTest, SuccessfulWriteLeavesNoTemporary) {
  std::vector<uint8_t> first = i32Bytes({1});
  std::vector<uint8_t> second = i32Bytes({2});
  std::string path = pathTo("out.safetensors");
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::I32, {1}, first}})),
            "");
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::I32, {1}, second}})),
            "");
  EXPECT_EQ(listDir(), (std::vector<std::string>{"out.safetensors"}));

  Expected<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(path);
  ASSERT_TRUE(bool(file)) << toString(file.takeError());
  Expected<std::vector<int32_t>> x = readAsI32(*(*file)->find("x"));
  ASSERT_TRUE(bool(x)) << toString(x.takeError());
  EXPECT_EQ(*x, std::vector<int32_t>{2});
}

TEST_F(SafetensorsFileTest, FailedWriteLeavesNothing) {
  std::vector<uint8_t> bytes = f32Bytes({1.0f});
  std::string path = pathTo("missing/out.safetensors");
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::F32, {1}, bytes}})),
            "'" + path +
                "': cannot create a temporary file: No such file or directory");
  EXPECT_FALSE(sys::fs::exists(path));
  EXPECT_TRUE(listDir().empty());
}

TEST_F(SafetensorsFileTest, WriterRejectsInconsistentTensors) {
  std::vector<uint8_t> bytes = f32Bytes({1.0f});
  std::string path = pathTo("bad.safetensors");
  std::string prefix = "'" + path + "': ";
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::F32, {2}, bytes}})),
            prefix + "tensor 'x': shape [2] of F32 needs 8 bytes, but 4 were "
                     "given");
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::F32, {1}, bytes},
                                            {"x", DType::F32, {1}, bytes}})),
            prefix + "duplicate tensor name 'x'");
  EXPECT_EQ(message(writeSafetensors(
                path, {{"__metadata__", DType::F32, {1}, bytes}})),
            prefix + "'__metadata__' is reserved and cannot name a tensor");
  EXPECT_EQ(message(writeSafetensors(path, {{"x", DType::F32, {-1}, bytes}})),
            prefix + "tensor 'x': shape dimension 0 is negative (-1)");
  EXPECT_EQ(message(writeSafetensors(path, {{"\xff", DType::F32, {1}, bytes}})),
            prefix + "tensor name '\xff' is not valid UTF-8");
  EXPECT_EQ(message(writeSafetensors(path, {}, {{"k", "\xff"}})),
            prefix + "'__metadata__' entry 'k' is not valid UTF-8");
  EXPECT_TRUE(listDir().empty());
}

TEST_F(SafetensorsFileTest, OpenMissingFile) {
  std::string path = pathTo("absent.safetensors");
  Expected<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(path);
  ASSERT_FALSE(bool(file));
  EXPECT_EQ(toString(file.takeError()),
            "'" + path + "': No such file or directory");
}

//===----------------------------------------------------------------------===//
// bfloat16
//===----------------------------------------------------------------------===//

uint16_t narrow(uint32_t f32Bits) {
  return f32ToBF16(bit_cast<float>(f32Bits));
}

TEST(BF16Test, ExactValues) {
  EXPECT_EQ(f32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(f32ToBF16(-2.0f), 0xc000);
  EXPECT_EQ(f32ToBF16(0.0f), 0x0000);
  EXPECT_EQ(f32ToBF16(-0.0f), 0x8000);
  EXPECT_EQ(f32ToBF16(INFINITY), 0x7f80);
  EXPECT_EQ(f32ToBF16(-INFINITY), 0xff80);
  EXPECT_EQ(narrow(0x00010000), 0x0001); // Smallest subnormal.
  EXPECT_EQ(bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(bf16ToF32(0xc0a0), -5.0f);
}

TEST(BF16Test, EveryNonNaNValueRoundTrips) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    float value = bf16ToF32(bits);
    if (!std::isnan(value))
      EXPECT_EQ(f32ToBF16(value), bits);
  }
}

TEST(BF16Test, RoundsToNearestEven) {
  EXPECT_EQ(narrow(0x3f807fff), 0x3f80); // Below half: down.
  EXPECT_EQ(narrow(0x3f808001), 0x3f81); // Above half: up.
  EXPECT_EQ(narrow(0x3f808000), 0x3f80); // Tie, even below: down.
  EXPECT_EQ(narrow(0x3f818000), 0x3f82); // Tie, odd below: up.
  EXPECT_EQ(narrow(0xbf818000), 0xbf82); // Ties are symmetric in sign.
  EXPECT_EQ(narrow(0x3fff8000), 0x4000); // The carry enters the exponent.
  EXPECT_EQ(narrow(0x7f7f7fff), 0x7f7f); // Largest that stays finite.
  EXPECT_EQ(narrow(0x7f7fffff), 0x7f80); // FLT_MAX rounds to infinity.
}

TEST(BF16Test, NaNStaysNaN) {
  EXPECT_EQ(narrow(0x7fc00000), 0x7fc0);
  EXPECT_EQ(narrow(0xffc00000), 0xffc0);
  // Payload only in the dropped bits: plain truncation would give infinity.
  EXPECT_EQ(narrow(0x7f800001), 0x7fc0);
  EXPECT_EQ(narrow(0xff800001), 0xffc0);
  EXPECT_EQ(narrow(0x7fa00000), 0x7fe0); // High payload bits are kept.
  EXPECT_TRUE(std::isnan(bf16ToF32(0x7fc1)));
}

//===----------------------------------------------------------------------===//
// Reader validation
//===----------------------------------------------------------------------===//

TEST(SafetensorsParseTest, FileTooShort) {
  EXPECT_EQ(parseError("12345"), "'t.safetensors': file is 5 bytes, too "
                                 "short for the 8-byte header length");
}

TEST(SafetensorsParseTest, HeaderLengthPastEnd) {
  std::string file = makeFile("{}");
  support::endian::write64le(file.data(), 100);
  EXPECT_EQ(parseError(file), "'t.safetensors': header length 100 runs past "
                              "the end of the file: only 2 bytes follow the "
                              "length");
}

TEST(SafetensorsParseTest, HeaderLengthOverLimit) {
  std::string file = makeFile("{}");
  support::endian::write64le(file.data(), 100'000'001);
  EXPECT_EQ(parseError(file), "'t.safetensors': header length 100000001 "
                              "exceeds the limit of 100000000 bytes");
}

TEST(SafetensorsParseTest, HeaderNotJSON) {
  EXPECT_EQ(parseError(makeFile("{\"a\":")),
            "'t.safetensors': header is not valid JSON: [1:5, byte=5]: "
            "Unexpected EOF");
}

TEST(SafetensorsParseTest, HeaderNotObject) {
  EXPECT_EQ(parseError(makeFile("[1, 2]")),
            "'t.safetensors': header is not a JSON object");
}

TEST(SafetensorsParseTest, HeaderNestsTooDeep) {
  std::string tooDeep = std::string(65, '[') + std::string(65, ']');
  EXPECT_EQ(parseError(makeFile(tooDeep)),
            "'t.safetensors': header JSON nests deeper than 64 levels");
  // Brackets in strings do not count, and 64 levels are parsed.
  std::string deepest =
      std::string(64, '[') + "\"[[\\\"[\"" + std::string(64, ']');
  EXPECT_EQ(parseError(makeFile(deepest)),
            "'t.safetensors': header is not a JSON object");
}

TEST(SafetensorsParseTest, EntryNotObject) {
  EXPECT_EQ(entryError("3"),
            "'t.safetensors': tensor 'a': entry is not a JSON object");
}

TEST(SafetensorsParseTest, MissingFields) {
  EXPECT_EQ(entryError(R"({"shape":[2],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': missing 'dtype'");
  EXPECT_EQ(entryError(R"({"dtype":"F32","data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': missing 'shape'");
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2]})"),
            "'t.safetensors': tensor 'a': missing 'data_offsets'");
}

TEST(SafetensorsParseTest, WrongFieldTypes) {
  EXPECT_EQ(entryError(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': 'dtype' must be a string");
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': 'shape' must be an array of "
            "integers");
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': 'shape' must be an array of "
            "integers");
  std::string badOffsets = "'t.safetensors': tensor 'a': 'data_offsets' must "
                           "be an array of two non-negative integers";
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"),
            badOffsets);
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2],"data_offsets":[0,"8"]})"),
            badOffsets);
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"),
            badOffsets);
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[2],"data_offsets":{}})"),
            badOffsets);
}

TEST(SafetensorsParseTest, UnsupportedDType) {
  EXPECT_EQ(entryError(R"({"dtype":"F16","shape":[4],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': unsupported dtype 'F16' (supported: "
            "F32, BF16, I32)");
  EXPECT_EQ(entryError(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': unsupported dtype 'I64' (supported: "
            "F32, BF16, I32)");
  EXPECT_EQ(
      entryError(R"({"dtype":"float32","shape":[2],"data_offsets":[0,8]})"),
      "'t.safetensors': tensor 'a': unsupported dtype 'float32' (supported: "
      "F32, BF16, I32)");
}

TEST(SafetensorsParseTest, NegativeDimension) {
  EXPECT_EQ(
      entryError(R"({"dtype":"F32","shape":[2,-3],"data_offsets":[0,8]})"),
      "'t.safetensors': tensor 'a': shape dimension 1 is negative (-3)");
}

TEST(SafetensorsParseTest, ShapeProductOverflows) {
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[4294967296,4294967296],)"
                       R"("data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': shape [4294967296, 4294967296] of "
            "F32 overflows a 64-bit byte size");
  // The element count fits, the byte count does not.
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[9223372036854775807],)"
                       R"("data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': shape [9223372036854775807] of F32 "
            "overflows a 64-bit byte size");
}

TEST(SafetensorsParseTest, OffsetsReversed) {
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"),
            "'t.safetensors': tensor 'a': data_offsets begin 8 is past their "
            "end 4");
}

TEST(SafetensorsParseTest, OffsetsPastData) {
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"),
            "'t.safetensors': tensor 'a': data_offsets end 16 is past the end "
            "of the data section (8 bytes)");
}

TEST(SafetensorsParseTest, ByteSizeMismatch) {
  EXPECT_EQ(entryError(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
            "'t.safetensors': tensor 'a': shape [3] of F32 needs 12 bytes, but "
            "data_offsets [0, 8] hold 8");
}

TEST(SafetensorsParseTest, OverlappingTensors) {
  std::string header =
      R"({"b":{"dtype":"I32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(parseError(makeFile(header, "0123456789ab")),
            "'t.safetensors': tensors 'a' (data_offsets [0, 8]) and 'b' "
            "(data_offsets [4, 12]) overlap");
}

TEST(SafetensorsParseTest, UncoveredBytesAndEmptyTensorsAreAllowed) {
  std::string header =
      R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[4,8]},)"
      R"("e":{"dtype":"F32","shape":[0],"data_offsets":[6,6]}})";
  Expected<std::unique_ptr<SafetensorsFile>> file =
      parse(makeFile(header, "0123456789abcdef"));
  ASSERT_TRUE(bool(file)) << toString(file.takeError());
  EXPECT_EQ((*file)->tensors().size(), 2u);
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsParseTest, Metadata) {
  std::string tensor =
      R"("a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]})";
  EXPECT_EQ(
      parseError(makeFile("{" + tensor + R"(,"__metadata__":[]})", "0123")),
      "'t.safetensors': '__metadata__' must be an object of strings");
  EXPECT_EQ(parseError(
                makeFile("{" + tensor + R"(,"__metadata__":{"k":1}})", "0123")),
            "'t.safetensors': '__metadata__' entry 'k' must be a string");
  Expected<std::unique_ptr<SafetensorsFile>> file =
      parse(makeFile("{" + tensor + R"(,"__metadata__":{"k":"v"}})", "0123"));
  ASSERT_TRUE(bool(file)) << toString(file.takeError());
  EXPECT_EQ((*file)->metadata(),
            (std::map<std::string, std::string>{{"k", "v"}}));
}

TEST(SafetensorsParseTest, UnalignedData) {
  // A 1-byte gap puts the floats at odd addresses.
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
      R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[9,11]}})";
  std::vector<uint8_t> a = f32Bytes({0.25f, -3.0f});
  std::vector<uint8_t> b = bf16Bytes({-1.5f});
  std::string data = "?" + toStringRef(a).str() + toStringRef(b).str();
  Expected<std::unique_ptr<SafetensorsFile>> file =
      parse(makeFile(header, data));
  ASSERT_TRUE(bool(file)) << toString(file.takeError());
  Expected<std::vector<float>> aValues = readAsF32(*(*file)->find("a"));
  ASSERT_TRUE(bool(aValues)) << toString(aValues.takeError());
  EXPECT_EQ(*aValues, (std::vector<float>{0.25f, -3.0f}));
  Expected<std::vector<float>> bValues = readAsF32(*(*file)->find("b"));
  ASSERT_TRUE(bool(bValues)) << toString(bValues.takeError());
  EXPECT_EQ(*bValues, std::vector<float>{-1.5f});
}

//===----------------------------------------------------------------------===//
// Typed access
//===----------------------------------------------------------------------===//

class SafetensorsGetTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string header =
        R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
        R"("ids":{"dtype":"I32","shape":[1],"data_offsets":[24,28]}})";
    Expected<std::unique_ptr<SafetensorsFile>> parsed =
        parse(makeFile(header, std::string(28, '\0')));
    ASSERT_TRUE(bool(parsed)) << toString(parsed.takeError());
    file = std::move(*parsed);
  }

  std::string getError(StringRef name, DType dtype,
                       ArrayRef<int64_t> shape) const {
    Expected<const TensorView &> tensor = file->get(name, dtype, shape);
    return tensor ? "<found>" : toString(tensor.takeError());
  }

  std::unique_ptr<SafetensorsFile> file;
};

TEST_F(SafetensorsGetTest, Found) {
  EXPECT_EQ(getError("w", DType::F32, {2, 3}), "<found>");
}

TEST_F(SafetensorsGetTest, NotFound) {
  EXPECT_EQ(getError("v", DType::F32, {2, 3}),
            "'t.safetensors': tensor 'v' not found");
}

TEST_F(SafetensorsGetTest, DTypeMismatch) {
  EXPECT_EQ(getError("w", DType::BF16, {2, 3}),
            "'t.safetensors': tensor 'w' has dtype F32, expected BF16");
}

TEST_F(SafetensorsGetTest, ShapeMismatch) {
  EXPECT_EQ(getError("w", DType::F32, {3, 2}),
            "'t.safetensors': tensor 'w' has shape [2, 3], expected [3, 2]");
  EXPECT_EQ(getError("w", DType::F32, {}),
            "'t.safetensors': tensor 'w' has shape [2, 3], expected []");
}

TEST_F(SafetensorsGetTest, ReadAsWrongType) {
  Expected<std::vector<float>> floats = readAsF32(*file->find("ids"));
  ASSERT_FALSE(bool(floats));
  EXPECT_EQ(toString(floats.takeError()),
            "tensor 'ids' has dtype I32; readAsF32 reads F32 or BF16");
  Expected<std::vector<int32_t>> ints = readAsI32(*file->find("w"));
  ASSERT_FALSE(bool(ints));
  EXPECT_EQ(toString(ints.takeError()),
            "tensor 'w' has dtype F32; readAsI32 reads I32");
}

} // namespace
