// Model files: round trip, and files that are not what they claim rejected
// with the path named.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>

#include "cuvae/error.h"
#include "cuvae/io/model_file.h"
#include "cuvae/io/safetensors.h"
#include "cuvae/model/philox.h"

namespace cuvae {
namespace {

class ModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/cuvae-model-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    arch_.input_dim = 16;
    arch_.hidden = {6, 5};
    arch_.latent_dim = 3;
    params_.resize(ParameterLayout(arch_).size());
    for (size_t i = 0; i < params_.size(); ++i) params_[i] = random_normal(RandomKey{1, RandomStream::kInit, 0}, i);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void expect_rejected(const std::string& path, const std::string& needle) {
    try {
      load_model(path);
      ADD_FAILURE() << "accepted " << path;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find(needle), std::string::npos) << message;
    }
  }

  std::string dir_;
  Architecture arch_;
  std::vector<float> params_;
};

TEST_F(ModelFileTest, RoundTripIsBitExactAndKeepsTheArchitecture) {
  const std::string path = dir_ + "/m.safetensors";
  save_model(path, arch_, params_, {{"seed", "1"}});
  const ModelFile loaded = load_model(path);
  EXPECT_EQ(loaded.arch, arch_);
  EXPECT_EQ(loaded.params, params_);
  EXPECT_EQ(loaded.metadata.at("seed"), "1");
  EXPECT_EQ(loaded.metadata.at("format"), "cuvae-vae/1");
  // Named tensors with the documented shapes.
  const SafetensorsFile raw = read_safetensors(path);
  ASSERT_NE(raw.find("encoder.0.weight"), nullptr);
  EXPECT_EQ(raw.find("encoder.0.weight")->shape, (std::vector<int64_t>{16, 6}));
  EXPECT_EQ(raw.find("decoder.2.bias")->shape, (std::vector<int64_t>{16}));
  EXPECT_EQ(raw.tensors.size(), 12u);
}

TEST_F(ModelFileTest, ShapesThatDisagreeWithTheMetadataAreRejected) {
  const std::string path = dir_ + "/m.safetensors";
  save_model(path, arch_, params_, {});
  SafetensorsFile file = read_safetensors(path);
  file.metadata["latent_dim"] = "4";
  write_safetensors(path, file);
  expect_rejected(path, "shape");
}

TEST_F(ModelFileTest, MissingTensorExtraTensorAndWrongFormatAreRejected) {
  const std::string path = dir_ + "/m.safetensors";
  save_model(path, arch_, params_, {});
  SafetensorsFile file = read_safetensors(path);
  SafetensorsFile missing = file;
  missing.tensors.pop_back();
  write_safetensors(path, missing);
  expect_rejected(path, "missing");

  SafetensorsFile extra = file;
  extra.tensors.push_back({"extra", {1}, {0.0f}});
  write_safetensors(path, extra);
  expect_rejected(path, "tensors");

  SafetensorsFile foreign = file;
  foreign.metadata.erase("format");
  write_safetensors(path, foreign);
  expect_rejected(path, "not a cuvae model");

  SafetensorsFile bad_hidden = file;
  bad_hidden.metadata["hidden"] = "6,x";
  write_safetensors(path, bad_hidden);
  expect_rejected(path, "hidden");
}

TEST_F(ModelFileTest, NonFiniteParametersAreRejected) {
  const std::string path = dir_ + "/m.safetensors";
  save_model(path, arch_, params_, {});
  const SafetensorsFile file = read_safetensors(path);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SafetensorsFile edited = file;
    edited.tensors[3].data[1] = bad;
    write_safetensors(path, edited);
    expect_rejected(path, "'" + edited.tensors[3].name + "' has a non-finite value");
  }
}

// A small file claiming layers of 65536 x 65536 (51 GB of parameters) and
// holding no tensors: refused for the missing tensor, before any of that is
// allocated (which would fail or exhaust the machine).
TEST_F(ModelFileTest, AHugeClaimedArchitectureWithoutItsTensorsFailsBeforeAllocating) {
  const std::string path = dir_ + "/m.safetensors";
  SafetensorsFile file;
  file.metadata = {{"format", "cuvae-vae/1"}, {"input_dim", "784"}, {"hidden", "65536,65536,65536,65536"},
                   {"latent_dim", "50"}};
  write_safetensors(path, file);
  expect_rejected(path, "tensor 'encoder.0.weight' is missing");
}

TEST_F(ModelFileTest, SavingTheWrongParameterCountThrows) {
  params_.pop_back();
  EXPECT_THROW(save_model(dir_ + "/m.safetensors", arch_, params_, {}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/m.safetensors"));
}

}  // namespace
}  // namespace cuvae
