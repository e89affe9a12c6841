// The start-up checks of OMP_NUM_THREADS, GOMP_SPINCOUNT, OMP_WAIT_POLICY
// and OPENBLAS_CORETYPE (include/cuvae/backends/cpu/environment_check.h):
// bad values passed silently (libgomp's own "Invalid value" line, printed
// twice as vae restarted itself, exit 0; a garbage OPENBLAS_CORETYPE dropped
// without a word). The parsing is tested as pure functions of the values;
// end to end, only OMP_* and GOMP_* are given to child processes (no test
// here sets or unsets OPENBLAS_*, see test_cpu_features.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/environment_check.h"
#include "vae_process.h"

namespace {

using namespace cuvae::testing;
using cuvae::EnvFinding;

bool good(const std::optional<EnvFinding>& finding) { return !finding.has_value(); }
bool error(const std::optional<EnvFinding>& finding) { return finding.has_value() && finding->error; }
bool warning(const std::optional<EnvFinding>& finding) { return finding.has_value() && !finding->error; }

TEST(EnvironmentCheck, OmpNumThreadsAsLibgompReadsIt) {
  EXPECT_TRUE(good(cuvae::check_omp_num_threads(nullptr, 2, 2)));
  for (const char* value : {"1", "2", " 4 ", "+2", "16,1", "2, 1", "128"}) {
    EXPECT_TRUE(good(cuvae::check_omp_num_threads(value, 2, 2))) << value;
  }
  for (const char* value : {"0", "abc", "-4", "2abc", "0x10", "1e3", "2,", ",2", "2,,1", "2,0",
                            "9223372036854775808", "99999999999999999999", "4 threads"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_omp_num_threads(value, 2, 2);
    ASSERT_TRUE(error(finding));
    EXPECT_NE(finding->message.find(std::string("OMP_NUM_THREADS='") + value + "'"), std::string::npos)
        << finding->message;
    EXPECT_NE(finding->message.find("would run 2 threads"), std::string::npos) << finding->message;
  }
  // Beyond 64 threads per CPU libgomp failed to start them (40000 on 2 CPUs)
  // or crashed in GOMP_parallel (70000, 100000: SIGSEGV in every command).
  for (const char* value : {"129", "100000", "9223372036854775807", "2,1000"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_omp_num_threads(value, 2, 2);
    ASSERT_TRUE(error(finding));
    EXPECT_TRUE(contains(finding->message, "more than 64 threads per CPU")) << finding->message;
    EXPECT_TRUE(contains(finding->message, "give at most 128")) << finding->message;
  }
  EXPECT_TRUE(good(cuvae::check_omp_num_threads("4096", 2, 64)));
  // Empty: libgomp treats it as unset (after its own complaint): no change.
  EXPECT_TRUE(warning(cuvae::check_omp_num_threads("", 2, 2)));
  EXPECT_TRUE(warning(cuvae::check_omp_num_threads("  ", 2, 2)));
}

TEST(EnvironmentCheck, GompSpincountAsLibgompReadsIt) {
  EXPECT_TRUE(good(cuvae::check_gomp_spincount(nullptr, 2)));
  for (const char* value : {"0", "1000", " 10k ", "5 M", "2g", "1T", "infinite", "INFINITY", "+7",
                            "18446744073709551615"}) {
    EXPECT_TRUE(good(cuvae::check_gomp_spincount(value, 2))) << value;
  }
  for (const char* value : {"garbage", "1e3", "10kk", "10 x", "0x10", "-5", "18446744073709551616", "k"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_gomp_spincount(value, 2);
    ASSERT_TRUE(error(finding));
    EXPECT_EQ(finding->message.rfind(std::string("GOMP_SPINCOUNT='") + value + "' is ", 0), 0u) << finding->message;
  }
  EXPECT_TRUE(contains(cuvae::check_gomp_spincount("-5", 2)->message, "negative"));
  // With one thread nothing waits: a warning.
  EXPECT_TRUE(warning(cuvae::check_gomp_spincount("garbage", 1)));
  EXPECT_TRUE(warning(cuvae::check_gomp_spincount("", 2)));
}

TEST(EnvironmentCheck, OmpWaitPolicyAsLibgompReadsIt) {
  EXPECT_TRUE(good(cuvae::check_omp_wait_policy(nullptr, 2)));
  for (const char* value : {"active", "passive", " Active ", "PASSIVE"}) {
    EXPECT_TRUE(good(cuvae::check_omp_wait_policy(value, 2))) << value;
  }
  for (const char* value : {"garbage", "activ", "passivex", "1"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_omp_wait_policy(value, 4);
    ASSERT_TRUE(error(finding));
    EXPECT_TRUE(contains(finding->message, std::string("OMP_WAIT_POLICY='") + value + "' is neither active nor passive"))
        << finding->message;
  }
  EXPECT_TRUE(warning(cuvae::check_omp_wait_policy("garbage", 1)));
  EXPECT_TRUE(warning(cuvae::check_omp_wait_policy("", 2)));
}

// The value against the core OpenBLAS loaded: what it ignores leaves it on
// another core without a word.
TEST(EnvironmentCheck, OpenBlasCoretypeAgainstTheLoadedCore) {
  EXPECT_TRUE(good(cuvae::check_openblas_coretype(nullptr, "Cooperlake", true)));
  EXPECT_TRUE(good(cuvae::check_openblas_coretype("Haswell", "Haswell", true)));
  EXPECT_TRUE(good(cuvae::check_openblas_coretype("haswell", "Haswell", true)));
  EXPECT_TRUE(good(cuvae::check_openblas_coretype("Prescott", "Prescott", true)));  // below the CPU: stated by info
  for (const char* value : {"garbage", " Haswell", "SapphireRapids", "haswellx"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_openblas_coretype(value, "Cooperlake", true);
    ASSERT_TRUE(error(finding));
    EXPECT_TRUE(contains(finding->message, std::string("OPENBLAS_CORETYPE='") + value + "'")) << finding->message;
    EXPECT_TRUE(contains(finding->message, "runs Cooperlake")) << finding->message;
  }
  // Bytes from the environment are escaped.
  EXPECT_TRUE(contains(cuvae::check_openblas_coretype("a\x1b[31m", "Haswell", true)->message, "'a\\x1b[31m'"));
  // oneDNN runs the GEMMs: no matter.
  EXPECT_TRUE(warning(cuvae::check_openblas_coretype("garbage", "Cooperlake", false)));
  EXPECT_TRUE(warning(cuvae::check_openblas_coretype("", "Cooperlake", true)));
}

TEST(EnvironmentCheck, OmpDynamicAndProcBind) {
  for (const char* value : {"true", "FALSE", " True "}) {
    EXPECT_TRUE(good(cuvae::check_omp_dynamic(value))) << value;
    EXPECT_TRUE(good(cuvae::check_omp_proc_bind(value))) << value;
  }
  for (const char* value : {"spread", "close", "master", "primary", "spread,close", " Spread , CLOSE "}) {
    EXPECT_TRUE(good(cuvae::check_omp_proc_bind(value))) << value;
  }
  for (const char* value : {"garbage", "1", "yes", "true,false"}) {
    EXPECT_TRUE(error(cuvae::check_omp_dynamic(value))) << value;
  }
  for (const char* value : {"garbage", "1", "spread,", "true,spread", "close spread"}) {
    EXPECT_TRUE(error(cuvae::check_omp_proc_bind(value))) << value;
  }
  EXPECT_TRUE(warning(cuvae::check_omp_dynamic("")));
  EXPECT_TRUE(warning(cuvae::check_omp_proc_bind(" ")));
}

// libxsmm ignores a target it does not know (case matters) and JITs for
// the CPU's: the banner then said "LIBXSMM_TARGET=garbage set in the environment".
cuvae::CpuFeatures avx512_cpu() {
  cuvae::CpuFeatures f;
  f.sse3 = f.avx = f.avx2 = f.fma = true;
  f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = true;
  f.os_saves_ymm = f.os_saves_zmm = true;
  return f;
}

TEST(EnvironmentCheck, LibxsmmTarget) {
  const cuvae::CpuFeatures cpu = avx512_cpu();
  // (The loaded target is what libxsmm made of the value.)
  for (const auto& [value, loaded] : std::vector<std::pair<const char*, const char*>>{
           {"hsw", "hsw"}, {"avx2", "hsw"}, {"skx", "skx"}, {"avx512", "skx"}, {"cpx", "cpx"}, {"wsm", "wsm"},
           {"sse", "wsm"}, {"generic", "generic"}, {"0", "wsm"}, {"3", "wsm"}}) {
    EXPECT_TRUE(good(cuvae::check_libxsmm_target(value, loaded, true, cpu))) << value;
  }
  EXPECT_TRUE(good(cuvae::check_libxsmm_target(nullptr, "cpx", true, cpu)));
  EXPECT_TRUE(good(cuvae::check_libxsmm_target("", "cpx", true, cpu)));
  for (const char* value : {"garbage", "HSW", " hsw", "haswell", "-1"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_libxsmm_target(value, "cpx", true, cpu);
    ASSERT_TRUE(error(finding));
    EXPECT_TRUE(contains(finding->message, "JITs for cpx")) << finding->message;
  }
  EXPECT_TRUE(warning(cuvae::check_libxsmm_target("garbage", "cpx", false, cpu)));
  // Found by the adversarial pass: LIBXSMM_TARGET=knm on a Zen 5 died of
  // SIGILL in the first GEMM; libxsmm does not check what the CPU runs.
  for (const char* phi : {"knl", "knm"}) {
    const std::optional<EnvFinding> finding = cuvae::check_libxsmm_target(phi, phi, true, cpu);
    ASSERT_TRUE(error(finding)) << phi;
    EXPECT_TRUE(contains(finding->message, "SIGILL")) << finding->message;
  }
  cuvae::CpuFeatures phi_cpu = cpu;
  phi_cpu.xeon_phi = true;
  EXPECT_TRUE(good(cuvae::check_libxsmm_target("knm", "knm", true, phi_cpu)));
  cuvae::CpuFeatures avx2_cpu = cpu;
  avx2_cpu.avx512f = false;
  EXPECT_TRUE(error(cuvae::check_libxsmm_target("skx", "skx", true, avx2_cpu)));
  EXPECT_TRUE(good(cuvae::check_libxsmm_target("hsw", "hsw", true, avx2_cpu)));
}

// A bad CUVAE_PLOT_TIMEOUT became 120 s without a word.
TEST(EnvironmentCheck, PlotTimeout) {
  for (const char* value : {"1", "120", "3600"}) EXPECT_TRUE(good(cuvae::check_plot_timeout(value))) << value;
  EXPECT_TRUE(good(cuvae::check_plot_timeout(nullptr)));
  for (const char* value : {"0", "-1", "abc", "3601", "1.5", " 5", "99999999999"}) {
    SCOPED_TRACE(value);
    const std::optional<EnvFinding> finding = cuvae::check_plot_timeout(value);
    ASSERT_TRUE(warning(finding));
    EXPECT_TRUE(contains(finding->message, "120 s")) << finding->message;
  }
}

int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// End to end: each bad value is one line of vae's, printed once (vae
// restarts train, eval and bench; libgomp's own complaint too is printed
// once), exit 2, nothing written.
TEST(EnvironmentCheckEndToEnd, BadOpenMpValuesAreOneLineErrorsPrintedOnce) {
  TempDir dir;
  write_dataset(dir / "data");
  const bool has_libxsmm = contains(run_vae({"info"}, dir.path()).out, "\nGEMM kernel: libxsmm ");
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"OMP_NUM_THREADS", "0"},   {"OMP_NUM_THREADS", "abc"},     {"OMP_NUM_THREADS", "-4"},
      {"GOMP_SPINCOUNT", "garbage"}, {"OMP_WAIT_POLICY", "garbage"},
      // Found by the adversarial pass: libgomp's line twice, exit 0; a crash
      // (SIGSEGV) for 100000 threads; libxsmm's target silently ignored.
      {"OMP_DYNAMIC", "garbage"},  {"OMP_PROC_BIND", "garbage"},  {"OMP_NUM_THREADS", "100000"},
      {"LIBXSMM_TARGET", "garbage"}, {"LIBXSMM_TARGET", "knm"}};
  for (const auto& [name, value] : cases) {
    SCOPED_TRACE(std::string(name) + "=" + value);
    ScopedEnv bad(name, value);
    // GOMP_SPINCOUNT and OMP_WAIT_POLICY matter only with threads to wait.
    ScopedEnv threads("OMP_NUM_THREADS", std::string(name) == "OMP_NUM_THREADS" ? value : "2");
    for (const std::vector<std::string>& args :
         {train_args(dir / "data", dir / "out"), std::vector<std::string>{"info"}}) {
      const RunResult r = run_vae(args, dir.path());
      if (std::string(name) == "LIBXSMM_TARGET" && !has_libxsmm) continue;  // nothing reads it
      EXPECT_EQ(r.exit_code, 2) << describe(r);
      EXPECT_EQ(count_of(r.err, "vae: "), 1) << describe(r);
      EXPECT_EQ(count_of(r.err, std::string("vae: error: ") + name + "='" + value + "'"), 1) << describe(r);
      EXPECT_LE(count_of(r.err, "libgomp: "), 1) << describe(r);
      EXPECT_EQ(r.out, "") << describe(r);
    }
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

// An empty value is an unset one to libgomp: a warning, once, and the
// command runs (libgomp's complaint once too: the restart drops the value).
TEST(EnvironmentCheckEndToEnd, AnEmptyOpenMpValueIsOneWarning) {
  TempDir dir;
  write_dataset(dir / "data");
  ScopedEnv empty("OMP_NUM_THREADS", "");
  const RunResult r = run_vae(train_args(dir / "data", dir / "out"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(count_of(r.err, "vae: "), 1) << describe(r);
  EXPECT_EQ(count_of(r.err, "vae: warning: OMP_NUM_THREADS is set but empty: treated as unset\n"), 1) << describe(r);
  EXPECT_LE(count_of(r.err, "libgomp: "), 1) << describe(r);
}

// A bad CUVAE_PLOT_TIMEOUT became 120 s without a word: one warning, once
// (train restarts itself), and the run goes on.
TEST(EnvironmentCheckEndToEnd, ABadPlotTimeoutIsOneWarning) {
  TempDir dir;
  write_dataset(dir / "data");
  ScopedEnv timeout("CUVAE_PLOT_TIMEOUT", "abc");
  const RunResult r = run_vae(train_args(dir / "data", dir / "out"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(count_of(r.err, "vae: "), 1) << describe(r);
  EXPECT_EQ(count_of(r.err, "vae: warning: CUVAE_PLOT_TIMEOUT='abc' is not a whole number of seconds"), 1)
      << describe(r);
}

// --help, --version and a flag's error do not depend on the environment:
// `vae --help` failed with CUVAE_CPU_GEMM=garbage.
TEST(EnvironmentCheckEndToEnd, HelpWorksWhateverTheEnvironment) {
  TempDir dir;
  ScopedEnv gemm("CUVAE_CPU_GEMM", "garbage");
  ScopedEnv threads("OMP_NUM_THREADS", "abc");
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--help"}, {"train", "--help"}, {"eval", "-h"}, {"--version"}}) {
    SCOPED_TRACE(args.front());
    const RunResult r = run_vae(args, dir.path());
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(contains(r.out, args.front() == "--version" ? "cuvae " : "Usage:")) << describe(r);
    EXPECT_FALSE(has_vae_diagnostic(r.err)) << describe(r);
  }
  // Still refused where something computes.
  const RunResult info = run_vae({"info"}, dir.path());
  EXPECT_EQ(info.exit_code, 2) << describe(info);
}

// The kernel's origin is reported the same way by info and by the banners
// of train and eval (which vae restarts to set GOMP_SPINCOUNT) and bench.
TEST(EnvironmentCheckEndToEnd, TheKernelsOriginIsTheSameEverywhere) {
  TempDir dir;
  write_dataset(dir / "data");
  // Each "OpenBLAS NAME (TEXT)" (NAME of [A-Za-z0-9_], TEXT without
  // parentheses). Not std::regex: GCC 12 under ASan warns of an
  // uninitialized std::function inside <regex> (-Werror=maybe-uninitialized).
  auto origins = [&](const RunResult& r) {
    std::set<std::string> found;
    const std::string& t = r.out;
    for (size_t at = t.find("OpenBLAS "); at != std::string::npos; at = t.find("OpenBLAS ", at + 1)) {
      size_t i = at + 9;
      while (i < t.size() && (std::isalnum(static_cast<unsigned char>(t[i])) || t[i] == '_')) ++i;
      if (i == at + 9 || t.compare(i, 2, " (") != 0) continue;
      const size_t close = t.find_first_of("()", i + 2);
      if (close != std::string::npos && t[close] == ')') found.insert(t.substr(at, close + 1 - at));
    }
    return found;
  };
  const RunResult info = run_vae({"info"}, dir.path());
  expect_success(info);
  const std::set<std::string> expected = origins(info);
  ASSERT_EQ(expected.size(), 1u) << describe(info);
  const RunResult train = run_vae(train_args(dir / "data", dir / "run"), dir.path());
  expect_success(train);
  EXPECT_EQ(origins(train), expected) << describe(train);
  const RunResult eval = run_vae({"eval", "--model", dir / "run/model.safetensors", "--data", dir / "data", "--k", "1",
                                  "--device", "cpu"},
                                 dir.path());
  expect_success(eval);
  EXPECT_EQ(origins(eval), expected) << describe(eval);
  const RunResult bench = run_vae({"bench", "--device", "cpu", "--data", dir / "data", "--batch-sizes", "10", "--warmup",
                                   "0", "--steps", "1", "--repeats", "1"},
                                  dir.path());
  expect_success(bench);
  EXPECT_EQ(origins(bench), expected) << describe(bench);
}

}  // namespace
