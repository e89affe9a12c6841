#include "cuvae/io/dataset_name.h"

#include <filesystem>

#include "cuvae/error.h"
#include "cuvae/io/checkpoint.h"

namespace cuvae {

namespace {

struct KnownDataset {
  const char* name;
  const char* fingerprint;  // data_fingerprint() of its training images
};

// Computed from the files whose SHA-256 tools/fetch_data.sh checks.
constexpr KnownDataset kKnown[] = {
    {"mnist", "60000 images of 28x28, crc32 f3639b56"},
    {"fashion-mnist", "60000 images of 28x28, crc32 ae65dccd"},
};

}  // namespace

std::string dataset_name_from_fingerprint(const std::string& fingerprint) {
  for (const KnownDataset& known : kKnown) {
    if (fingerprint == known.fingerprint) return known.name;
  }
  return "unknown";
}

std::string recognize_dataset(const IdxImages& train_images) {
  return dataset_name_from_fingerprint(data_fingerprint(train_images));
}

std::string recognize_dataset(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string name = "train-images-idx3-ubyte";
  const fs::path plain = fs::path(dir) / name;
  const fs::path gz = fs::path(dir) / (name + ".gz");
  std::error_code ec;
  if (!fs::exists(plain, ec) && !fs::exists(gz, ec)) {
    throw Error(dir + ": no " + name + " (or " + name + ".gz) to recognize the data set by");
  }
  return recognize_dataset(read_idx_images(fs::exists(plain, ec) ? plain.string() : gz.string()));
}

std::vector<std::string> dataset_class_names(const std::string& name) {
  if (name == "mnist") return {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  if (name == "fashion-mnist") {
    // Zalando's labels 0..9 (github.com/zalandoresearch/fashion-mnist, "Labels").
    return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  }
  return {};
}

}  // namespace cuvae
