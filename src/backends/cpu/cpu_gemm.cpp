// The CPU backend's SGEMM (include/cuvae/backends/cpu/cpu_gemm.h).
#include "cuvae/backends/cpu/cpu_gemm.h"

#include <cblas.h>

#include <cstdlib>
#include <string>

#include "cuvae/backends/cpu/blas_kernel.h"
#include "cuvae/backends/cpu/cpu_gemm_small.h"
#include "cuvae/error.h"

#if CUVAE_HAVE_DNNL
#include <dnnl.h>
#endif

namespace cuvae {

namespace {

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// CUVAE_CPU_GEMM as read once: "onednn", "openblas", or anything else
// (unset, "auto"; check_cpu_gemm_choice refuses the rest at start-up).
enum class GemmChoice { kAuto, kOpenBlas, kOneDnn };
GemmChoice gemm_choice() {
  static const GemmChoice choice = [] {
    const std::string v = env_or_empty("CUVAE_CPU_GEMM");
    return v == "onednn" ? GemmChoice::kOneDnn : v == "openblas" ? GemmChoice::kOpenBlas : GemmChoice::kAuto;
  }();
  return choice;
}

bool use_onednn() {
  // Opt-in: with oneDNN 2.6.3 (Debian 12) running the GEMMs, `vae train`
  // at batch 100 on the 2-core Xeon of 2026-12-01 (family 6 model 167, AMX)
  // corrupted the heap (glibc: "corrupted size vs. prev_size" at exit, 3 of
  // 3 runs; OpenBLAS: 0 of 3), and it lost at batch 20 (docs/performance.md).
#if CUVAE_HAVE_DNNL
  return gemm_choice() == GemmChoice::kOneDnn;
#else
  return false;
#endif
}

// libxsmm runs every GEMM it takes (alpha 1, beta 0 or 1: all of the
// model's) unless the user named one library. Why, measured on the Zen 5 of
// 2026-12-04 (docs/results/2026-12-04-cpu/): its JIT follows the CPU's
// features whatever kernel OpenBLAS was given (the machine's environment
// forces OpenBLAS to Haswell's AVX2 kernels there, 1.4-1.8x slower than libxsmm on
// a batch-200 step's GEMMs), it was as fast as or faster than OpenBLAS's own
// AVX-512 pick on the model's shapes (batch 20, 200, and eval's 5000), and its
// shape-fixed blocks make the bits independent of the thread count, which
// lets the thread count follow the load (openmp_wait.h).
bool use_blocked_gemm() {
  static const bool chosen = gemm_choice() == GemmChoice::kAuto && !small_sgemm_library().empty();
  return chosen;
}

std::string env_value_or(const char* name, const std::string& otherwise) {
  const std::string value = env_or_empty(name);
  return value.empty() ? otherwise : std::string(name) + "=" + value + " set in the environment";
}

#if CUVAE_HAVE_LIBXSMM
// "1.17", "cpx", from "libxsmm 1.17 (JIT for cpx)".
BlasKernelReport libxsmm_kernel() {
  const std::string library = small_sgemm_library();
  const size_t open = library.find(" (JIT for "), close = library.rfind(')');
  const std::string target = library.substr(open + 10, close - open - 10);
  return assess_gemm_kernel(detect_cpu_features(), library.substr(0, open), "JIT for " + target,
                            libxsmm_target_isa(target), env_value_or("LIBXSMM_TARGET", "libxsmm's own choice from the CPU's features"),
                            "unset LIBXSMM_TARGET");
}
#endif

#if CUVAE_HAVE_DNNL
// oneDNN's effective ISA: its name and level.
std::string onednn_isa_name(dnnl_cpu_isa_t isa, VectorIsa* level) {
  switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: *level = VectorIsa::kAvx512; return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: *level = VectorIsa::kAvx512; return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: *level = VectorIsa::kAvx512; return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: *level = VectorIsa::kAvx512; return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni: *level = VectorIsa::kAvx2; return "avx2_vnni";
    case dnnl_cpu_isa_avx2: *level = VectorIsa::kAvx2; return "avx2";
    case dnnl_cpu_isa_avx: *level = VectorIsa::kAvx; return "avx";
    default: *level = VectorIsa::kSse; return "sse41";
  }
}

BlasKernelReport onednn_kernel() {
  VectorIsa level = VectorIsa::kSse;
  const std::string isa = onednn_isa_name(dnnl_get_effective_cpu_isa(), &level);
  const dnnl_version_t* v = dnnl_version();
  std::string origin = "oneDNN's own choice from the CPU's features";
  for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    if (!env_or_empty(name).empty()) origin = std::string(name) + "=" + env_or_empty(name) + " set in the environment";
  }
  return assess_gemm_kernel(detect_cpu_features(),
                            "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                                std::to_string(v->patch),
                            isa, level, origin, "unset ONEDNN_MAX_CPU_ISA");
}
#endif

}  // namespace

void check_cpu_gemm_choice() {
  const std::string choice = env_or_empty("CUVAE_CPU_GEMM");
#if CUVAE_HAVE_DNNL
  if (choice.empty() || choice == "auto" || choice == "onednn" || choice == "openblas") return;
  throw Error("CUVAE_CPU_GEMM must be auto, onednn or openblas, got '" + choice + "'");
#else
  if (choice.empty() || choice == "auto" || choice == "openblas") return;
  throw Error("CUVAE_CPU_GEMM must be auto or openblas (this build has no oneDNN), got '" + choice + "'");
#endif
}

void cpu_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
               int lda, const float* b, int ldb, float beta, float* c, int ldc) {
#if CUVAE_HAVE_DNNL
  if (use_onednn()) {
    const dnnl_status_t status = dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k,
                                            alpha, a, lda, b, ldb, beta, c, ldc);
    if (status != dnnl_success) {
      throw Error("oneDNN's sgemm failed (status " + std::to_string(static_cast<int>(status)) + ") on " +
                  std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k));
    }
    return;
  }
#endif
  if (use_blocked_gemm() &&
      blocked_sgemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) {
    return;
  }
  blas_sgemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a, int lda,
                const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
              transpose_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool cpu_gemm_is_onednn() { return use_onednn(); }

BlasKernelReport cpu_gemm_kernel() {
#if CUVAE_HAVE_DNNL
  if (use_onednn()) return onednn_kernel();
#endif
#if CUVAE_HAVE_LIBXSMM
  if (use_blocked_gemm()) {
    BlasKernelReport report = libxsmm_kernel();
    report.fallback = current_blas_kernel().kernel;
    report.summary = gemm_kernel_summary(report);
    return report;
  }
#endif
  return current_blas_kernel();
}

bool cpu_gemm_is_blocked() { return use_blocked_gemm(); }

std::string cpu_gemm_shapes() {
  if (use_onednn()) return "oneDNN runs every GEMM (CUVAE_CPU_GEMM=onednn)";
  if (!use_blocked_gemm()) {
    return small_sgemm_library().empty() ? "OpenBLAS runs every GEMM (this build has no libxsmm)"
                                         : "OpenBLAS runs every GEMM (CUVAE_CPU_GEMM=openblas)";
  }
  return small_sgemm_library() +
         " runs every GEMM of the model (all have alpha 1 and beta 0), in blocks of about 64 x 64 of C fixed by the shape: "
         "its JIT follows the CPU's features whatever kernel OpenBLAS has, and the bits do not depend on the "
         "thread count; " + current_blas_kernel().kernel +
         " only for GEMMs that libxsmm declines (alpha not 1 or beta not 0 or 1); "
         "CUVAE_CPU_GEMM=openblas: OpenBLAS for all";
}

}  // namespace cuvae
