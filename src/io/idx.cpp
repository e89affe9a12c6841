#include "cuvae/io/idx.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "cuvae/error.h"
#include "cuvae/io/input_file.h"

namespace cuvae {

namespace {

// Largest data section we accept. Keeping it below 2^31 also keeps every
// count, row and column, and their products, within `int`.
constexpr uint64_t kMaxDataBytes = (uint64_t{1} << 31) - 1;
// Largest image side we accept: far beyond any real data set, small enough to
// reject a garbage header before its product overflows anything.
constexpr uint32_t kMaxImageSide = 4096;
// Bytes per gzread() call. The buffer grows only as data actually arrives,
// so a lying header cannot make us allocate memory the file does not back.
constexpr size_t kChunkBytes = size_t{1} << 20;

// An IDX file opened for reading, plain or gzip (detected by the magic bytes
// 1f 8b, not by name). We inflate ourselves rather than use gzread(), which
// silently skips garbage after the gzip stream.
class GzReader {
 public:
  explicit GzReader(const std::string& path)
      : path_(path), in_(kInputBytes), fd_(open_regular_file(path)) {
    try {
      while (in_len_ < 2 && !eof_) fill(in_len_);
      if (in_len_ >= 2 && in_[0] == 0x1f && in_[1] == 0x8b) {
        const int ret = inflateInit2(&strm_, 15 + 16);  // gzip wrapper only
        if (ret != Z_OK) {
          throw Error(path_ + ": cannot read: " + (ret == Z_MEM_ERROR ? "out of memory" : "zlib failed"));
        }
        gzip_ = true;
        strm_.next_in = in_.data();
        strm_.avail_in = static_cast<uInt>(in_len_);
      }
    } catch (...) {
      ::close(fd_);
      throw;
    }
  }
  ~GzReader() {
    if (gzip_) inflateEnd(&strm_);
    ::close(fd_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to `n` bytes into `buf`, stopping early only at end of input.
  // Returns the number of bytes read; throws on an I/O or decompression
  // error, or on bytes after the end of the gzip stream.
  size_t read(void* buf, size_t n) {
    return gzip_ ? inflate_into(static_cast<unsigned char*>(buf), n)
                 : copy_into(static_cast<unsigned char*>(buf), n);
  }

  // True once the input ended in the middle of the gzip stream (a short
  // read, not an error, so the caller's message can say why).
  bool stream_truncated() const { return truncated_; }

 private:
  static constexpr size_t kInputBytes = 256 * 1024;

  // Reads more of the file into in_ from `at`; sets eof_ at end of file.
  void fill(size_t at) {
    for (;;) {
      const ssize_t r = ::read(fd_, in_.data() + at, in_.size() - at);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw Error(path_ + ": read error: " + std::strerror(errno));
      if (r == 0) eof_ = true;
      in_len_ = at + static_cast<size_t>(r);
      in_pos_ = 0;
      return;
    }
  }

  size_t copy_into(unsigned char* out, size_t n) {
    size_t got = 0;
    while (got < n) {
      if (in_pos_ == in_len_) {
        if (eof_) break;
        fill(0);
        continue;
      }
      const size_t take = std::min(n - got, in_len_ - in_pos_);
      std::memcpy(out + got, in_.data() + in_pos_, take);
      in_pos_ += take;
      got += take;
    }
    return got;
  }

  size_t inflate_into(unsigned char* out, size_t n) {
    size_t got = 0;
    while (got < n && !stream_end_) {
      if (strm_.avail_in == 0 && !eof_) {
        fill(0);
        strm_.next_in = in_.data();
        strm_.avail_in = static_cast<uInt>(in_len_);
      }
      const size_t want = std::min(n - got, kChunkBytes);
      strm_.next_out = out + got;
      strm_.avail_out = static_cast<uInt>(want);
      const int ret = inflate(&strm_, Z_NO_FLUSH);
      got += want - strm_.avail_out;
      if (ret == Z_STREAM_END) {
        stream_end_ = !next_member();
      } else if (ret == Z_BUF_ERROR && strm_.avail_in == 0 && eof_) {
        truncated_ = true;
        break;
      } else if (ret == Z_MEM_ERROR) {
        throw Error(path_ + ": cannot read: out of memory");
      } else if (ret != Z_OK) {
        throw Error(path_ + ": corrupt gzip stream: " +
                    (strm_.msg != nullptr ? strm_.msg : "unknown error"));
      }
    }
    return got;
  }

  // After a member's trailer: a gzip file may hold several members, read one
  // after another (RFC 1952; gunzip and gzread do). True when another member
  // follows (the stream is reset for it); false at the end of the file;
  // throws on anything else after the last member.
  bool next_member() {
    while (strm_.avail_in < 2 && !eof_) {  // keep the unread byte, if any
      std::memmove(in_.data(), strm_.next_in, strm_.avail_in);
      fill(strm_.avail_in);
      strm_.next_in = in_.data();
      strm_.avail_in = static_cast<uInt>(in_len_);
    }
    if (strm_.avail_in == 0) return false;
    if (strm_.avail_in >= 2 && strm_.next_in[0] == 0x1f && strm_.next_in[1] == 0x8b) {
      if (inflateReset(&strm_) != Z_OK) throw Error(path_ + ": cannot read: zlib failed");
      return true;
    }
    require_nothing_after_stream();
    return false;
  }

  // Bytes after the last member's trailer that are not another member.
  void require_nothing_after_stream() {
    uint64_t extra = strm_.avail_in;
    while (!eof_) {
      fill(0);
      extra += in_len_;
    }
    if (extra > 0) {
      throw Error(path_ + ": trailing data after the gzip stream: " + std::to_string(extra) +
                  " bytes follow its end");
    }
  }

  std::string path_;
  std::vector<unsigned char> in_;
  int fd_;
  size_t in_pos_ = 0, in_len_ = 0;
  bool eof_ = false;
  bool gzip_ = false;
  bool stream_end_ = false;
  bool truncated_ = false;
  z_stream strm_{};
};

// Reads and checks an IDX header: magic, type byte 0x08 (unsigned byte) and
// the expected number of dimensions. Returns the dimensions.
std::array<uint32_t, 3> read_header(GzReader& in, const std::string& path, int expected_dims,
                                    const char* what) {
  unsigned char magic[4];
  const size_t got = in.read(magic, sizeof magic);
  if (got < sizeof magic) {
    std::string message = path + ": not an IDX file: only " + std::to_string(got) +
                          " bytes, too short for the 4-byte header";
    if (in.stream_truncated()) message += " (the gzip stream ends early)";
    throw Error(message);
  }
  if (magic[0] != 0 || magic[1] != 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf,
                  ": not an IDX file: bad magic: first bytes 0x%02x 0x%02x, expected 0x00 0x00",
                  magic[0], magic[1]);
    throw Error(path + buf);
  }
  if (magic[2] != 0x08) {
    char buf[128];
    std::snprintf(buf, sizeof buf,
                  ": unsupported IDX element type 0x%02x, expected 0x08 (unsigned byte)",
                  magic[2]);
    throw Error(path + buf);
  }
  if (magic[3] != expected_dims) {
    throw Error(path + ": IDX file has " + std::to_string(magic[3]) + " dimension(s), expected " +
                std::to_string(expected_dims) + " for " + what);
  }

  std::array<uint32_t, 3> dims{};
  for (int d = 0; d < expected_dims; ++d) {
    unsigned char be[4];
    const size_t n = in.read(be, sizeof be);
    if (n < sizeof be) {
      std::string message = path + ": truncated IDX header: it ends inside dimension " +
                            std::to_string(d + 1) + " of " + std::to_string(expected_dims);
      if (in.stream_truncated()) message += " (the gzip stream ends early)";
      throw Error(message);
    }
    // IDX stores each dimension as a big-endian uint32.
    dims[static_cast<size_t>(d)] = (uint32_t{be[0]} << 24) | (uint32_t{be[1]} << 16) |
                                   (uint32_t{be[2]} << 8) | uint32_t{be[3]};
  }
  return dims;
}

// Reads exactly `expected` bytes of data and checks that nothing follows.
// `described` says what the header promised, for the error messages, e.g.
// "60000 images of 28x28 (47040000 bytes)".
std::vector<uint8_t> read_data(GzReader& in, const std::string& path, uint64_t expected,
                               const std::string& described) {
  const auto size = static_cast<size_t>(expected);
  std::vector<uint8_t> data;
  data.reserve(std::min(size, kChunkBytes));
  size_t got = 0;
  while (got < size) {
    const size_t want = std::min(size - got, kChunkBytes);
    data.resize(got + want);
    const size_t n = in.read(data.data() + got, want);
    got += n;
    if (n < want) break;
  }
  data.resize(got);
  if (got < size) {
    std::string message = path + ": truncated: header says " + described +
                          " but the file has " + std::to_string(got) + " bytes of data";
    if (in.stream_truncated()) message += " (the gzip stream ends early)";
    throw Error(message);
  }

  // Anything after the data means the header and the file disagree; count
  // it (reading it in chunks) so the message can say by how much.
  uint64_t extra = 0;
  std::vector<unsigned char> scratch(64 * 1024);
  for (;;) {
    const size_t n = in.read(scratch.data(), scratch.size());
    extra += n;
    if (n < scratch.size()) break;
  }
  if (extra > 0) {
    throw Error(path + ": trailing data: header says " + described + " but the file has " +
                std::to_string(expected + extra) + " bytes of data (" + std::to_string(extra) +
                " extra)");
  }
  // All data is there, but the gzip stream stops before its trailer (the
  // CRC and length), so its integrity cannot be checked.
  if (in.stream_truncated()) {
    throw Error(path + ": truncated gzip stream: the data is complete but the stream ends "
                       "before its CRC trailer");
  }
  return data;
}

}  // namespace

IdxImages read_idx_images(const std::string& path) {
  GzReader in(path);
  const std::array<uint32_t, 3> dims = read_header(in, path, 3, "images");
  const uint32_t count = dims[0];
  const uint32_t rows = dims[1];
  const uint32_t cols = dims[2];
  const std::string shape = std::to_string(count) + " images of " + std::to_string(rows) + "x" +
                            std::to_string(cols);
  if (count == 0 || rows == 0 || cols == 0) {
    throw Error(path + ": zero dimension: header says " + shape);
  }
  if (rows > kMaxImageSide || cols > kMaxImageSide) {
    throw Error(path + ": absurd image size: header says " + shape + " (rows and cols must be at most " +
                std::to_string(kMaxImageSide) + ")");
  }
  // rows * cols <= 2^24, so this product cannot overflow 64 bits.
  const uint64_t total = uint64_t{count} * rows * cols;
  if (total > kMaxDataBytes) {
    throw Error(path + ": absurd size: header says " + shape + " (" + std::to_string(total) +
                " bytes, over the limit of " + std::to_string(kMaxDataBytes) + ")");
  }

  IdxImages images;
  images.pixels = read_data(in, path, total, shape + " (" + std::to_string(total) + " bytes)");
  // Each value is <= total <= INT_MAX, checked above.
  images.count = static_cast<int>(count);
  images.rows = static_cast<int>(rows);
  images.cols = static_cast<int>(cols);
  return images;
}

std::vector<uint8_t> read_idx_labels(const std::string& path) {
  GzReader in(path);
  const uint32_t count = read_header(in, path, 1, "labels")[0];
  if (count == 0) {
    throw Error(path + ": zero dimension: header says 0 labels");
  }
  if (count > kMaxDataBytes) {
    throw Error(path + ": absurd size: header says " + std::to_string(count) +
                " labels (over the limit of " + std::to_string(kMaxDataBytes) + ")");
  }
  return read_data(in, path, count,
                   std::to_string(count) + " labels (" + std::to_string(count) + " bytes)");
}

std::string find_mnist_file_if_present(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path plain = fs::path(dir) / name;
  const fs::path gz = fs::path(dir) / (name + ".gz");
  std::error_code ec;
  if (fs::exists(plain, ec)) return plain.string();
  if (fs::exists(gz, ec)) return gz.string();
  return "";
}

namespace {

// DIR/NAME if it exists, else DIR/NAME.gz if that exists, else an error that
// says how to get the files.
std::string find_mnist_file(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  const std::string found = find_mnist_file_if_present(dir, name);
  if (!found.empty()) return found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(dir + ": MNIST directory not found (looked for " + name +
                "); run tools/fetch_mnist.sh " + dir + " to download MNIST");
  }
  throw Error(dir + ": MNIST file " + name + " (or " + name +
              ".gz) not found; run tools/fetch_mnist.sh " + dir + " to download MNIST");
}

}  // namespace

MnistSplit load_mnist_split(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images_path = find_mnist_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_mnist_file(dir, prefix + "-labels-idx1-ubyte");

  MnistSplit split;
  split.images = read_idx_images(images_path);
  split.labels = read_idx_labels(labels_path);
  if (static_cast<size_t>(split.images.count) != split.labels.size()) {
    throw Error(images_path + " has " + std::to_string(split.images.count) + " images but " +
                labels_path + " has " + std::to_string(split.labels.size()) +
                " labels; the counts must agree");
  }
  return split;
}

}  // namespace cuvae
