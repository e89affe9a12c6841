// Writes the fuzzers' seed corpus, tests/fuzz/corpus/{idx,safetensors}/: a few
// tiny valid files and a few broken ones, each well under 2 KB. The files are
// committed; this program only regenerates them (deterministically):
//   tools/fuzz/fuzz.sh --make-corpus
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cuvae/io/safetensors.h"

namespace {

namespace fs = std::filesystem;
using Bytes = std::string;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "make_corpus: %s\n", what.c_str());
  std::exit(1);
}

void write(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.good()) die("cannot write " + path.string());
}

Bytes read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// gzip, as zlib's gzwrite makes it (mtime 0, so the bytes are reproducible).
void write_gz(const fs::path& path, const Bytes& bytes) {
  gzFile gz = gzopen(path.string().c_str(), "wb9");
  if (gz == nullptr) die("gzopen " + path.string());
  if (gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())) != static_cast<int>(bytes.size()) ||
      gzclose(gz) != Z_OK) {
    die("gzwrite " + path.string());
  }
}

Bytes be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

Bytes le64(uint64_t v) {
  Bytes out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

Bytes idx(const std::vector<uint32_t>& dims, size_t data_bytes) {
  Bytes out{'\0', '\0', '\x08', static_cast<char>(dims.size())};
  for (uint32_t d : dims) out += be32(d);
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<char>((i * 37 + 11) % 256));
  return out;
}

Bytes f32(const std::vector<float>& values) {
  Bytes out(values.size() * sizeof(float), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits = 0;
    static_assert(sizeof bits == sizeof(float));
    std::memcpy(&bits, &values[i], sizeof bits);
    for (int b = 0; b < 4; ++b) out[4 * i + static_cast<size_t>(b)] = static_cast<char>(bits >> (8 * b));
  }
  return out;
}

// A safetensors file from a header as written (no padding added).
Bytes safetensors(const std::string& header, const Bytes& data) {
  return le64(header.size()) + header + data;
}

void make_idx(const fs::path& dir) {
  const Bytes images = idx({2, 3, 3}, 18);
  const Bytes labels = idx({4}, 4);
  write(dir / "images_2x3x3", images);
  write(dir / "labels_4", labels);
  write_gz(dir / "images_2x3x3.gz", images);
  write_gz(dir / "labels_4.gz", labels);

  // Broken: data shorter than the header says, bytes after the data, a wrong
  // type byte, and a gzip stream cut before its CRC trailer.
  write(dir / "bad_truncated_images", images.substr(0, images.size() - 5));
  write(dir / "bad_trailing_labels", labels + "xyz");
  Bytes wrong_type = images;
  wrong_type[2] = '\x0d';
  write(dir / "bad_type_float", wrong_type);
  const Bytes gz = read(dir / "labels_4.gz");
  write(dir / "bad_truncated.gz", gz.substr(0, gz.size() - 4));
}

void make_safetensors(const fs::path& dir) {
  cuvae::SafetensorsFile file;
  file.tensors.push_back({"encoder.0.weight", {2, 3}, {0.5f, -1.0f, 2.0f, 0.0f, -0.0f, 3.25f}});
  file.tensors.push_back({"encoder.0.bias", {3}, {1.0f, 2.0f, 3.0f}});
  file.metadata = {{"format", "pt"}, {"epochs", "3"}};
  cuvae::write_safetensors((dir / "writer_two_tensors.safetensors").string(), file);

  // Hand-written, unpadded header (54 bytes), an empty tensor and a scalar.
  write(dir / "hand_unpadded.safetensors",
        safetensors(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                    f32({1.0f, -2.5f})));
  write(dir / "hand_empty_and_scalar.safetensors",
        safetensors(R"({"__metadata__":{"k":"v"},"e":{"dtype":"F32","shape":[0,5],)"
                    R"("data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                    f32({7.0f})));

  // Broken: header length past the end, JSON cut short, overlapping tensors,
  // an unsupported dtype.
  write(dir / "bad_header_length.safetensors", le64(4096) + "{}");
  write(dir / "bad_json.safetensors",
        safetensors(R"({"x":{"dtype":"F32","shape":[2],"data_off)", f32({1, 2})));
  write(dir / "bad_overlap.safetensors",
        safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    f32({1, 2})));
  write(dir / "bad_dtype.safetensors",
        safetensors(R"({"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", Bytes(4, '\0')));

  // Nested 800 deep: the reader must refuse these without recursing once per
  // level (tools/fuzz/fuzz.sh runs the fuzzer with a 256 KB stack, which 800
  // levels of nlohmann's dump() overflow). The first is the regression seed
  // of the shape-entry stack overflow; the second gives the fuzzer deep
  // nesting to splice elsewhere.
  const std::string deep(800, '[');
  const std::string deep_end(800, ']');
  write(dir / "deep_shape_entry.safetensors",
        safetensors(R"({"x":{"dtype":"F32","shape":[)" + deep + deep_end + R"(],"data_offsets":[0,0]}})",
                    ""));
  std::string deep_object;
  for (int i = 0; i < 250; ++i) deep_object += R"({"k":)";
  deep_object += "1" + std::string(250, '}');
  write(dir / "deep_metadata.safetensors",
        safetensors(R"({"__metadata__":{"k":)" + deep_object + "}}", ""));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) die("usage: make_corpus CORPUS_DIR");
  const fs::path root = argv[1];
  for (const char* sub : {"idx", "safetensors"}) {
    fs::remove_all(root / sub);
    fs::create_directories(root / sub);
  }
  make_idx(root / "idx");
  make_safetensors(root / "safetensors");
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file() && entry.file_size() >= 2048) die(entry.path().string() + " is 2 KB or more");
  }
  return 0;
}
