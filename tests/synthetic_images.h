// Random 28 x 28 "images" for tests that train: enough structure (a bright
// row every 7) for training to do something, the same for every call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuvae/io/idx.h"
#include "cuvae/model/philox.h"

namespace cuvae::testing {

inline IdxImages synthetic_images(int count) {
  IdxImages images;
  images.count = count;
  images.rows = 28;
  images.cols = 28;
  images.pixels.resize(static_cast<size_t>(count) * 784);
  for (size_t i = 0; i < images.pixels.size(); ++i) {
    const float u = random_uniform(RandomKey{99, RandomStream::kInit, 0}, i);
    images.pixels[i] = static_cast<uint8_t>(((i % 784) / 28 % 7 == 0) ? 255 : u * 60);
  }
  return images;
}

}  // namespace cuvae::testing
