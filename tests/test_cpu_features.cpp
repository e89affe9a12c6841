// The GEMM kernel decision (include/cuvae/cpu_features.h) on faked CPUs and
// faked OpenBLAS choices, and end to end: `vae info` with OpenBLAS's kernel
// forced by the user, and with a fallback faked for the restart.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuvae/cpu_features.h"
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
      avx2_cpu(), "oneDNN 2.6.3", "sse41", VectorIsa::kSse, "ONEDNN_MAX_CPU_ISA=SSE41 set by the user",
      "unset ONEDNN_MAX_CPU_ISA");
  EXPECT_EQ(capped.kernel, "oneDNN 2.6.3 sse41 (SSE, ONEDNN_MAX_CPU_ISA=SSE41 set by the user)");
  EXPECT_EQ(capped.warning,
            "the GEMM kernel, oneDNN 2.6.3 sse41 (SSE), is below this CPU's AVX2+FMA: GEMMs run several "
            "times slower (ONEDNN_MAX_CPU_ISA=SSE41 set by the user; unset ONEDNN_MAX_CPU_ISA)");
  EXPECT_EQ(cuvae::assess_gemm_kernel(avx2_cpu(), "oneDNN", "avx2", VectorIsa::kAvx2, "o", "r").warning, "");
}

TEST(CpuFeatures, WarnsOnlyWhenTheKernelIsBelowTheCpu) {
  const cuvae::BlasKernelReport forced =
      cuvae::assess_blas_kernel(avx512_cpu(), "Prescott", "OPENBLAS_CORETYPE=Prescott set by the user");
  EXPECT_EQ(forced.kernel_isa, VectorIsa::kSse);
  EXPECT_EQ(forced.cpu_isa, VectorIsa::kAvx512);
  EXPECT_TRUE(contains(forced.warning, "OpenBLAS Prescott (SSE)")) << forced.warning;
  EXPECT_TRUE(contains(forced.warning, "below this CPU's AVX-512")) << forced.warning;
  EXPECT_TRUE(contains(forced.warning, "OPENBLAS_CORETYPE=Prescott set by the user")) << forced.warning;
  EXPECT_EQ(forced.warning.find('\n'), std::string::npos);
  EXPECT_TRUE(contains(forced.summary, "GEMM kernel OpenBLAS Prescott (SSE")) << forced.summary;
  EXPECT_TRUE(contains(forced.summary, "CPU vector ISA AVX-512")) << forced.summary;

  EXPECT_EQ(cuvae::assess_blas_kernel(avx512_cpu(), "SkylakeX", "x").warning, "");
  EXPECT_EQ(cuvae::assess_blas_kernel(avx2_cpu(), "Haswell", "x").warning, "");
  // A kernel above the CPU cannot run at all; nothing to warn about here.
  EXPECT_EQ(cuvae::assess_blas_kernel(avx2_cpu(), "SkylakeX", "x").warning, "");
  EXPECT_NE(cuvae::assess_blas_kernel(avx2_cpu(), "Sandybridge", "x").warning, "");
}

// The text after "GEMM kernel: " up to the end of its line.
std::string kernel_line(const std::string& out) {
  const size_t at = out.find("\nGEMM kernel: ");
  if (at == std::string::npos) return "";
  const size_t start = at + 1, end = out.find('\n', start);
  return out.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

TEST(BlasKernelEndToEnd, UserForcedPrescottIsKeptWithOneWarningLine) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu == VectorIsa::kSse) GTEST_SKIP() << "this CPU has no AVX: Prescott's kernels are its best";
  ScopedEnv forced("OPENBLAS_CORETYPE", "Prescott");
  ScopedEnv policy("CUVAE_BLAS_KERNEL", nullptr);
  ScopedEnv openblas("CUVAE_CPU_GEMM", "openblas");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(kernel_line(r.out), "OpenBLAS Prescott (SSE, OPENBLAS_CORETYPE=Prescott set by the user)"))
      << describe(r);
  const std::string warning = "vae: warning: the GEMM kernel, OpenBLAS Prescott (SSE), is below this CPU's ";
  EXPECT_TRUE(contains(r.err, warning)) << describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(r);
}

TEST(BlasKernelEndToEnd, FallbackIsReplacedByTheCpusBestKernel) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu < VectorIsa::kAvx2) GTEST_SKIP() << "this CPU has no AVX2+FMA: no better kernel to choose";
  ScopedEnv fallback("OPENBLAS_CORETYPE", "Prescott");
  ScopedEnv fake("CUVAE_TEST_OPENBLAS_FALLBACK", "1");
  ScopedEnv policy("CUVAE_BLAS_KERNEL", nullptr);
  ScopedEnv openblas("CUVAE_CPU_GEMM", "openblas");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);  // no warning
  const std::string expected = std::string("GEMM kernel: OpenBLAS ") + cuvae::preferred_openblas_core(cpu) + " (" +
                               cuvae::vector_isa_name(cpu) +
                               ", chosen by cuvae from the CPU's features; OpenBLAS had picked Prescott)";
  EXPECT_EQ(kernel_line(r.out), expected) << describe(r);
}

TEST(BlasKernelEndToEnd, AutomaticChoiceIsTheCpusBest) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu < VectorIsa::kAvx2) GTEST_SKIP() << "this CPU has no AVX2+FMA: no better kernel to choose";
  ScopedEnv unset("OPENBLAS_CORETYPE", nullptr);
  ScopedEnv policy("CUVAE_BLAS_KERNEL", nullptr);
  ScopedEnv gemm("CUVAE_CPU_GEMM", nullptr);
  ScopedEnv onednn_isa("ONEDNN_MAX_CPU_ISA", nullptr);
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(kernel_line(r.out), std::string("(") + cuvae::vector_isa_name(cpu) + ", "))
      << describe(r);
}

TEST(BlasKernelEndToEnd, KeepLeavesTheFallbackAndWarns) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu < VectorIsa::kAvx2) GTEST_SKIP() << "this CPU has no AVX2+FMA: no better kernel to choose";
  ScopedEnv fallback("OPENBLAS_CORETYPE", "Prescott");
  ScopedEnv fake("CUVAE_TEST_OPENBLAS_FALLBACK", "1");
  ScopedEnv policy("CUVAE_BLAS_KERNEL", "keep");
  ScopedEnv openblas("CUVAE_CPU_GEMM", "openblas");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(kernel_line(r.out), "GEMM kernel: OpenBLAS Prescott (SSE, OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep))")
      << describe(r);
  EXPECT_TRUE(contains(r.err, "vae: warning: the GEMM kernel, OpenBLAS Prescott (SSE)")) << describe(r);
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

// In a build with oneDNN: its ISA capped by the user is kept, with a warning.
TEST(BlasKernelEndToEnd, OneDnnCappedToSseWarns) {
  const VectorIsa cpu = cuvae::best_vector_isa(cuvae::detect_cpu_features());
  if (cpu == VectorIsa::kSse) GTEST_SKIP() << "this CPU has no AVX: SSE is its best";
  ScopedEnv gemm("CUVAE_CPU_GEMM", "onednn");
  ScopedEnv capped("ONEDNN_MAX_CPU_ISA", "SSE41");
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  if (!contains(kernel_line(r.out), "GEMM kernel: oneDNN ")) GTEST_SKIP() << "this build has no oneDNN";
  EXPECT_TRUE(contains(kernel_line(r.out), " sse41 (SSE, ONEDNN_MAX_CPU_ISA=SSE41 set by the user)")) << describe(r);
  EXPECT_TRUE(contains(r.err, "vae: warning: the GEMM kernel, oneDNN ")) << describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(r);
}

// The device line of every command's banner is the same description().
TEST(BlasKernelEndToEnd, CpuBackendDescriptionNamesTheKernel) {
  ScopedEnv unset("OPENBLAS_CORETYPE", nullptr);
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "CPU backend: CPU, ")) << r.out;
  EXPECT_TRUE(contains(r.out, ", GEMM kernel ")) << r.out;
  EXPECT_TRUE(contains(r.out, "\nCPU vector ISA: ")) << r.out;
}

}  // namespace
