#include <gtest/gtest.h>
#include <sys/stat.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cuvae/error.h"
#include "cuvae/io/safetensors.h"

namespace {

namespace fs = std::filesystem;
using cuvae::Error;
using cuvae::SafetensorsFile;
using cuvae::Tensor;

// Each test gets its own directory, so tests can run in parallel (ctest).
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "cuvae_st_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

std::string f32_bytes(const std::vector<float>& values) {
  std::string out;
  for (float v : values) {
    uint32_t bits = 0;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
  }
  return out;
}

// A file as another tool might lay it out: no padding, any key order.
std::string make_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// Expects read_safetensors(path) to throw one line naming the path and
// containing `fragment`.
void expect_read_error(const std::string& path, const std::string& fragment) {
  try {
    cuvae::read_safetensors(path);
    ADD_FAILURE() << "no error reading " << path;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

uint32_t bits_of(float v) {
  uint32_t bits = 0;
  std::memcpy(&bits, &v, 4);
  return bits;
}

SafetensorsFile sample() {
  SafetensorsFile file;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float denormal = std::numeric_limits<float>::denorm_min();
  file.tensors.push_back({"encoder.weight", {2, 3}, {0.5f, -1.25f, -0.0f, inf, nan, denormal}});
  file.tensors.push_back({"step", {}, {1234.0f}});
  file.tensors.push_back({"empty", {0, 7}, {}});
  file.tensors.push_back({"encoder.bias", {3}, {1.0f, 2.0f, 3.0f}});
  file.metadata = {{"format", "pt"}, {"latent_dim", "20"}, {"note", "héllo\nworld"}};
  return file;
}

TEST_F(SafetensorsTest, RoundTripIsBitExact) {
  const SafetensorsFile original = sample();
  write_safetensors(path("m.safetensors"), original);
  const SafetensorsFile loaded = cuvae::read_safetensors(path("m.safetensors"));

  // Written contiguously in the given order, so data-offset order is it.
  ASSERT_EQ(loaded.tensors.size(), original.tensors.size());
  for (size_t i = 0; i < original.tensors.size(); ++i) {
    const Tensor& a = original.tensors[i];
    const Tensor& b = loaded.tensors[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    ASSERT_EQ(a.data.size(), b.data.size()) << a.name;
    for (size_t j = 0; j < a.data.size(); ++j) {
      EXPECT_EQ(bits_of(a.data[j]), bits_of(b.data[j])) << a.name << "[" << j << "]";
    }
  }
  EXPECT_EQ(loaded.metadata, original.metadata);
  ASSERT_NE(loaded.find("step"), nullptr);
  EXPECT_EQ(loaded.find("step")->shape, std::vector<int64_t>{});
  EXPECT_EQ(loaded.find("missing"), nullptr);
}

TEST_F(SafetensorsTest, EmptyFileRoundTrips) {
  write_safetensors(path("e.safetensors"), SafetensorsFile{});
  const SafetensorsFile loaded = cuvae::read_safetensors(path("e.safetensors"));
  EXPECT_TRUE(loaded.tensors.empty());
  EXPECT_TRUE(loaded.metadata.empty());
}

TEST_F(SafetensorsTest, HeaderIsPaddedTo8Bytes) {
  for (size_t extra = 0; extra < 9; ++extra) {
    SafetensorsFile file;
    // Vary the name length so the unpadded header hits every residue mod 8.
    file.tensors.push_back({"t" + std::string(extra, 'x'), {1}, {1.0f}});
    write_safetensors(path("a.safetensors"), file);
    const std::string bytes = read_bytes(path("a.safetensors"));
    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    EXPECT_EQ((8 + n) % 8, 0u);
    EXPECT_EQ(bytes.size(), 8 + n + 4);
    EXPECT_EQ(bytes[8], '{');
  }
}

TEST_F(SafetensorsTest, ReadsHandBuiltFile) {
  // Unpadded, keys out of offset order, metadata first: all legal.
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]},)"
                             R"("a":{"shape":[],"data_offsets":[0,4],"dtype":"F32"}})";
  write_bytes(path("h.safetensors"), make_file(header, f32_bytes({7.0f, 1, 2, 3, 4})));
  const SafetensorsFile file = cuvae::read_safetensors(path("h.safetensors"));
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_EQ(file.tensors[0].name, "a");  // ordered by data offset
  EXPECT_EQ(file.tensors[0].shape, std::vector<int64_t>{});
  EXPECT_EQ(file.tensors[0].data, std::vector<float>{7.0f});
  EXPECT_EQ(file.tensors[1].name, "b");
  EXPECT_EQ(file.tensors[1].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(file.tensors[1].data, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(file.metadata.at("format"), "pt");
}

// --- corrupt files ---------------------------------------------------------

const char* const kOneTensor = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST_F(SafetensorsTest, RejectsEmptyFile) {
  write_bytes(path("f"), "");
  expect_read_error(path("f"), "0 bytes");
}

TEST_F(SafetensorsTest, RejectsFourBytes) {
  write_bytes(path("f"), std::string("\x02\0\0\0", 4));
  expect_read_error(path("f"), "4 bytes");
}

TEST_F(SafetensorsTest, RejectsHeaderLengthLargerThanFile) {
  write_bytes(path("f"), le64(1000) + "{}");
  expect_read_error(path("f"), "header length 1000");
  write_bytes(path("g"), le64(std::numeric_limits<uint64_t>::max()) + "{}");
  expect_read_error(path("g"), "header length");
}

TEST_F(SafetensorsTest, RejectsInvalidJson) {
  write_bytes(path("f"), make_file(R"({"x": {)", ""));
  expect_read_error(path("f"), "not valid JSON");
}

TEST_F(SafetensorsTest, RejectsJsonArrayAtTop) {
  write_bytes(path("f"), make_file("[1, 2]", ""));
  expect_read_error(path("f"), "not a JSON object");
}

TEST_F(SafetensorsTest, RejectsMissingDataOffsets) {
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[2]}})", f32_bytes({1, 2})));
  expect_read_error(path("f"), "data_offsets");
}

TEST_F(SafetensorsTest, RejectsOtherDtypes) {
  write_bytes(path("f"),
              make_file(R"({"weights":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
                        std::string(4, '\0')));
  expect_read_error(path("f"), "F16");
  expect_read_error(path("f"), "\"weights\"");
}

TEST_F(SafetensorsTest, RejectsShapeOffsetMismatch) {
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                   f32_bytes({1, 2})));
  expect_read_error(path("f"), "span 8 bytes");
}

TEST_F(SafetensorsTest, RejectsOffsetsPastEnd) {
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   f32_bytes({1, 2})));
  expect_read_error(path("f"), "past the end");
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  write_bytes(path("f"), make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   f32_bytes({1, 2, 3})));
  expect_read_error(path("f"), "overlap");
}

TEST_F(SafetensorsTest, RejectsGapBetweenTensors) {
  write_bytes(path("f"), make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                   f32_bytes({1, 2, 3})));
  expect_read_error(path("f"), "belong to no tensor");
}

TEST_F(SafetensorsTest, RejectsTrailingBytes) {
  write_bytes(path("f"), make_file(kOneTensor, f32_bytes({1, 2}) + "xyz"));
  expect_read_error(path("f"), "3 trailing bytes");
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  write_safetensors(path("m.safetensors"), sample());
  std::string bytes = read_bytes(path("m.safetensors"));
  bytes.resize(bytes.size() - 3);
  write_bytes(path("m.safetensors"), bytes);
  expect_read_error(path("m.safetensors"), "past the end");
}

TEST_F(SafetensorsTest, RejectsNonStringMetadata) {
  write_bytes(path("f"), make_file(R"({"__metadata__":{"epochs":10},)"
                                   R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                   f32_bytes({1, 2})));
  expect_read_error(path("f"), "\"epochs\" is not a string");
}

TEST_F(SafetensorsTest, RejectsDuplicateNames) {
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                   f32_bytes({1, 2})));
  expect_read_error(path("f"), "more than once");
}

// Inside nested objects too; and one key in sibling objects (each tensor's
// "dtype", objects in an array) is not a duplicate.
TEST_F(SafetensorsTest, RejectsDuplicateKeysAtAnyDepthOnly) {
  write_bytes(path("f"), make_file(R"({"__metadata__":{"a":"1","b":"2","a":"3"},)"
                                   R"("x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                   f32_bytes({1})));
  expect_read_error(path("f"), "\"a\" more than once");
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[1],"dtype":"F32","data_offsets":[0,4]}})",
                                   f32_bytes({1})));
  expect_read_error(path("f"), "\"dtype\" more than once");
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[{"k":1},{"k":2}],"data_offsets":[0,4]}})",
                                   f32_bytes({1})));
  try {
    cuvae::read_safetensors(path("f"));
    ADD_FAILURE() << "a shape of objects accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("more than once"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, RejectsBadShapes) {
  const std::vector<std::string> shapes = {"[-1]", "[2.0]", "[\"2\"]", "2",
                                           "[18446744073709551615]"};
  for (const std::string& shape : shapes) {
    SCOPED_TRACE(shape);
    write_bytes(path("f"),
                make_file(R"({"x":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,8]}})",
                          f32_bytes({1, 2})));
    expect_read_error(path("f"), "shape");
  }
}

TEST_F(SafetensorsTest, RejectsShapeWhoseSizeOverflows) {
  // 2^32 * 2^32 elements wraps to 0 in 64 bits, which would match [0, 0].
  write_bytes(path("f"), make_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                   R"("data_offsets":[0,0]}})",
                                   ""));
  expect_read_error(path("f"), "overflows");
}

TEST_F(SafetensorsTest, AcceptsZeroDimensionNextToHugeOne) {
  write_bytes(
      path("f"),
      make_file(R"({"x":{"dtype":"F32","shape":[9223372036854775807,9223372036854775807,0],)"
                R"("data_offsets":[0,0]}})",
                ""));
  const SafetensorsFile file = cuvae::read_safetensors(path("f"));
  ASSERT_EQ(file.tensors.size(), 1u);
  EXPECT_TRUE(file.tensors[0].data.empty());
}

TEST_F(SafetensorsTest, RejectsBadDataOffsets) {
  const std::vector<std::string> offsets = {"[8,0]", "[0]", "[0,8,8]", "[-8,0]", "[0,8.0]", "{}"};
  for (const std::string& o : offsets) {
    SCOPED_TRACE(o);
    write_bytes(path("f"),
                make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":)" + o + "}}",
                          f32_bytes({1, 2})));
    expect_read_error(path("f"), "data_offsets");
  }
}

TEST_F(SafetensorsTest, RejectsUnknownFieldAndNonObjectEntry) {
  write_bytes(path("f"),
              make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})",
                        f32_bytes({1, 2})));
  expect_read_error(path("f"), "unknown field");
  write_bytes(path("g"), make_file(R"({"x":[1,2]})", ""));
  expect_read_error(path("g"), "not a JSON object");
}

TEST_F(SafetensorsTest, ErrorMessagesStayOnOneLine) {
  // A hostile name with a newline and a long run of bytes.
  const std::string name = "evil\\nname" + std::string(10000, 'z');
  write_bytes(
      path("f"),
      make_file(R"({")" + name + R"(":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", "ab"));
  try {
    cuvae::read_safetensors(path("f"));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos);
    EXPECT_LT(message.size(), 400u) << message;
  }
  // Invalid JSON whose offending token is a huge string with a raw newline.
  write_bytes(path("g"), make_file("{\"" + std::string(100000, 'q') + "\n\":1}", ""));
  try {
    cuvae::read_safetensors(path("g"));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos);
    EXPECT_LT(message.size(), 600u) << message;
  }
}

TEST_F(SafetensorsTest, RejectsDeeplyNestedJsonWithoutCrashing) {
  const size_t depth = 100000;
  write_bytes(path("f"), make_file(std::string(depth, '[') + std::string(depth, ']'), ""));
  expect_read_error(path("f"), "not a JSON object");
  write_bytes(path("g"),
              make_file(R"({"x":)" + std::string(depth, '[') + std::string(depth, ']') + "}", ""));
  expect_read_error(path("g"), "not a JSON object");
}

// Regression (found by review while fuzzing): a deeply nested shape entry was
// dumped into the error message, and dump() recursing 100,000 levels deep
// overflowed the stack (SIGSEGV). Every field that refuses a nested value
// must say so without recursing into it.
TEST_F(SafetensorsTest, RejectsDeeplyNestedFieldValuesWithoutCrashing) {
  const size_t depth = 100000;
  std::string deep_object;
  for (size_t i = 0; i < depth; ++i) deep_object += R"({"a":)";
  deep_object += "0" + std::string(depth, '}');
  const std::vector<std::string> deep_values = {
      std::string(depth, '[') + std::string(depth, ']'), deep_object};
  for (const std::string& deep : deep_values) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"x":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,0]}})",
         "has a shape entry an "},
        {R"({"x":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,0]}})", "shape"},
        {R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[)" + deep + R"(,0]}})",
         "data_offsets"},
        {R"({"x":{"dtype":"F32","shape":[0],"data_offsets":)" + deep + "}}", "data_offsets"},
        {R"({"x":{"dtype":)" + deep + R"(,"shape":[0],"data_offsets":[0,0]}})", "dtype"},
        {R"({"__metadata__":{"k":)" + deep + "}}", "not a string"},
        {R"({"__metadata__":)" + deep + "}", R"("__metadata__")"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE(i);
      write_bytes(path("f"), make_file(cases[i].first, ""));
      expect_read_error(path("f"), cases[i].second);
    }
  }
}

TEST_F(SafetensorsTest, RejectsMissingFileAndDirectory) {
  expect_read_error(path("nope.safetensors"), "No such file");
  expect_read_error(dir_.string(), "is a directory");
}

// A FIFO with no writer: refused at once (a plain open(2) waits forever).
TEST_F(SafetensorsTest, RejectsAFifoWithoutWaitingForAWriter) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  expect_read_error(path("fifo"), "is a FIFO, not a regular file");
}

TEST_F(SafetensorsTest, EveryTruncationIsAnError) {
  write_safetensors(path("m.safetensors"), sample());
  const std::string bytes = read_bytes(path("m.safetensors"));
  for (size_t length = 0; length < bytes.size(); ++length) {
    write_bytes(path("cut"), bytes.substr(0, length));
    EXPECT_THROW(cuvae::read_safetensors(path("cut")), Error) << "length " << length;
  }
}

// --- writing ----------------------------------------------------------------

TEST_F(SafetensorsTest, FailedWriteThrowsAndLeavesNoTemporary) {
  const std::string target = path("no/such/dir/m.safetensors");
  try {
    write_safetensors(target, sample());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(target), std::string::npos) << e.what();
  }
  // The rename step fails when the target is a directory: the temporary
  // was written next to it and must be gone again.
  fs::create_directory(path("occupied"));
  EXPECT_THROW(write_safetensors(path("occupied"), sample()), Error);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir_)) left.push_back(entry.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{"occupied"});
}

TEST_F(SafetensorsTest, WriteValidatesTensors) {
  const auto expect_write_error = [&](const SafetensorsFile& file, const std::string& fragment) {
    try {
      write_safetensors(path("w.safetensors"), file);
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path("w.safetensors")), std::string::npos);
    }
    EXPECT_FALSE(fs::exists(path("w.safetensors")));
  };
  SafetensorsFile file;
  file.tensors.push_back({"x", {2, 2}, {1, 2, 3}});
  expect_write_error(file, "3 values");
  file.tensors = {{"x", {1}, {1}}, {"x", {1}, {2}}};
  expect_write_error(file, "more than once");
  file.tensors = {{"__metadata__", {1}, {1}}};
  expect_write_error(file, "reserved");
  file.tensors = {{"x", {-1}, {}}};
  expect_write_error(file, "invalid shape");
  file.tensors = {{"bad\xff", {1}, {1}}};
  expect_write_error(file, "UTF-8");
}

TEST_F(SafetensorsTest, OverwritesExistingFile) {
  write_safetensors(path("m.safetensors"), sample());
  SafetensorsFile small;
  small.tensors.push_back({"only", {1}, {42.0f}});
  write_safetensors(path("m.safetensors"), small);
  const SafetensorsFile loaded = cuvae::read_safetensors(path("m.safetensors"));
  ASSERT_EQ(loaded.tensors.size(), 1u);
  EXPECT_EQ(loaded.tensors[0].data, std::vector<float>{42.0f});
}

// --- interoperability -------------------------------------------------------

// Loads our file with nothing but json + numpy, the way any outside tool
// reading the published format would.
TEST_F(SafetensorsTest, NumpyCanReadOurFiles) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  }
  SafetensorsFile file;
  file.tensors.push_back({"w", {2, 3}, {0.5f, -1.25f, 3.0f, 4.0f, -0.0f, 1e-3f}});
  file.tensors.push_back({"s", {}, {7.0f}});
  file.metadata = {{"format", "pt"}};
  write_safetensors(path("m.safetensors"), file);

  const char* const script = R"PY(
import json, sys
import numpy as np
raw = open(sys.argv[1], "rb").read()
n = int.from_bytes(raw[:8], "little")
assert (8 + n) % 8 == 0
header = json.loads(raw[8:8 + n].decode("utf-8"))
assert header.pop("__metadata__") == {"format": "pt"}
data = raw[8 + n:]
def load(name):
    info = header[name]
    assert info["dtype"] == "F32"
    begin, end = info["data_offsets"]
    return np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
w = load("w")
assert w.shape == (2, 3)
assert np.array_equal(w, np.array([[0.5, -1.25, 3.0], [4.0, -0.0, 1e-3]], dtype=np.float32))
assert np.signbit(w[1, 1])
s = load("s")
assert s.shape == () and s == 7.0
assert sorted(header) == ["s", "w"]
)PY";
  {
    std::ofstream out(path("check.py"));
    out << script;
  }
  const std::string command =
      "/usr/bin/python3 '" + path("check.py") + "' '" + path("m.safetensors") + "'";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

}  // namespace
