// IDX files: the raw format of MNIST (http://yann.lecun.com/exdb/mnist/).
//
// Header: two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the
// number of dimensions, then one big-endian uint32 per dimension, then the data.
// Images are 3-d (count, rows, cols), labels 1-d (count). Files may be plain
// or gzip-compressed (read through zlib, detected by content, not by name).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cuvae {

struct IdxImages {
  int count = 0;
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols, row-major, 0..255
  int pixels_per_image() const { return rows * cols; }
};

// Each throws cuvae::Error naming the path on: missing or unreadable file,
// anything but a regular file (refused without blocking on a FIFO), bad gzip
// stream or bytes after its end, wrong magic (type or dimension count), zero
// or absurd dimensions, a size that disagrees with the header (truncated or
// trailing bytes).
IdxImages read_idx_images(const std::string& path);
std::vector<uint8_t> read_idx_labels(const std::string& path);

// A labelled data set: images and labels whose counts must agree.
struct MnistSplit {
  IdxImages images;
  std::vector<uint8_t> labels;
};

// DIR/NAME if it exists, else DIR/NAME.gz if that exists, else "".
std::string find_mnist_file_if_present(const std::string& dir, const std::string& name);

// Reads DIR/{train,t10k}-images-idx3-ubyte and -labels-idx1-ubyte, each
// either plain or with a ".gz" suffix (plain preferred when both exist).
// Throws cuvae::Error if a file is missing or if image and label counts
// disagree.
MnistSplit load_mnist_split(const std::string& dir, bool train);

}  // namespace cuvae
