// The GEMM kernel decision (include/cuvae/backends/cpu/cpu_features.h) on faked CPUs,
// faked OpenBLAS choices and faked environment values, and end to end:
// `vae info` says how the kernel in use was chosen, whatever OPENBLAS_* the
// machine has. No test here sets or unsets OPENBLAS_CORETYPE or
// OPENBLAS_L2_SIZE: on the CPUs whose environment sets them, the unset value
// is the one that can miscompute.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuvae/backends/cpu/cpu_features.h"
#include "vae_process.h"

namespace {

using cuvae::CpuFeatures;
using cuvae::VectorIsa;
using namespace cuvae::testing;

CpuFeatures avx512_cpu() {
  CpuFeatures f;
  f.sse3 = f.avx = f.avx2 = f.fma = true;
  f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = true;
  f.os_saves_ymm = f.os_saves_zmm = true;
  return f;
}

CpuFeatures avx2_cpu() {
  CpuFeatures f = avx512_cpu();
  f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = false;
  f.os_saves_zmm = false;
  return f;
}

TEST(CpuFeatures, BestIsaNeedsEveryPartAndTheOsToSaveTheRegisters) {
  EXPECT_EQ(cuvae::best_vector_isa(avx512_cpu()), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::best_vector_isa(avx2_cpu()), VectorIsa::kAvx2);
  CpuFeatures no_vl = avx512_cpu();
  no_vl.avx512vl = false;  // Knights Landing: F without VL
  EXPECT_EQ(cuvae::best_vector_isa(no_vl), VectorIsa::kAvx2);
  CpuFeatures os_without_zmm = avx512_cpu();
  os_without_zmm.os_saves_zmm = false;
  EXPECT_EQ(cuvae::best_vector_isa(os_without_zmm), VectorIsa::kAvx2);
  CpuFeatures no_fma = avx2_cpu();
  no_fma.fma = false;
  EXPECT_EQ(cuvae::best_vector_isa(no_fma), VectorIsa::kAvx);
  CpuFeatures os_without_ymm = avx2_cpu();
  os_without_ymm.os_saves_ymm = false;
  EXPECT_EQ(cuvae::best_vector_isa(os_without_ymm), VectorIsa::kSse);
}

TEST(CpuFeatures, OpenBlasCoreNamesMapToTheirIsa) {
  EXPECT_EQ(cuvae::openblas_core_isa("Prescott"), VectorIsa::kSse);
  EXPECT_EQ(cuvae::openblas_core_isa("Nehalem"), VectorIsa::kSse);
  EXPECT_EQ(cuvae::openblas_core_isa("Sandybridge"), VectorIsa::kAvx);
  EXPECT_EQ(cuvae::openblas_core_isa("haswell"), VectorIsa::kAvx2);
  EXPECT_EQ(cuvae::openblas_core_isa("Zen"), VectorIsa::kAvx2);
  EXPECT_EQ(cuvae::openblas_core_isa("SkylakeX"), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::openblas_core_isa("Cooperlake"), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::openblas_core_isa("Unknown"), VectorIsa::kSse);
}

TEST(CpuFeatures, RequestsTheCpusCoreOnlyWhenOpenBlasFellBelowIt) {
  const cuvae::BlasKernelRequest automatic;
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "Prescott", automatic),
            cuvae::preferred_openblas_core(VectorIsa::kAvx512));
  EXPECT_EQ(cuvae::openblas_core_to_request(avx2_cpu(), "Prescott", automatic), "Haswell");
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "Haswell", automatic),
            cuvae::preferred_openblas_core(VectorIsa::kAvx512));
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "SkylakeX", automatic), "");
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "Cooperlake", automatic), "");
  EXPECT_EQ(cuvae::openblas_core_to_request(avx2_cpu(), "Haswell", automatic), "");
  EXPECT_EQ(cuvae::openblas_core_to_request(CpuFeatures{}, "Prescott", automatic), "");
  cuvae::BlasKernelRequest user = automatic;
  user.user_override = true;
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "Prescott", user), "");
  cuvae::BlasKernelRequest keep = automatic;
  keep.policy = "keep";
  EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), "Prescott", keep), "");
}

TEST(CpuFeatures, AnyLibrarysKernelIsJudgedByItsIsa) {
  const cuvae::BlasKernelReport capped = cuvae::assess_gemm_kernel(
      avx2_cpu(), "oneDNN 2.6.3", "sse41", VectorIsa::kSse, "ONEDNN_MAX_CPU_ISA=SSE41 set in the environment",
      "unset ONEDNN_MAX_CPU_ISA");
  EXPECT_EQ(capped.kernel, "oneDNN 2.6.3 sse41 (SSE, ONEDNN_MAX_CPU_ISA=SSE41 set in the environment)");
  EXPECT_EQ(capped.below_cpu,
            "the GEMM kernel, oneDNN 2.6.3 sse41 (SSE), is below this CPU's AVX2+FMA: GEMMs run several "
            "times slower (ONEDNN_MAX_CPU_ISA=SSE41 set in the environment; unset ONEDNN_MAX_CPU_ISA)");
  EXPECT_TRUE(contains(capped.summary, "; " + capped.below_cpu)) << capped.summary;
  EXPECT_EQ(cuvae::assess_gemm_kernel(avx2_cpu(), "oneDNN", "avx2", VectorIsa::kAvx2, "o", "r").below_cpu, "");
}

TEST(CpuFeatures, ForcedLowerKernelIsStatedWithItsCause) {
  const cuvae::BlasKernelReport forced = cuvae::assess_blas_kernel(
      avx512_cpu(), "Haswell", cuvae::openblas_kernel_origin("Haswell", "", ""));
  EXPECT_EQ(forced.kernel, "OpenBLAS Haswell (AVX2+FMA, OPENBLAS_CORETYPE=Haswell set in the environment)");
  EXPECT_TRUE(contains(forced.below_cpu, "below this CPU's AVX-512")) << forced.below_cpu;
  EXPECT_TRUE(contains(forced.below_cpu, "OPENBLAS_CORETYPE=Haswell set in the environment")) << forced.below_cpu;
  EXPECT_EQ(forced.below_cpu.find('\n'), std::string::npos);
  EXPECT_TRUE(contains(forced.summary, "GEMM kernel OpenBLAS Haswell (AVX2+FMA")) << forced.summary;
  EXPECT_TRUE(contains(forced.summary, "CPU vector ISA AVX-512")) << forced.summary;

  EXPECT_EQ(cuvae::assess_blas_kernel(avx512_cpu(), "SkylakeX", "x").below_cpu, "");
  EXPECT_EQ(cuvae::assess_blas_kernel(avx2_cpu(), "Haswell", "x").below_cpu, "");
  // A kernel above the CPU cannot run at all; nothing to say about it here.
  EXPECT_EQ(cuvae::assess_blas_kernel(avx2_cpu(), "SkylakeX", "x").below_cpu, "");
  EXPECT_NE(cuvae::assess_blas_kernel(avx2_cpu(), "Sandybridge", "x").below_cpu, "");
}

// The origin is a function of the values the process found: none, a forced
// kernel (lower than the CPU or matching it: the cause is the same), cuvae's
// own restart, and CUVAE_BLAS_KERNEL=keep.
TEST(CpuFeatures, KernelOriginFollowsTheEnvironmentsValues) {
  EXPECT_EQ(cuvae::openblas_kernel_origin("", "", ""), "OpenBLAS's own choice");
  EXPECT_EQ(cuvae::openblas_kernel_origin("", "", "auto"), "OpenBLAS's own choice");
  EXPECT_EQ(cuvae::openblas_kernel_origin("Haswell", "", ""), "OPENBLAS_CORETYPE=Haswell set in the environment");
  EXPECT_EQ(cuvae::openblas_kernel_origin("SkylakeX", "", "keep"),
            "OPENBLAS_CORETYPE=SkylakeX set in the environment");
  EXPECT_EQ(cuvae::openblas_kernel_origin("", "Prescott", ""),
            "chosen by cuvae from the CPU's features; OpenBLAS had picked Prescott");
  EXPECT_EQ(cuvae::openblas_kernel_origin("", "", "keep"), "OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep)");
  // The restart's request for each case: the environment's choice is never replaced.
  cuvae::BlasKernelRequest environment;
  environment.user_override = true;
  for (const char* core : {"Haswell", "SkylakeX", "Prescott"}) {
    EXPECT_EQ(cuvae::openblas_core_to_request(avx512_cpu(), core, environment), "") << core;
  }
}

TEST(CpuFeatures, LibxsmmTargetsMapToTheirVectorIsa) {
  EXPECT_EQ(cuvae::libxsmm_target_isa("cpx"), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::libxsmm_target_isa("SKX"), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::libxsmm_target_isa("spr"), VectorIsa::kAvx512);
  EXPECT_EQ(cuvae::libxsmm_target_isa("hsw"), VectorIsa::kAvx2);
  EXPECT_EQ(cuvae::libxsmm_target_isa("snb"), VectorIsa::kAvx);
  EXPECT_EQ(cuvae::libxsmm_target_isa("wsm"), VectorIsa::kSse);
  EXPECT_EQ(cuvae::libxsmm_target_isa("generic"), VectorIsa::kSse);
  // libxsmm at the CPU's level is not below it, whatever OpenBLAS was
  // given; OpenBLAS is then named for what libxsmm declines.
  cuvae::BlasKernelReport r = cuvae::assess_gemm_kernel(avx512_cpu(), "libxsmm 1.17", "JIT for cpx",
                                                        cuvae::libxsmm_target_isa("cpx"), "o", "r");
  EXPECT_EQ(r.below_cpu, "");
  r.fallback = cuvae::assess_blas_kernel(avx512_cpu(), "Haswell", "OPENBLAS_CORETYPE=Haswell set in the environment").kernel;
  EXPECT_EQ(cuvae::gemm_kernel_summary(r),
            "GEMM kernel libxsmm 1.17 JIT for cpx (AVX-512, o), where it declines OpenBLAS Haswell (AVX2+FMA, "
            "OPENBLAS_CORETYPE=Haswell set in the environment), CPU vector ISA AVX-512");
}

// The text after "GEMM kernel: " up to the end of its line.
std::string kernel_line(const std::string& out) {
  const size_t at = out.find("\nGEMM kernel: ");
  if (at == std::string::npos) return "";
  const size_t start = at + 1, end = out.find('\n', start);
  return out.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// `vae info` names the kernel with the cause the machine's environment
// gives it, as it is (set or not), on stdout alone: stating a forced kernel
// is no error and no warning.
TEST(BlasKernelEndToEnd, InfoStatesTheKernelAndItsCauseOnStdout) {
  ScopedEnv policy("CUVAE_BLAS_KERNEL", nullptr);
  ScopedEnv openblas("CUVAE_CPU_GEMM", "openblas");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  const std::string line = kernel_line(r.out);
  ASSERT_TRUE(contains(line, "GEMM kernel: OpenBLAS ")) << describe(r);
  if (coretype != nullptr && *coretype != '\0') {
    EXPECT_TRUE(contains(line, std::string(", OPENBLAS_CORETYPE=") + coretype + " set in the environment)"))
        << describe(r);
  } else {
    EXPECT_FALSE(contains(line, "set in the environment")) << describe(r);
  }
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  const bool below = !contains(line, std::string("(") + cuvae::vector_isa_name(cpu) + ", ");
  EXPECT_EQ(contains(r.out, "\nGEMM speed: the GEMM kernel, OpenBLAS "), below) << describe(r);
}

// A marker of cuvae's restart inherited from another process's environment
// is not trusted: the values are still checked, and the banner does not
// claim that cuvae set them.
TEST(BlasKernelEndToEnd, InheritedRestartMarkersAreIgnored) {
  {
    ScopedEnv forged("CUVAE_RESTARTED", "1");
    expect_info_refuses_env("CUVAE_CPU_GEMM", "garbage",
                            "vae: error: CUVAE_CPU_GEMM must be auto, onednn or openblas, got 'garbage'\n");
  }
  ScopedEnv forged("CUVAE_RESTARTED", std::to_string(dead_pid()).c_str());
  ScopedEnv wait_set("CUVAE_WAIT_SET", "1");
  ScopedEnv from("CUVAE_BLAS_RESTARTED_FROM", "Prescott");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  EXPECT_FALSE(contains(r.out, "set by cuvae")) << describe(r);
  EXPECT_FALSE(contains(r.out, "OpenBLAS had picked Prescott")) << describe(r);
}

TEST(BlasKernelEndToEnd, UnknownPolicyIsOneLineError) {
  expect_info_refuses_env("CUVAE_BLAS_KERNEL", "bogus", "vae: error: CUVAE_BLAS_KERNEL must be auto or keep, got 'bogus'\n");
}

TEST(BlasKernelEndToEnd, UnknownGemmLibraryIsOneLineError) {
  ScopedEnv gemm("CUVAE_CPU_GEMM", "mkl");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_TRUE(contains(r.err, "vae: error: CUVAE_CPU_GEMM must be auto")) << describe(r);
  EXPECT_TRUE(contains(r.err, "got 'mkl'\n")) << describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(r);
}

// In a build with oneDNN: its ISA capped by the environment is kept, and
// said on stdout.
TEST(BlasKernelEndToEnd, OneDnnCappedToSseIsStated) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu == VectorIsa::kSse) GTEST_SKIP() << "this CPU has no AVX: SSE is its best";
  ScopedEnv gemm("CUVAE_CPU_GEMM", "onednn");
  ScopedEnv capped("ONEDNN_MAX_CPU_ISA", "SSE41");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  if (!contains(kernel_line(r.out), "GEMM kernel: oneDNN ")) GTEST_SKIP() << "this build has no oneDNN";
  EXPECT_TRUE(contains(kernel_line(r.out), " sse41 (SSE, ONEDNN_MAX_CPU_ISA=SSE41 set in the environment)"))
      << describe(r);
  EXPECT_TRUE(contains(r.out, "\nGEMM speed: the GEMM kernel, oneDNN ")) << describe(r);
  EXPECT_FALSE(has_vae_diagnostic(r.err)) << describe(r);
}

// `vae info` says which library runs which GEMMs and why: in a build with
// libxsmm, libxsmm all of the model's, OpenBLAS (named with its kernel and
// that kernel's cause, as the environment has it) only what libxsmm
// declines; CUVAE_CPU_GEMM=openblas, OpenBLAS all.
TEST(BlasKernelEndToEnd, InfoSaysWhichLibraryRunsWhichGemms) {
  ScopedEnv gemm_choice("CUVAE_CPU_GEMM", nullptr);
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  ASSERT_TRUE(contains(r.out, "\nGEMM shapes: ")) << describe(r);
  if (contains(kernel_line(r.out), "GEMM kernel: libxsmm ")) {
    EXPECT_TRUE(contains(r.out, " runs every GEMM of the model (all have alpha 1 and beta 0), in blocks of about 64 x 64"))
        << describe(r);
    const char* coretype = std::getenv("OPENBLAS_CORETYPE");
    if (coretype != nullptr && *coretype != '\0') {
      EXPECT_TRUE(contains(r.out, std::string(", OPENBLAS_CORETYPE=") + coretype +
                                      " set in the environment) only for GEMMs that libxsmm declines"))
          << describe(r);
    }
    EXPECT_TRUE(contains(r.out, "OpenMP threads (training: 1 to ")) << describe(r);
  } else {
    EXPECT_TRUE(contains(r.out, "\nGEMM shapes: OpenBLAS runs every GEMM (this build has no libxsmm)")) << describe(r);
  }
  ScopedEnv openblas("CUVAE_CPU_GEMM", "openblas");
  const RunResult o = run_vae({"info"}, dir.path());
  expect_success(o);
  EXPECT_TRUE(contains(o.out, "\nGEMM shapes: OpenBLAS runs every GEMM (CUVAE_CPU_GEMM=openblas)\n")) << describe(o);
  EXPECT_FALSE(contains(o.out, "(training: 1 to ")) << describe(o);
}

TEST(BlasKernelEndToEnd, UnknownThreadPolicyIsOneLineError) {
  expect_info_refuses_env("CUVAE_THREADS", "many", "vae: error: CUVAE_THREADS must be auto or fixed, got 'many'\n");
}

// The device line of every command's banner is the same description().
TEST(BlasKernelEndToEnd, CpuBackendDescriptionNamesTheKernel) {
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "CPU backend: CPU, ")) << r.out;
  EXPECT_TRUE(contains(r.out, ", GEMM kernel ")) << r.out;
  EXPECT_TRUE(contains(r.out, "\nCPU vector ISA: ")) << r.out;
}

}  // namespace
