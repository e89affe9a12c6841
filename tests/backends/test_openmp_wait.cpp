// The OpenMP wait policy chosen at start-up (include/cuvae/backends/cpu/openmp_wait.h):
// the decision, and end to end that libgomp really runs with it (its
// OMP_DISPLAY_ENV=verbose report shows GOMP_SPINCOUNT 1000 as cuvae sets
// it, 300000 by default).
#include <gtest/gtest.h>
#include <omp.h>

#include <string>

#include "cuvae/backends/cpu/openmp_wait.h"
#include "cuvae/error.h"
#include "vae_process.h"

namespace {

using namespace cuvae::testing;

TEST(OpenMpWait, ShortSpinUnlessTheUserChoseOrThereIsOneThread) {
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("", "", "", 2), "1000");
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("", "", "auto", 16), "1000");
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("active", "", "", 2), "");
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("", "5000", "", 2), "");
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("", "", "keep", 2), "");
  EXPECT_EQ(cuvae::openmp_spin_count_to_request("", "", "", 1), "");
  EXPECT_THROW(cuvae::openmp_spin_count_to_request("", "", "sometimes", 2), cuvae::Error);
}

// libgomp's spin count as it reports it on stderr at start-up (the last
// report: a restarted process reports again), or "" if none.
std::string reported_spin_count(const std::string& err) {
  const std::string key = "GOMP_SPINCOUNT = '";
  const size_t at = err.rfind(key);
  if (at == std::string::npos) return "";
  return err.substr(at + key.size(), err.find('\'', at + key.size()) - at - key.size());
}

// A training command restarts with cuvae's spin count (it then fails on the
// missing data, after libgomp has reported its settings).
RunResult train_without_data(const TempDir& dir) {
  ScopedEnv display("OMP_DISPLAY_ENV", "verbose");
  return run_vae({"train", "--data", dir / "none", "--device", "cpu"}, dir.path());
}

TEST(OpenMpWait, TrainingRunsWithTheShortSpinAndKeepRestoresTheDefault) {
  if (omp_get_max_threads() < 2) GTEST_SKIP() << "one OpenMP thread: nothing waits, nothing is set";
  ScopedEnv no_policy("OMP_WAIT_POLICY", nullptr);
  ScopedEnv no_spin("GOMP_SPINCOUNT", nullptr);
  TempDir dir;
  {
    ScopedEnv automatic("CUVAE_OMP_WAIT", nullptr);
    const RunResult r = train_without_data(dir);
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_EQ(reported_spin_count(r.err), cuvae::kCuvaeSpinCount) << describe(r);
  }
  {
    ScopedEnv keep("CUVAE_OMP_WAIT", "keep");
    const RunResult r = train_without_data(dir);
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    EXPECT_EQ(reported_spin_count(r.err), "300000") << describe(r);
  }
}

TEST(OpenMpWait, UsersSpinCountIsKeptAndInfoSaysSo) {
  ScopedEnv no_policy("OMP_WAIT_POLICY", nullptr);
  ScopedEnv spin("GOMP_SPINCOUNT", "12345");
  TempDir dir;
  const RunResult r = train_without_data(dir);
  EXPECT_EQ(reported_spin_count(r.err), "12345") << describe(r);
  const RunResult info = run_vae({"info"}, dir.path());
  expect_success(info);
  EXPECT_TRUE(contains(info.out, "\nOpenMP waiting: GOMP_SPINCOUNT=12345 set in the environment\n")) << describe(info);
}

TEST(OpenMpWait, UnknownChoiceIsOneLineError) {
  expect_info_refuses_env("CUVAE_OMP_WAIT", "sometimes", "vae: error: CUVAE_OMP_WAIT must be auto or keep, got 'sometimes'\n");
}

}  // namespace
