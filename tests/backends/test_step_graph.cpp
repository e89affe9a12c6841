// The CUDA backend's step recording (include/cuvae/backends/cuda/step_graph.h): a step that
// repeats its calls replays; one that changes an argument the graph cannot
// update, or makes fewer calls, is refused with an error instead of running
// something else, and the backend is usable afterwards. Skips without a
// device; on the CPU, run_step just runs the step (checked here too).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend_fixture.h"
#include "cuvae/error.h"

namespace cuvae {
namespace {

// C = A B for 2 x 2 matrices of small integers: exact on every backend.
struct Gemm2 {
  Backend& backend;
  DeviceArray<float> a, b, c, other;
  explicit Gemm2(Backend& be)
      : backend(be),
        a(to_device(be, std::vector<float>{1, 2, 3, 4})),
        b(to_device(be, std::vector<float>{5, 6, 7, 8})),
        c(be, 4),
        other(be, 4) {}
  void into(float* out) { backend.gemm(false, false, 2, 2, 2, 1.0f, a.get(), 2, b.get(), 2, 0.0f, out, 2); }
};

TEST(StepGraph, CpuRunsTheStepAsItIs) {
  std::unique_ptr<Backend> cpu = make_backend("cpu");
  EXPECT_EQ(cpu->make_step_recording(), nullptr);
  int runs = 0;
  cpu->run_step(nullptr, [&] { ++runs; });
  EXPECT_EQ(runs, 1);
}

TEST(StepGraph, ReplaysTheSameStepAndRefusesAnother) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  Gemm2 g(*cuda);
  std::unique_ptr<StepRecording> recording = cuda->make_step_recording();
  ASSERT_NE(recording, nullptr);
  for (int run = 0; run < 4; ++run) {  // eager, captured, replayed, replayed
    const std::vector<float> zero(4, 0.0f);
    cuda->copy_to_device(g.c.get(), zero.data(), sizeof(float) * 4);
    cuda->run_step(recording.get(), [&] { g.into(g.c.get()); });
    EXPECT_EQ(to_host(*cuda, g.c.get(), 4), (std::vector<float>{19, 22, 43, 50})) << "run " << run;
  }
  // Another output buffer: a cuBLAS call the graph cannot update.
  try {
    cuda->run_step(recording.get(), [&] { g.into(g.other.get()); });
    ADD_FAILURE() << "a different GEMM was replayed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("differs from the recorded step"), std::string::npos) << e.what();
  }
  // Fewer calls than recorded.
  try {
    cuda->run_step(recording.get(), [] {});
    ADD_FAILURE() << "an empty step was replayed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the step made 0 calls"), std::string::npos) << e.what();
  }
  // The backend is not left inside a step.
  cuda->synchronize();
  g.into(g.other.get());
  EXPECT_EQ(to_host(*cuda, g.other.get(), 4), (std::vector<float>{19, 22, 43, 50}));
}

}  // namespace
}  // namespace cuvae
