// libFuzzer target for the safetensors reader (src/io/safetensors.cpp). A
// cuvae::Error is the expected way to refuse an input; any other exception, a
// crash, a sanitizer report, or an accepted file that breaks an invariant is a
// finding. Accepted files must also round-trip: what our writer makes of them
// must read back identical (names, order, shapes, bits, metadata).
// Build and run with tools/fuzz/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "cuvae/error.h"
#include "cuvae/io/safetensors.h"
#include "fuzz_common.h"

namespace {

void check_invariants(const cuvae::SafetensorsFile& file) {
  std::set<std::string> names;
  for (const cuvae::Tensor& tensor : file.tensors) {
    CUVAE_FUZZ_CHECK(names.insert(tensor.name).second);
    CUVAE_FUZZ_CHECK(tensor.name != "__metadata__");
    uint64_t count = 1;
    for (int64_t dim : tensor.shape) {
      CUVAE_FUZZ_CHECK(dim >= 0);
      count *= static_cast<uint64_t>(dim);  // data.size() bounds it; wrap is caught below
    }
    bool has_zero = false;
    for (int64_t dim : tensor.shape) has_zero = has_zero || dim == 0;
    CUVAE_FUZZ_CHECK(has_zero ? tensor.data.empty() : count == tensor.data.size());
    CUVAE_FUZZ_CHECK(file.find(tensor.name) == &tensor);
  }
}

bool same(const cuvae::SafetensorsFile& a, const cuvae::SafetensorsFile& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const cuvae::Tensor& x = a.tensors[i];
    const cuvae::Tensor& y = b.tensors[i];
    if (x.name != y.name || x.shape != y.shape || x.data.size() != y.data.size()) return false;
    // Bits, not values: NaN payloads and -0.0 must survive too.
    if (!x.data.empty() &&
        std::memcmp(x.data.data(), y.data.data(), x.data.size() * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = cuvae_fuzz::scratch_path("input.safetensors");
  static const std::string copy = cuvae_fuzz::scratch_path("copy.safetensors");
  cuvae_fuzz::write_input(path, data, size);

  cuvae::SafetensorsFile file;
  try {
    file = cuvae::read_safetensors(path);
  } catch (const cuvae::Error&) {
    return 0;
  }
  check_invariants(file);

  // The writer must accept whatever the reader accepted, and the result must
  // read back the same.
  cuvae::SafetensorsFile again;
  try {
    cuvae::write_safetensors(copy, file);
    again = cuvae::read_safetensors(copy);
  } catch (const cuvae::Error& e) {
    std::fprintf(stderr, "fuzz: round trip of an accepted file failed: %s\n", e.what());
    std::abort();
  }
  CUVAE_FUZZ_CHECK(same(file, again));
  return 0;
}
