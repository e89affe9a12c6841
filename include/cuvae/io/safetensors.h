// safetensors: named tensors in one file, loadable by PyTorch and NumPy
// (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON header,
// then the raw little-endian tensor data. The header maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
// start of the data section) and may hold "__metadata__": a flat map of
// string to string. We write the header padded with spaces to a multiple of 8
// bytes so that the data is aligned, and tensors in the order given.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cuvae {

// One float32 tensor ("F32" in safetensors).
struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // product(shape) values, row-major
};

struct SafetensorsFile {
  std::vector<Tensor> tensors;                    // in file order of data offsets
  std::map<std::string, std::string> metadata;    // "__metadata__"
  const Tensor* find(const std::string& name) const;  // nullptr if absent
};

// Writes atomically: to "<path>.tmp.<pid>", flushed and fsync'ed, then
// rename()d over path, so a reader never sees half a file. Throws
// cuvae::Error naming the path on any failure (and removes the temporary).
void write_safetensors(const std::string& path, const SafetensorsFile& file);
// The bytes write_safetensors writes (its checks, its errors naming `path`),
// for writing with other files at once (AtomicFileSet).
std::vector<char> safetensors_bytes(const std::string& path, const SafetensorsFile& file);

// Throws cuvae::Error naming the path on: missing file, file shorter than
// its header says, header not valid JSON or not an object, a tensor entry
// without dtype/shape/data_offsets, dtype other than F32, offsets that
// disagree with the shape or run past the end of the file, overlapping or
// gapped tensors, trailing bytes, duplicate names, metadata values that are
// not strings.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace cuvae
