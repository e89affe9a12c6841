// CPU features and the OpenBLAS kernel decision (include/cuvae/backends/cpu/cpu_features.h).
#include "cuvae/backends/cpu/cpu_features.h"

#include <strings.h>

#include <cstdint>
#include <initializer_list>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace cuvae {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// XCR0 via XGETBV (inline: the intrinsic needs -mxsave on every caller).
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

bool is_one_of(const std::string& name, std::initializer_list<const char*> names) {
  for (const char* candidate : names) {
    if (strcasecmp(name.c_str(), candidate) == 0) return true;
  }
  return false;
}

}  // namespace

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return f;
  f.sse3 = (ecx & (1u << 0)) != 0;
  f.fma = (ecx & (1u << 12)) != 0;
  f.avx = (ecx & (1u << 28)) != 0;
  const bool osxsave = (ecx & (1u << 27)) != 0;
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
    f.os_saves_ymm = (xcr0 & 0x6) == 0x6;     // XMM and YMM state
    f.os_saves_zmm = (xcr0 & 0xe6) == 0xe6;   // ... and opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0) {
    f.avx2 = (ebx & (1u << 5)) != 0;
    f.avx512f = (ebx & (1u << 16)) != 0;
    f.avx512dq = (ebx & (1u << 17)) != 0;
    f.avx512bw = (ebx & (1u << 30)) != 0;
    f.avx512vl = (ebx & (1u << 31)) != 0;
    f.xeon_phi = (ebx & (1u << 26)) != 0 && (ebx & (1u << 27)) != 0;
  }
#endif
  return f;
}

VectorIsa best_vector_isa(const CpuFeatures& f) {
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma && f.os_saves_zmm) {
    return VectorIsa::kAvx512;
  }
  if (f.avx2 && f.fma && f.avx && f.os_saves_ymm) return VectorIsa::kAvx2;
  if (f.avx && f.os_saves_ymm) return VectorIsa::kAvx;
  return VectorIsa::kSse;
}

const char* vector_isa_name(VectorIsa isa) {
  switch (isa) {
    case VectorIsa::kAvx512: return "AVX-512";
    case VectorIsa::kAvx2: return "AVX2+FMA";
    case VectorIsa::kAvx: return "AVX";
    case VectorIsa::kSse: break;
  }
  return "SSE";
}

VectorIsa openblas_core_isa(const std::string& core) {
  // OpenBLAS 0.3.21's x86-64 core names (driver/others/dynamic.c).
  if (is_one_of(core, {"SkylakeX", "Cooperlake", "SapphireRapids"})) return VectorIsa::kAvx512;
  if (is_one_of(core, {"Haswell", "Zen", "Excavator"})) return VectorIsa::kAvx2;
  if (is_one_of(core, {"Sandybridge", "Bulldozer", "Piledriver", "Steamroller"})) return VectorIsa::kAvx;
  return VectorIsa::kSse;
}

const char* preferred_openblas_core(VectorIsa isa) {
  switch (isa) {
    case VectorIsa::kAvx512: return "SkylakeX";
    case VectorIsa::kAvx2: return "Haswell";
    case VectorIsa::kAvx: return "Sandybridge";
    case VectorIsa::kSse: break;
  }
  return "Prescott";
}

std::string openblas_core_to_request(const CpuFeatures& features, const std::string& loaded_core,
                                     const BlasKernelRequest& request) {
  if (request.user_override || request.policy == "keep") return "";
  const VectorIsa cpu = best_vector_isa(features);
  if (openblas_core_isa(loaded_core) >= cpu) return "";
  return preferred_openblas_core(cpu);
}

std::string openblas_kernel_origin(const std::string& coretype, const std::string& restarted_from,
                                   const std::string& policy) {
  if (!restarted_from.empty()) {
    return "chosen by cuvae from the CPU's features; OpenBLAS had picked " + restarted_from;
  }
  if (!coretype.empty()) return "OPENBLAS_CORETYPE=" + coretype + " set in the environment";
  if (policy == "keep") return "OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep)";
  return "OpenBLAS's own choice";
}

std::string gemm_kernel_summary(const BlasKernelReport& r) {
  return "GEMM kernel " + r.kernel + (r.small_gemm.empty() ? "" : ", small GEMMs " + r.small_gemm) +
         (r.fallback.empty() ? "" : ", where it declines " + r.fallback) +
         ", CPU vector ISA " + vector_isa_name(r.cpu_isa) + (r.below_cpu.empty() ? "" : "; " + r.below_cpu);
}

BlasKernelReport assess_gemm_kernel(const CpuFeatures& features, const std::string& library,
                                    const std::string& kernel, VectorIsa kernel_isa,
                                    const std::string& origin, const std::string& remedy) {
  BlasKernelReport r;
  r.core = kernel;
  r.kernel_isa = kernel_isa;
  r.cpu_isa = best_vector_isa(features);
  r.kernel = library + " " + kernel + " (" + vector_isa_name(r.kernel_isa) + ", " + origin + ")";
  if (r.kernel_isa < r.cpu_isa) {
    r.below_cpu = "the GEMM kernel, " + library + " " + kernel + " (" + vector_isa_name(r.kernel_isa) +
                  "), is below this CPU's " + vector_isa_name(r.cpu_isa) +
                  ": GEMMs run several times slower (" + origin + "; " + remedy + ")";
  }
  r.summary = gemm_kernel_summary(r);
  return r;
}

VectorIsa libxsmm_target_isa(const std::string& target) {
  if (is_one_of(target, {"skx", "clx", "cpx", "spr", "knl", "knm"})) return VectorIsa::kAvx512;
  if (is_one_of(target, {"hsw"})) return VectorIsa::kAvx2;
  if (is_one_of(target, {"snb"})) return VectorIsa::kAvx;
  return VectorIsa::kSse;
}

BlasKernelReport assess_blas_kernel(const CpuFeatures& features, const std::string& core,
                                    const std::string& origin) {
  return assess_gemm_kernel(features, "OpenBLAS", core, openblas_core_isa(core), origin,
                            std::string("without OPENBLAS_CORETYPE and CUVAE_BLAS_KERNEL=keep, cuvae picks ") +
                                preferred_openblas_core(best_vector_isa(features)));
}

}  // namespace cuvae
