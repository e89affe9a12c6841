// Data sets by name: the fingerprints of MNIST and Fashion-MNIST, on real
// files where they are here (CUVAE_MNIST_DIR, Debian's dataset-fashion-mnist).
#include "cuvae/io/dataset_name.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "cuvae/error.h"
#include "cuvae/io/checkpoint.h"
#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

constexpr const char* kFashionDir = "/usr/share/datasets/fashion-mnist";

std::string mnist_dir() {
  const char* env = std::getenv("CUVAE_MNIST_DIR");
  return env != nullptr && *env != '\0' ? env : std::string(CUVAE_SOURCE_DIR) + "/data/mnist";
}

bool has_train_images(const std::string& dir) {
  return fs::exists(dir + "/train-images-idx3-ubyte") ||
         fs::exists(dir + "/train-images-idx3-ubyte.gz");
}

TEST(DatasetName, KnownFingerprintsAndUnknown) {
  EXPECT_EQ(cuvae::dataset_name_from_fingerprint("60000 images of 28x28, crc32 f3639b56"), "mnist");
  EXPECT_EQ(cuvae::dataset_name_from_fingerprint("60000 images of 28x28, crc32 ae65dccd"),
            "fashion-mnist");
  // The same CRC with another count or shape is another data set.
  EXPECT_EQ(cuvae::dataset_name_from_fingerprint("59999 images of 28x28, crc32 f3639b56"), "unknown");
  EXPECT_EQ(cuvae::dataset_name_from_fingerprint(""), "unknown");
}

TEST(DatasetName, GeneratedImagesAreUnknown) {
  TempDir dir;
  write_dataset(dir.path());
  EXPECT_EQ(cuvae::recognize_dataset(dir.path().string()), "unknown");
  cuvae::IdxImages images;
  images.count = 1;
  images.rows = 28;
  images.cols = 28;
  images.pixels.assign(784, 0);
  EXPECT_EQ(cuvae::recognize_dataset(images), "unknown");
}

TEST(DatasetName, MissingTrainingImagesNameTheDirectory) {
  TempDir dir;
  try {
    cuvae::recognize_dataset(dir.path().string());
    FAIL() << "no error for a directory without training images";
  } catch (const cuvae::Error& e) {
    EXPECT_TRUE(contains(e.what(), dir.path().string())) << e.what();
    EXPECT_TRUE(contains(e.what(), "train-images-idx3-ubyte")) << e.what();
  }
}

TEST(DatasetName, RealMnist) {
  const std::string dir = mnist_dir();
  if (!has_train_images(dir)) GTEST_SKIP() << "MNIST not in " << dir << " (set CUVAE_MNIST_DIR)";
  EXPECT_EQ(cuvae::recognize_dataset(dir), "mnist");
}

TEST(DatasetName, RealFashionMnistFromDebiansGzippedFiles) {
  if (!has_train_images(kFashionDir)) {
    GTEST_SKIP() << "Fashion-MNIST not in " << kFashionDir
                 << " (apt-get install dataset-fashion-mnist)";
  }
  EXPECT_EQ(cuvae::recognize_dataset(std::string(kFashionDir)), "fashion-mnist");
}

TEST(DatasetName, ClassNames) {
  EXPECT_EQ(cuvae::dataset_class_names("mnist").size(), 10u);
  const std::vector<std::string> fashion = cuvae::dataset_class_names("fashion-mnist");
  ASSERT_EQ(fashion.size(), 10u);
  EXPECT_EQ(fashion[0], "T-shirt/top");
  EXPECT_EQ(fashion[9], "Ankle boot");
  EXPECT_TRUE(cuvae::dataset_class_names("unknown").empty());
}

}  // namespace
