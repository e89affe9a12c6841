// libFuzzer target for the IDX reader (src/io/idx.cpp): each input is read both
// as an image file and as a label file, plain or gzipped (the reader detects
// gzip by content, so a gz seed lets the fuzzer explore compressed input).
// A cuvae::Error is the expected way to refuse an input; any other exception,
// a crash, a sanitizer report or a broken invariant of an accepted file is a
// finding. Build and run with tools/fuzz/fuzz.sh.
#include <cstddef>
#include <cstdint>

#include "cuvae/error.h"
#include "cuvae/io/idx.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = cuvae_fuzz::scratch_path("input.idx");
  cuvae_fuzz::write_input(path, data, size);

  try {
    const cuvae::IdxImages images = cuvae::read_idx_images(path);
    CUVAE_FUZZ_CHECK(images.count > 0 && images.rows > 0 && images.cols > 0);
    CUVAE_FUZZ_CHECK(images.pixels.size() ==
                     size_t(images.count) * size_t(images.rows) * size_t(images.cols));
    CUVAE_FUZZ_CHECK(size_t(images.pixels_per_image()) == size_t(images.rows) * size_t(images.cols));
  } catch (const cuvae::Error&) {
  }

  try {
    const std::vector<uint8_t> labels = cuvae::read_idx_labels(path);
    CUVAE_FUZZ_CHECK(!labels.empty());
  } catch (const cuvae::Error&) {
  }
  return 0;
}
