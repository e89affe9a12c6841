// vae bench's FLOP floor: the step's GEMM FLOPs at the machine's large-SGEMM
// rate. On the CPU that is the faster of the backend's own GEMM (libxsmm's
// shape-fixed blocks) and OpenBLAS's own kernel called directly: on the Zen 3
// of 2026-12-06 the blocks ran 2048^3 at 42-61 GFLOP/s and OpenBLAS at
// 135-178 (docs/results/2026-12-06-zen3/), and a floor at the blocks' rate
// had put the batch-200 step below its floor.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

TEST(BenchFloor, IsAtTheFasterOfTheBackendsGemmAndOpenBlasCalledDirectly) {
  TempDir dir;
  const std::string data = dir / "data", json = dir / "bench.json";
  write_dataset(data);
  const RunResult r = run_vae({"bench", "--device", "cpu", "--batch-sizes", "4,8", "--warmup", "0", "--steps", "1",
                               "--repeats", "1", "--data", data, "--json", json},
                              dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "large square SGEMM: ")) << r.out;
  EXPECT_TRUE(contains(r.out, " called directly: ")) << r.out;
  const nlohmann::json results = nlohmann::json::parse(read_file(json)).at("results");
  ASSERT_EQ(results.size(), 2u);
  for (const nlohmann::json& row : results) {
    const double own = row.at("square_sgemm_gflops"), blas = row.at("square_sgemm_gflops_openblas");
    EXPECT_GT(own, 0.0);
    EXPECT_GT(blas, 0.0);
    EXPECT_EQ(row.at("floor_gflops").get<double>(), std::max(own, blas));
    // floor_ms = GFLOP / (GFLOP/s) in ms; the same doubles, so only the
    // division's rounding can differ.
    const double expected = row.at("step_gemm_gflop").get<double>() / std::max(own, blas) * 1e3;
    EXPECT_NEAR(row.at("floor_ms").get<double>(), expected, 1e-12 * expected) << row.dump();
  }
}

}  // namespace
}  // namespace cuvae
