// Model files: the VAE's parameters as named safetensors tensors, so PyTorch
// and NumPy users can load them, with the architecture in the metadata.
//
// Tensors: "<net>.<i>.weight" [in, out] (y = x @ weight + bias) and
// "<net>.<i>.bias" [out], net = encoder | decoder. Metadata: format
// "cuvae-vae/1", input_dim, hidden ("200,200"), latent_dim, activation
// ("relu" or "tanh"; absent in older files: relu), encoder_output
// ("mean|log_std"), and whatever the writer adds (vae train: seed, epochs,
// objective, samples, init, schedule, commit).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cuvae/model/vae_model.h"

namespace cuvae {

struct ModelFile {
  Architecture arch;
  std::vector<float> params;  // flat, in ParameterLayout order
  std::map<std::string, std::string> metadata;
};

// Atomic (temporary file, then rename): an interrupted write leaves the old
// file whole.
void save_model(const std::string& path, const Architecture& arch,
                const std::vector<float>& params,
                const std::map<std::string, std::string>& extra_metadata);
// What save_model writes to `path`, as bytes.
std::vector<char> model_file_bytes(const std::string& path, const Architecture& arch,
                                   const std::vector<float>& params,
                                   const std::map<std::string, std::string>& extra_metadata);

// Throws cuvae::Error naming the path when the file is not a safetensors
// file, not a cuvae model, or when a tensor is missing or its shape disagrees
// with the architecture in the metadata.
ModelFile load_model(const std::string& path);

}  // namespace cuvae
