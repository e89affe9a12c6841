// Tests of the IDX reader (src/io/idx.cpp): small good and bad files, plain and
// gzipped, written to a temporary directory; then the real MNIST when present.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "cuvae/error.h"
#include "cuvae/io/idx.h"

#ifndef CUVAE_SOURCE_DIR
#define CUVAE_SOURCE_DIR "."  // The CMake build defines it as the repo root.
#endif

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

void append_be32(Bytes& out, uint32_t v) {
  out.push_back(static_cast<uint8_t>(v >> 24));
  out.push_back(static_cast<uint8_t>(v >> 16));
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

// An IDX header with the given type byte and dimensions.
Bytes idx_header(uint8_t type, const std::vector<uint32_t>& dims) {
  Bytes out = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) append_be32(out, d);
  return out;
}

// A deterministic, not-all-equal pixel or label value.
uint8_t pattern(size_t i, int modulus) { return static_cast<uint8_t>((i * 37 + 11) % modulus); }

Bytes pixel_data(size_t n) {
  Bytes out(n);
  for (size_t i = 0; i < n; ++i) out[i] = pattern(i, 256);
  return out;
}

Bytes label_data(size_t n) {
  Bytes out(n);
  for (size_t i = 0; i < n; ++i) out[i] = pattern(i, 10);
  return out;
}

Bytes image_file(uint32_t count, uint32_t rows, uint32_t cols) {
  Bytes out = idx_header(0x08, {count, rows, cols});
  const Bytes data = pixel_data(size_t{count} * rows * cols);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes label_file(uint32_t count) {
  Bytes out = idx_header(0x08, {count});
  const Bytes data = label_data(count);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Passes when `f` throws a cuvae::Error whose message is one line containing
// every one of `needles`.
::testing::AssertionResult throws_error_with(const std::function<void()>& f,
                                             const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const cuvae::Error& e) {
    const std::string message = e.what();
    if (message.find('\n') != std::string::npos) {
      return ::testing::AssertionFailure() << "message is not one line: " << message;
    }
    for (const std::string& needle : needles) {
      if (message.find(needle) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message \"" << message << "\" does not contain \"" << needle << "\"";
      }
    }
    return ::testing::AssertionSuccess() << message;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw something other than cuvae::Error: "
                                         << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// Gives each test a fresh directory and helpers to write files into it.
class IdxFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "cuvae_idx_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr) << "mkdtemp " << templ;
    dir_ = templ;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string write_plain(const std::string& name, const Bytes& bytes) const {
    const std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << "writing " << p;
    return p;
  }

  std::string write_gz(const std::string& name, const Bytes& bytes) const {
    const std::string p = path(name);
    gzFile gz = gzopen(p.c_str(), "wb");
    EXPECT_NE(gz, nullptr) << "gzopen " << p;
    if (gz == nullptr) return p;
    if (!bytes.empty()) {
      EXPECT_EQ(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())),
                static_cast<int>(bytes.size()));
    }
    EXPECT_EQ(gzclose(gz), Z_OK);
    return p;
  }

  static std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // Drops the last `n` bytes of a file.
  static void chop(const std::string& p, uintmax_t n) {
    fs::resize_file(p, fs::file_size(p) - n);
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------
// Good files

using IdxRead = IdxFileTest;

TEST_F(IdxRead, PlainImages) {
  const std::string p = write_plain("img", image_file(3, 4, 5));
  const cuvae::IdxImages images = cuvae::read_idx_images(p);
  EXPECT_EQ(images.count, 3);
  EXPECT_EQ(images.rows, 4);
  EXPECT_EQ(images.cols, 5);
  EXPECT_EQ(images.pixels_per_image(), 20);
  EXPECT_EQ(images.pixels, pixel_data(60));
}

TEST_F(IdxRead, GzImages) {
  const std::string p = write_gz("img.gz", image_file(7, 3, 2));
  const cuvae::IdxImages images = cuvae::read_idx_images(p);
  EXPECT_EQ(images.count, 7);
  EXPECT_EQ(images.rows, 3);
  EXPECT_EQ(images.cols, 2);
  EXPECT_EQ(images.pixels, pixel_data(42));
}

TEST_F(IdxRead, GzContentWithoutGzSuffix) {
  // Compression is detected by content, not by name.
  const std::string p = write_gz("img", image_file(2, 2, 2));
  EXPECT_EQ(cuvae::read_idx_images(p).pixels, pixel_data(8));
}

TEST_F(IdxRead, LargerThanOneChunk) {
  // 1.2 MiB of data: more than one read chunk, plain and gzipped.
  const Bytes file = image_file(1600, 28, 28);
  for (const std::string& p : {write_plain("big", file), write_gz("big.gz", file)}) {
    const cuvae::IdxImages images = cuvae::read_idx_images(p);
    EXPECT_EQ(images.count, 1600) << p;
    EXPECT_EQ(images.pixels, pixel_data(1600 * 28 * 28)) << p;
  }
}

TEST_F(IdxRead, PlainAndGzLabels) {
  EXPECT_EQ(cuvae::read_idx_labels(write_plain("lab", label_file(11))), label_data(11));
  EXPECT_EQ(cuvae::read_idx_labels(write_gz("lab.gz", label_file(13))), label_data(13));
}

// ---------------------------------------------------------------------------
// Bad files

TEST_F(IdxRead, MissingFile) {
  const std::string p = path("nope");
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "No such file"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(p); }, {p, "No such file"}));
}

TEST_F(IdxRead, Directory) {
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(dir_); }, {dir_, "directory"}));
}

TEST_F(IdxRead, EmptyFile) {
  const std::string p = write_plain("empty", {});
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "too short"}));
}

TEST_F(IdxRead, WrongMagic) {
  Bytes file = image_file(2, 2, 2);
  file[1] = 0x01;
  const std::string p = write_plain("img", file);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "magic"}));
  const std::string text = write_plain("text", Bytes{'h', 'e', 'l', 'l', 'o', '\n'});
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(text); }, {text, "magic"}));
}

TEST_F(IdxRead, WrongTypeByte) {
  Bytes file = image_file(2, 2, 2);
  file[2] = 0x0D;  // float
  const std::string p = write_plain("img", file);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "0x0d", "0x08"}));
}

TEST_F(IdxRead, WrongDimensionCount) {
  const std::string labels = write_plain("lab", label_file(4));
  const std::string images = write_plain("img", image_file(4, 2, 2));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(labels); },
                                {labels, "1 dimension", "expected 3"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(images); },
                                {images, "3 dimension", "expected 1"}));
}

TEST_F(IdxRead, ZeroDimension) {
  const std::string count0 = write_plain("c0", idx_header(0x08, {0, 28, 28}));
  const std::string rows0 = write_plain("r0", idx_header(0x08, {5, 0, 28}));
  const std::string labels0 = write_plain("l0", idx_header(0x08, {0}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(count0); }, {count0, "zero"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(rows0); }, {rows0, "zero"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(labels0); }, {labels0, "zero"}));
}

TEST_F(IdxRead, AbsurdSizes) {
  const std::string wide = write_plain("wide", idx_header(0x08, {1, 28, 5000}));
  const std::string many = write_plain("many", idx_header(0x08, {4000000, 1000, 1000}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(wide); }, {wide, "absurd"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(many); }, {many, "absurd"}));
}

TEST_F(IdxRead, HugeHeaderOnSmallFileDoesNotAllocateIt) {
  // Just under the 2 GiB limit: legal, so the reader must find out that the
  // data is missing without first allocating what the header claims.
  Bytes file = idx_header(0x08, {2700000, 28, 28});
  file.resize(file.size() + 1000, 0);
  const std::string p = write_plain("huge", file);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); },
                                {p, "truncated", "2116800000 bytes", "1000 bytes of data"}));
}

TEST_F(IdxRead, TruncatedHeader) {
  Bytes file = image_file(2, 2, 2);
  file.resize(9);
  const std::string p = write_plain("img", file);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "truncated"}));
}

TEST_F(IdxRead, TruncatedPlain) {
  const std::string images = write_plain("img", image_file(3, 4, 5));
  chop(images, 5);
  EXPECT_TRUE(throws_error_with(
      [&] { cuvae::read_idx_images(images); },
      {images, "truncated", "3 images of 4x5 (60 bytes)", "55 bytes of data"}));
  const std::string labels = write_plain("lab", label_file(10));
  chop(labels, 1);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(labels); },
                                {labels, "truncated", "10 labels", "9 bytes of data"}));
}

TEST_F(IdxRead, TruncatedGzInsideData) {
  // Data that compresses poorly, so cutting the stream in half loses data.
  Bytes file = idx_header(0x08, {50, 20, 20});
  uint32_t x = 12345;
  for (int i = 0; i < 50 * 20 * 20; ++i) {
    x = x * 1103515245u + 12345u;
    file.push_back(static_cast<uint8_t>(x >> 24));
  }
  const std::string p = write_gz("img.gz", file);
  chop(p, fs::file_size(p) / 2);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "truncated", "gzip"}));
}

TEST_F(IdxRead, TruncatedGzTrailer) {
  // All data decompresses, but the CRC-32 and length trailer is gone.
  const std::string p = write_gz("lab.gz", label_file(100));
  chop(p, 8);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(p); }, {p, "truncated", "gzip"}));
}

TEST_F(IdxRead, CorruptGzChecksum) {
  const std::string p = write_gz("lab.gz", label_file(100));
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(p) - 8));  // first byte of the CRC
    f.put('\xAB');
  }
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(p); }, {p, "gzip"}));
}

TEST_F(IdxRead, TrailingBytes) {
  Bytes file = image_file(3, 4, 5);
  file.insert(file.end(), {1, 2, 3});
  const std::string plain = write_plain("img", file);
  const std::string gz = write_gz("img.gz", file);
  for (const std::string& p : {plain, gz}) {
    EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); },
                                  {p, "trailing", "60 bytes", "63 bytes of data"}));
  }
  Bytes labels = label_file(4);
  labels.push_back(0);
  const std::string lp = write_plain("lab", labels);
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(lp); }, {lp, "trailing"}));
}

// zlib's gzread() skips garbage after a gzip stream; the reader must not.
TEST_F(IdxRead, GarbageAfterGzStream) {
  const Bytes file = image_file(3, 4, 5);
  const std::string p = write_gz("img.gz", file);
  {
    std::ofstream out(p, std::ios::binary | std::ios::app);
    out << "garbage!";
  }
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); },
                                {p, "trailing data after the gzip stream", "8 bytes"}));
  // The same with more garbage than one input buffer holds.
  const std::string big = write_gz("big.gz", file);
  {
    std::ofstream out(big, std::ios::binary | std::ios::app);
    out << std::string(600 * 1024, 'x');
  }
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(big); },
                                {big, "trailing data after the gzip stream", "614400 bytes"}));
}

// A gzip file of several members reads as their concatenation (RFC 1952, as
// gunzip reads it): one file split over two members, and an empty member
// after it; garbage after the last member is still refused.
TEST_F(IdxRead, SeveralGzMembersReadAsOne) {
  const Bytes file = label_file(40);
  const std::string first = read_bytes(write_gz("a.gz", Bytes(file.begin(), file.begin() + 13)));
  const std::string second = read_bytes(write_gz("b.gz", Bytes(file.begin() + 13, file.end())));
  const std::string empty = read_bytes(write_gz("c.gz", Bytes()));
  const std::string p = path("lab.gz");
  {
    std::ofstream out(p, std::ios::binary);
    out << first << second << empty;
  }
  EXPECT_EQ(cuvae::read_idx_labels(p), label_data(40));
  {
    std::ofstream out(p, std::ios::binary | std::ios::app);
    out << "\x1f";  // one byte: not a member
  }
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(p); }, {p, "trailing data after the gzip stream", "1 bytes"}));
}

// open(2) on a FIFO blocks until a writer comes: the reader must refuse it
// without opening it that way. If it does block, a writer opens the FIFO after
// 3 s so that the test fails instead of hanging.
TEST_F(IdxRead, FifoIsRefusedWithoutBlocking) {
  const std::string p = path("fifo");
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0) << std::strerror(errno);
  std::atomic<bool> done{false};
  std::thread unblocker([&] {
    for (int i = 0; !done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (i < 60) continue;
      const int fd = ::open(p.c_str(), O_WRONLY | O_NONBLOCK);  // fails but when a reader waits
      if (fd >= 0) ::close(fd);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images(p); }, {p, "FIFO", "not a regular file"}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_labels(p); }, {p, "FIFO", "not a regular file"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  done = true;
  unblocker.join();
}

TEST_F(IdxRead, DeviceIsRefused) {
  EXPECT_TRUE(throws_error_with([&] { cuvae::read_idx_images("/dev/null"); },
                                {"/dev/null", "character device", "not a regular file"}));
}

// ---------------------------------------------------------------------------
// load_mnist_split

using IdxLoadSplit = IdxFileTest;

TEST_F(IdxLoadSplit, TrainPlainTestGz) {
  write_plain("train-images-idx3-ubyte", image_file(6, 3, 3));
  write_plain("train-labels-idx1-ubyte", label_file(6));
  write_gz("t10k-images-idx3-ubyte.gz", image_file(4, 3, 3));
  write_gz("t10k-labels-idx1-ubyte.gz", label_file(4));

  const cuvae::MnistSplit train = cuvae::load_mnist_split(dir_, true);
  EXPECT_EQ(train.images.count, 6);
  EXPECT_EQ(train.images.pixels, pixel_data(54));
  EXPECT_EQ(train.labels, label_data(6));

  const cuvae::MnistSplit test = cuvae::load_mnist_split(dir_, false);
  EXPECT_EQ(test.images.count, 4);
  EXPECT_EQ(test.images.rows, 3);
  EXPECT_EQ(test.labels, label_data(4));
}

TEST_F(IdxLoadSplit, PrefersPlainOverGz) {
  write_plain("t10k-images-idx3-ubyte", image_file(2, 2, 2));
  write_gz("t10k-images-idx3-ubyte.gz", image_file(3, 2, 2));
  write_gz("t10k-labels-idx1-ubyte.gz", label_file(2));
  EXPECT_EQ(cuvae::load_mnist_split(dir_, false).images.count, 2);
}

TEST_F(IdxLoadSplit, MissingFiles) {
  EXPECT_TRUE(throws_error_with([&] { cuvae::load_mnist_split(dir_, true); },
                                {dir_, "train-images-idx3-ubyte", "tools/fetch_mnist.sh"}));
  write_plain("t10k-images-idx3-ubyte", image_file(2, 2, 2));
  EXPECT_TRUE(throws_error_with([&] { cuvae::load_mnist_split(dir_, false); },
                                {dir_, "t10k-labels-idx1-ubyte", "tools/fetch_mnist.sh"}));
  const std::string missing = path("no_such_dir");
  EXPECT_TRUE(throws_error_with([&] { cuvae::load_mnist_split(missing, true); },
                                {missing, "not found", "tools/fetch_mnist.sh " + missing}));
}

TEST_F(IdxLoadSplit, CountMismatch) {
  const std::string images = write_plain("train-images-idx3-ubyte", image_file(5, 2, 2));
  const std::string labels = write_gz("train-labels-idx1-ubyte.gz", label_file(4));
  EXPECT_TRUE(throws_error_with([&] { cuvae::load_mnist_split(dir_, true); },
                                {images, labels, "5 images", "4 labels"}));
}

TEST_F(IdxLoadSplit, BadFileErrorNamesThatFile) {
  write_plain("train-images-idx3-ubyte", image_file(5, 2, 2));
  const std::string labels = write_plain("train-labels-idx1-ubyte", idx_header(0x08, {5}));
  EXPECT_TRUE(throws_error_with([&] { cuvae::load_mnist_split(dir_, true); },
                                {labels, "truncated"}));
}

// ---------------------------------------------------------------------------
// The real MNIST, when it has been fetched.

std::string mnist_dir() {
  const char* env = std::getenv("CUVAE_MNIST_DIR");
  return (env != nullptr && *env != '\0') ? std::string(env) : std::string(CUVAE_SOURCE_DIR "/data/mnist");
}

bool has_mnist_file(const std::string& dir, const std::string& name) {
  std::error_code ec;
  return fs::exists(fs::path(dir) / name, ec) || fs::exists(fs::path(dir) / (name + ".gz"), ec);
}

TEST(IdxRealMnist, BothSplits) {
  const std::string dir = mnist_dir();
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    if (!has_mnist_file(dir, name)) {
      GTEST_SKIP() << "MNIST not found in " << dir << " (no " << name
                   << "); run tools/fetch_mnist.sh " << dir << " or set CUVAE_MNIST_DIR";
    }
  }
  struct Expected {
    bool train;
    int count;
    std::vector<uint8_t> first_labels;  // well known: a check of offsets and order
  };
  for (const Expected& want : {Expected{true, 60000, {5, 0, 4, 1, 9}},
                               Expected{false, 10000, {7, 2, 1, 0, 4}}}) {
    SCOPED_TRACE(want.train ? "train" : "t10k");
    const cuvae::MnistSplit split = cuvae::load_mnist_split(dir, want.train);
    EXPECT_EQ(split.images.count, want.count);
    EXPECT_EQ(split.images.rows, 28);
    EXPECT_EQ(split.images.cols, 28);
    ASSERT_EQ(split.images.pixels.size(), size_t(want.count) * 28 * 28);
    ASSERT_EQ(split.labels.size(), size_t(want.count));
    EXPECT_TRUE(std::equal(want.first_labels.begin(), want.first_labels.end(),
                           split.labels.begin()));
    EXPECT_LE(*std::max_element(split.labels.begin(), split.labels.end()), 9);
    EXPECT_EQ(*std::max_element(split.images.pixels.begin(), split.images.pixels.end()), 255);
    EXPECT_EQ(*std::min_element(split.images.pixels.begin(), split.images.pixels.end()), 0);
  }
}

}  // namespace
