// The CPU's vector ISA (cpuid + XGETBV) and the GEMM kernel OpenBLAS runs:
// which kernel to ask OpenBLAS for when its own detection falls back, and a
// warning when the kernel in use is below what the CPU supports.
//
// Why: Debian 12's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its kernels by CPU
// model, and on a model it does not know (e.g. Intel family 6 model 207)
// falls back to Prescott's SSE3 kernels: 4-7x slower GEMMs on an AVX-512 CPU
// (issue 14). OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded, so
// the choice is made by re-executing the binary with it set (blas_kernel.h).
//
// Everything here but detect_cpu_features() is a pure function, so tests can
// fake any CPU and any OpenBLAS choice.
#pragma once

#include <string>

namespace cuvae {

struct CpuFeatures {
  bool sse3 = false, avx = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool os_saves_ymm = false;  // XCR0: the OS saves the AVX registers
  bool os_saves_zmm = false;  // XCR0: ... and the AVX-512 ones
  bool xeon_phi = false;      // AVX512ER and AVX512PF (Knights Landing; libxsmm's knl, knm targets)
};

// This CPU's, from cpuid and XGETBV (all false off x86-64).
CpuFeatures detect_cpu_features();

// Vector ISA levels, in order; what GEMM kernels are written for.
enum class VectorIsa { kSse = 0, kAvx = 1, kAvx2 = 2, kAvx512 = 3 };

// The best level the CPU and the OS both support: AVX-512 needs F, BW, DQ
// and VL; AVX2 needs FMA too.
VectorIsa best_vector_isa(const CpuFeatures& features);
// "SSE", "AVX", "AVX2+FMA", "AVX-512".
const char* vector_isa_name(VectorIsa isa);

// The level an OpenBLAS core's kernels use, from the name
// openblas_get_corename() returns ("Prescott", "Haswell", "SkylakeX", ...;
// case-insensitive); unknown names count as SSE.
VectorIsa openblas_core_isa(const std::string& core_name);

// The OpenBLAS core whose kernels we run on a CPU at `isa`: chosen by
// measurement on the model's GEMM shapes (docs/results/2026-12-01-cpu/).
const char* preferred_openblas_core(VectorIsa isa);

// What to do at start-up, before OpenBLAS computes anything.
struct BlasKernelRequest {
  bool user_override = false;  // OPENBLAS_CORETYPE was set in the environment
  std::string policy = "auto";  // CUVAE_BLAS_KERNEL: auto or keep
};
// The OPENBLAS_CORETYPE to restart with, or "" to keep OpenBLAS's choice:
// "" when the environment set OPENBLAS_CORETYPE or CUVAE_BLAS_KERNEL=keep,
// or when the loaded core's level is already the CPU's best.
std::string openblas_core_to_request(const CpuFeatures& features, const std::string& loaded_core,
                                     const BlasKernelRequest& request);

// How OpenBLAS's core came to be the one in use, from the values the process
// found at start-up (passed in, so that tests need not change a process's
// environment): `coretype` OPENBLAS_CORETYPE as inherited (before any restart
// of cuvae's), `restarted_from` the core OpenBLAS had picked when cuvae's
// restart replaced it ("" if it did not), `policy` CUVAE_BLAS_KERNEL.
// "OPENBLAS_CORETYPE=Haswell set in the environment", "OpenBLAS's own
// choice", "chosen by cuvae from the CPU's features; OpenBLAS had picked
// Prescott", "OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep)".
std::string openblas_kernel_origin(const std::string& coretype, const std::string& restarted_from,
                                   const std::string& policy);

// What the banner and `vae info` say about the GEMM kernel.
struct BlasKernelReport {
  std::string core;        // the kernel in use (OpenBLAS's core name, oneDNN's ISA)
  VectorIsa kernel_isa = VectorIsa::kSse;
  VectorIsa cpu_isa = VectorIsa::kSse;
  std::string kernel;      // "OpenBLAS SkylakeX (AVX-512, OpenBLAS's own choice)"
  std::string small_gemm;  // "libxsmm 1.17.0 (JIT for spr)" when it runs the small shapes, else ""
  std::string fallback;    // the library for the GEMMs `kernel` declines, when `kernel` runs all others, else ""
  std::string summary;     // "GEMM kernel " + kernel + [", small GEMMs " + small_gemm] + [", where it declines " + fallback] + ", CPU vector ISA AVX-512" [+ "; " + below_cpu]
  std::string below_cpu;   // "" unless the kernel is below the CPU's level: what that costs, why, and the remedy
};
// The banner's words for a report: its `summary` from its other fields.
std::string gemm_kernel_summary(const BlasKernelReport& report);
// Any GEMM library's kernel: `library` "OpenBLAS" or "oneDNN", `kernel` its
// name ("SkylakeX", "avx512_core"), `origin` how it was chosen (e.g.
// "OPENBLAS_CORETYPE=Prescott set in the environment"), `remedy` what gives
// the CPU's best kernel (below_cpu's last words). Stated once, on stdout, in
// `vae info` and the banners of train, eval and bench: a kernel the machine's
// environment forced is its owner's choice, not an error of every command.
BlasKernelReport assess_gemm_kernel(const CpuFeatures& features, const std::string& library,
                                    const std::string& kernel, VectorIsa kernel_isa,
                                    const std::string& origin, const std::string& remedy);
// The level of libxsmm's JIT target (libxsmm_get_target_arch(): "hsw",
// "skx", "clx", "cpx", "spr", ...): AVX-512 for skx and later (and knl,
// knm), AVX2+FMA for hsw, AVX for snb, SSE otherwise.
VectorIsa libxsmm_target_isa(const std::string& target);
// OpenBLAS's core `core`, as the above.
BlasKernelReport assess_blas_kernel(const CpuFeatures& features, const std::string& core,
                                    const std::string& origin);

}  // namespace cuvae
