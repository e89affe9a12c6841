// Start-up checks of the CPU backend's environment (include/cuvae/backends/cpu/environment_check.h).
#include "cuvae/backends/cpu/environment_check.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdint>

#include "cuvae/error.h"

namespace cuvae {

namespace {

bool blank(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string trimmed(const std::string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end && blank(text[begin])) ++begin;
  while (end > begin && blank(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

// NAME='value', the value escaped.
std::string named(const char* name, const std::string& value) {
  return std::string(name) + "='" + printable_excerpt(value) + "'";
}

// An empty value: libgomp says "Invalid value" and treats it as unset.
EnvFinding empty_value(const char* name) {
  return {false, std::string(name) + " is set but empty: treated as unset"};
}

// Digits with an optional '+', as a value in 1..LONG_MAX.
bool positive_long(const std::string& text) {
  size_t i = 0;
  if (i < text.size() && text[i] == '+') ++i;
  if (i == text.size()) return false;
  unsigned long long value = 0;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    value = value * 10 + static_cast<unsigned>(text[i] - '0');
    if (value > static_cast<unsigned long long>(LONG_MAX)) return false;
  }
  return value > 0;
}

}  // namespace

std::optional<EnvFinding> check_omp_num_threads(const char* value, int threads, int cpus) {
  if (value == nullptr) return std::nullopt;
  const std::string text = value;
  if (trimmed(text).empty()) return empty_value("OMP_NUM_THREADS");
  bool good = true, too_many = false;
  const long most = static_cast<long>(kMaxThreadsPerCpu) * std::max(1, cpus);
  for (size_t start = 0;;) {
    const size_t comma = text.find(',', start);
    const std::string item =
        trimmed(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    good = good && positive_long(item);
    too_many = too_many || (good && (item.size() > 18 || std::stol(item) > most));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (good && too_many) {
    return EnvFinding{true, named("OMP_NUM_THREADS", text) + " asks for more than " +
                                std::to_string(kMaxThreadsPerCpu) + " threads per CPU (this process may run on " +
                                std::to_string(cpus) + "): libgomp fails to start so many, or crashes; give at most " +
                                std::to_string(most) + " (" + std::to_string(cpus) + ": one per CPU)"};
  }
  if (good) return std::nullopt;
  return EnvFinding{true, named("OMP_NUM_THREADS", text) +
                              " is not a thread count (a positive decimal integer, or a comma-separated list of "
                              "them): libgomp ignores it and would run " +
                              std::to_string(threads) + " threads; unset it or give a count, e.g. OMP_NUM_THREADS=" +
                              std::to_string(threads)};
}

std::optional<EnvFinding> check_gomp_spincount(const char* value, int threads) {
  if (value == nullptr) return std::nullopt;
  const std::string text = trimmed(value);
  if (text.empty()) return empty_value("GOMP_SPINCOUNT");
  bool good = strcasecmp(text.c_str(), "infinite") == 0 || strcasecmp(text.c_str(), "infinity") == 0;
  std::string why = "not a spin count (decimal digits with an optional k, M, G or T, or infinite)";
  if (!good) {
    size_t digits = text[0] == '+' ? 1 : 0;
    const size_t first = digits;
    bool fits = true;  // in 64 bits, as strtoull needs
    for (uint64_t count = 0; digits < text.size() && text[digits] >= '0' && text[digits] <= '9'; ++digits) {
      const uint64_t digit = static_cast<uint64_t>(text[digits] - '0');
      fits = fits && count <= (UINT64_MAX - digit) / 10;
      count = count * 10 + digit;
    }
    std::string suffix = trimmed(text.substr(digits));
    good = digits > first && fits &&
           (suffix.empty() || (suffix.size() == 1 && std::string("kKmMgGtT").find(suffix[0]) != std::string::npos));
    if (text[0] == '-') why = "negative (libgomp reads it as a spin of about 2^64 pauses: threads never sleep)";
  }
  if (good) return std::nullopt;
  return EnvFinding{threads > 1, named("GOMP_SPINCOUNT", value) + " is " + why +
                                     (text[0] == '-' ? "" : ": libgomp ignores it") +
                                     (threads > 1 ? "; unset it (cuvae then spins 1000) or give a count, e.g. GOMP_SPINCOUNT=1000"
                                                  : " (no matter with one OpenMP thread)")};
}

std::optional<EnvFinding> check_omp_wait_policy(const char* value, int threads) {
  if (value == nullptr) return std::nullopt;
  const std::string text = trimmed(value);
  if (text.empty()) return empty_value("OMP_WAIT_POLICY");
  if (strcasecmp(text.c_str(), "active") == 0 || strcasecmp(text.c_str(), "passive") == 0) return std::nullopt;
  return EnvFinding{threads > 1, named("OMP_WAIT_POLICY", value) + " is neither active nor passive: libgomp ignores it" +
                                     (threads > 1 ? "; unset it (cuvae then spins 1000) or give active or passive"
                                                  : " (no matter with one OpenMP thread)")};
}

std::optional<EnvFinding> check_openblas_coretype(const char* value, const std::string& loaded_core,
                                                  bool openblas_computes) {
  if (value == nullptr) return std::nullopt;
  const std::string text = value;
  if (text.empty()) return EnvFinding{false, "OPENBLAS_CORETYPE is set but empty: treated as unset"};
  if (strcasecmp(text.c_str(), loaded_core.c_str()) == 0) return std::nullopt;
  return EnvFinding{openblas_computes,
                    named("OPENBLAS_CORETYPE", text) +
                        " is not a core this OpenBLAS knows and can run here: it ignores it and runs " + loaded_core +
                        (openblas_computes ? "; unset it (cuvae then picks from the CPU's features) or name a core it "
                                             "runs, e.g. Haswell or SkylakeX"
                                           : " (no matter: oneDNN runs the GEMMs)")};
}

std::optional<EnvFinding> check_omp_dynamic(const char* value) {
  if (value == nullptr) return std::nullopt;
  const std::string text = trimmed(value);
  if (text.empty()) return empty_value("OMP_DYNAMIC");
  if (strcasecmp(text.c_str(), "true") == 0 || strcasecmp(text.c_str(), "false") == 0) return std::nullopt;
  return EnvFinding{true, named("OMP_DYNAMIC", value) + " is neither true nor false: libgomp ignores it; unset it "
                                                          "or give true or false"};
}

std::optional<EnvFinding> check_omp_proc_bind(const char* value) {
  if (value == nullptr) return std::nullopt;
  const std::string text = trimmed(value);
  if (text.empty()) return empty_value("OMP_PROC_BIND");
  bool good = strcasecmp(text.c_str(), "true") == 0 || strcasecmp(text.c_str(), "false") == 0;
  if (!good) {
    good = true;
    for (size_t start = 0;;) {
      const size_t comma = text.find(',', start);
      const std::string item =
          trimmed(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      bool known = false;
      for (const char* policy : {"master", "primary", "close", "spread"}) {
        known = known || strcasecmp(item.c_str(), policy) == 0;
      }
      good = good && known;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (good) return std::nullopt;
  return EnvFinding{true, named("OMP_PROC_BIND", value) +
                              " is not true, false or a list of master, primary, close and spread: libgomp "
                              "ignores it; unset it or give one of those"};
}

std::optional<EnvFinding> check_libxsmm_target(const char* value, const std::string& loaded_target,
                                               bool libxsmm_computes, const CpuFeatures& cpu) {
  if (value == nullptr) return std::nullopt;
  const std::string text = value;
  if (text.empty()) return std::nullopt;  // libxsmm: unset (and so says the banner)
  const bool phi_target = loaded_target == "knl" || loaded_target == "knm";
  if (libxsmm_target_isa(loaded_target) > best_vector_isa(cpu) || (phi_target && !cpu.xeon_phi)) {
    return EnvFinding{libxsmm_computes,
                      named("LIBXSMM_TARGET", text) + " makes libxsmm JIT for " + loaded_target +
                          ", whose instructions this CPU lacks (" + vector_isa_name(best_vector_isa(cpu)) +
                          (phi_target ? ", no Xeon Phi extensions" : "") + "): its GEMMs would die of SIGILL" +
                          (libxsmm_computes ? "; unset it or name a target this CPU runs"
                                            : " (no matter: libxsmm runs no GEMM here)")};
  }
  bool number = true;
  for (char c : text) number = number && c >= '0' && c <= '9';
  if (number) return std::nullopt;
  for (const char* name : {"generic", "none", "x86", "x64", "sse2", "sse3", "sse", "sse4", "sse4_1", "sse4_2",
                           "sse4.2", "wsm", "nhm", "snb", "avx", "hsw", "avx2", "knl", "mic", "knm", "skx", "skl",
                           "avx3", "avx512", "clx", "cpx", "spr", "amx", "avx512_vl256", "avx512_vl256_clx",
                           "avx512_vl256_cpx"}) {
    if (text == name) return std::nullopt;
  }
  return EnvFinding{libxsmm_computes,
                    named("LIBXSMM_TARGET", text) +
                        " is not a target libxsmm knows (its names are lower case: hsw, skx, cpx, ...): it ignores "
                        "it and JITs for " + loaded_target +
                        (libxsmm_computes ? "; unset it (libxsmm then follows the CPU's features) or name a target"
                                          : " (no matter: libxsmm runs no GEMM here)")};
}

std::optional<EnvFinding> check_plot_timeout(const char* value) {
  if (value == nullptr || *value == '\0') return std::nullopt;
  const std::string text = value;
  bool good = !text.empty() && text.size() <= 4;
  for (char c : text) good = good && c >= '0' && c <= '9';
  if (good && std::stoi(text) >= 1 && std::stoi(text) <= 3600) return std::nullopt;
  return EnvFinding{false, named("CUVAE_PLOT_TIMEOUT", text) +
                               " is not a whole number of seconds from 1 to 3600: charts get the default, 120 s"};
}

}  // namespace cuvae
