#include "cuvae/io/model_file.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/safetensors.h"

namespace cuvae {

namespace {

constexpr const char* kFormat = "cuvae-vae/1";

int parse_positive(const std::string& path, const std::map<std::string, std::string>& metadata,
                   const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) throw Error(path + ": metadata has no '" + key + "'");
  const std::vector<int> values = parse_widths(it->second, path + ": metadata '" + key + "'");
  if (values.size() != 1) throw Error(path + ": metadata '" + key + "' must be one integer");
  return values[0];
}

}  // namespace

void save_model(const std::string& path, const Architecture& arch,
                const std::vector<float>& params,
                const std::map<std::string, std::string>& extra_metadata) {
  const std::vector<char> bytes = model_file_bytes(path, arch, params, extra_metadata);
  write_file_atomically(path, bytes.data(), bytes.size());
}

std::vector<char> model_file_bytes(const std::string& path, const Architecture& arch,
                                   const std::vector<float>& params,
                                   const std::map<std::string, std::string>& extra_metadata) {
  const ParameterLayout layout(arch);
  if (params.size() != layout.size()) {
    throw Error("cannot write " + path + ": " + std::to_string(params.size()) +
                " parameters for an architecture of " + std::to_string(layout.size()));
  }
  SafetensorsFile file;
  file.metadata = extra_metadata;
  file.metadata["format"] = kFormat;
  file.metadata["input_dim"] = std::to_string(arch.input_dim);
  // One stochastic layer: "200,200" and "50", as before there were more.
  file.metadata["hidden"] = arch.hidden_text();
  file.metadata["latent_dim"] = arch.latent_dims_text();
  file.metadata["activation"] = activation_name(arch.activation);
  file.metadata["encoder_output"] = "mean|log_std";
  file.metadata["layer"] = "y = x @ weight + bias, weight [in, out]";
  for (const DenseLayer& layer : layout.all_layers()) {
    const float* w = params.data() + layer.weight_offset;
    const float* b = params.data() + layer.bias_offset;
    file.tensors.push_back({layer.name + ".weight", {layer.in, layer.out},
                            std::vector<float>(w, w + static_cast<size_t>(layer.in) * layer.out)});
    file.tensors.push_back({layer.name + ".bias", {layer.out}, std::vector<float>(b, b + layer.out)});
  }
  return safetensors_bytes(path, file);
}

ModelFile load_model(const std::string& path) {
  const SafetensorsFile file = read_safetensors(path);
  const auto format = file.metadata.find("format");
  if (format != file.metadata.end() && format->second == "cuvae-checkpoint/1") {
    const std::string beside = (std::filesystem::path(path).parent_path() / "model.safetensors").string();
    throw Error(path + " is a training checkpoint, not a model file: pass the run's model, " + beside +
                " (a checkpoint continues a run: vae train --resume)");
  }
  if (format == file.metadata.end() || format->second != kFormat) {
    throw Error(path + ": not a cuvae model (metadata 'format' is not '" + kFormat + "')");
  }
  ModelFile model;
  model.metadata = file.metadata;
  model.arch.input_dim = parse_positive(path, file.metadata, "input_dim");
  const auto latent = file.metadata.find("latent_dim");
  if (latent == file.metadata.end()) throw Error(path + ": metadata has no 'latent_dim'");
  const auto hidden = file.metadata.find("hidden");
  if (hidden == file.metadata.end()) throw Error(path + ": metadata has no 'hidden'");
  model.arch.set_layers_from_fields(latent->second, hidden->second, path + ": metadata");
  // Models of builds before tanh have ReLU hidden layers and no 'activation'.
  const auto activation = file.metadata.find("activation");
  model.arch.activation = activation == file.metadata.end()
                              ? Activation::kRelu
                              : parse_activation(activation->second, path + ": metadata 'activation'");
  try {
    model.arch.validate();
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  const ParameterLayout layout(model.arch);
  // Every tensor is found and its shape checked before the parameters are
  // allocated, so a small file that claims a huge architecture fails at once;
  // names are looked up in a map, since a file may have many layers.
  std::unordered_map<std::string, const Tensor*> by_name;
  for (const Tensor& tensor : file.tensors) by_name.emplace(tensor.name, &tensor);
  struct Part {
    const Tensor* tensor;
    size_t offset;
  };
  std::vector<Part> parts;
  for (const DenseLayer& layer : layout.all_layers()) {
    const struct {
      std::string name;
      std::vector<int64_t> shape;
      size_t offset;
    } expected[2] = {{layer.name + ".weight", {layer.in, layer.out}, layer.weight_offset},
                     {layer.name + ".bias", {layer.out}, layer.bias_offset}};
    for (const auto& part : expected) {
      const auto found = by_name.find(part.name);
      if (found == by_name.end()) throw Error(path + ": tensor '" + part.name + "' is missing");
      const Tensor* tensor = found->second;
      if (tensor->shape != part.shape) {
        std::string got, want;
        for (int64_t d : tensor->shape) got += (got.empty() ? "" : ",") + std::to_string(d);
        for (int64_t d : part.shape) want += (want.empty() ? "" : ",") + std::to_string(d);
        throw Error(path + ": tensor '" + part.name + "' has shape [" + got +
                    "] but the architecture " + model.arch.describe() + " needs [" + want + "]");
      }
      for (size_t i = 0; i < tensor->data.size(); ++i) {
        if (!std::isfinite(tensor->data[i])) {
          throw Error(path + ": tensor '" + part.name + "' has a non-finite value (" +
                      std::to_string(tensor->data[i]) + ") at index " + std::to_string(i));
        }
      }
      parts.push_back({tensor, part.offset});
    }
  }
  if (file.tensors.size() != parts.size()) {
    throw Error(path + ": has " + std::to_string(file.tensors.size()) +
                " tensors but the architecture " + model.arch.describe() + " has " +
                std::to_string(parts.size()));
  }
  model.params.assign(layout.size(), 0.0f);
  for (const Part& part : parts) {
    std::memcpy(model.params.data() + part.offset, part.tensor->data.data(),
                part.tensor->data.size() * sizeof(float));
  }
  return model;
}

}  // namespace cuvae
