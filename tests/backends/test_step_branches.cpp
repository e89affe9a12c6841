// The two-branch step's structure (include/cuvae/backends/step_branches.h), which the
// CUDA backend records while capturing a step and checks on every replay:
// which calls are on the side branch, where it forks and joins, and that a
// replay with another structure, or a step left unjoined, is refused. Plain
// C++: runs everywhere, without a GPU. Then the CUDA backend's side branch
// itself (skips without a device): the same bits as one stream, eager,
// captured and replayed, and a replay with a call moved between branches refused.
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "backend_fixture.h"
#include "cuvae/backends/step_branches.h"
#include "cuvae/error.h"
#include "cuvae/model/philox.h"

namespace cuvae {
namespace {

using Branch = StepBranches::Branch;
using Kind = StepBranches::Kind;

// A two-layer backward as the model makes it: each layer's weight gradient
// on the side branch, the input-gradient chain on the main one, the join
// before Adam.
void two_layer_step(StepBranches& b) {
  b.call("forward");
  b.fork();
  b.call("dW 1");
  b.end_branch();
  b.call("dX 1");
  b.fork();
  b.call("dW 0");
  b.end_branch();
  EXPECT_TRUE(b.join());
  b.call("adam");
}

std::string error_of(const std::function<void()>& work) {
  try {
    work();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StepBranches, RecordsWhichCallsAreOnWhichBranch) {
  StepBranches b;
  b.begin_recording();
  two_layer_step(b);
  b.end_step();
  const std::vector<StepBranches::Entry> expected{
      {Kind::kCall, Branch::kMain, "forward"}, {Kind::kFork, Branch::kMain, ""},
      {Kind::kCall, Branch::kSide, "dW 1"},    {Kind::kEnd, Branch::kMain, ""},
      {Kind::kCall, Branch::kMain, "dX 1"},    {Kind::kFork, Branch::kMain, ""},
      {Kind::kCall, Branch::kSide, "dW 0"},    {Kind::kEnd, Branch::kMain, ""},
      {Kind::kJoin, Branch::kMain, ""},        {Kind::kCall, Branch::kMain, "adam"},
  };
  EXPECT_EQ(b.entries(), expected);
}

TEST(StepBranches, AReplayWithTheSameStructurePasses) {
  StepBranches b;
  b.begin_recording();
  two_layer_step(b);
  b.end_step();
  for (int replay = 0; replay < 3; ++replay) {
    b.begin_checking();
    two_layer_step(b);
    b.end_step();
  }
  EXPECT_EQ(b.entries().size(), 10u);
}

TEST(StepBranches, AReplayWithACallOnTheOtherBranchIsRefused) {
  StepBranches b;
  b.begin_recording();
  two_layer_step(b);
  b.end_step();
  b.begin_checking();
  b.call("forward");
  const std::string e = error_of([&] { b.call("dW 1"); });  // on the main branch this time
  EXPECT_NE(e.find("event 2 is a call (dW 1) on the main branch, the recorded step's a fork"), std::string::npos) << e;
}

TEST(StepBranches, AReplayThatStopsShortIsRefused) {
  StepBranches b;
  b.begin_recording();
  two_layer_step(b);
  b.end_step();
  b.begin_checking();
  b.call("forward");
  const std::string e = error_of([&] { b.end_step(); });
  EXPECT_NE(e.find("the step made 1 events, the recorded step 10"), std::string::npos) << e;
}

TEST(StepBranches, AStepMustEndJoinedAndOnTheMainBranch) {
  StepBranches b;
  b.begin_recording();
  b.fork();
  b.call("dW");
  EXPECT_NE(error_of([&] { b.end_step(); }).find("ended on the side branch"), std::string::npos);
  b.begin_recording();
  b.fork();
  b.call("dW");
  b.end_branch();
  EXPECT_TRUE(b.side_pending());
  EXPECT_NE(error_of([&] { b.end_step(); }).find("not joined"), std::string::npos);
}

TEST(StepBranches, MisplacedForksEndsAndJoinsAreRefused) {
  StepBranches b;
  b.begin_recording();
  EXPECT_NE(error_of([&] { b.end_branch(); }).find("while on the main branch"), std::string::npos);
  EXPECT_FALSE(b.join()) << "nothing pending: no join recorded";
  EXPECT_TRUE(b.entries().empty());
  b.fork();
  EXPECT_EQ(b.branch(), Branch::kSide);
  EXPECT_NE(error_of([&] { b.fork(); }).find("already on the side branch"), std::string::npos);
  EXPECT_NE(error_of([&] { b.join(); }).find("end it first"), std::string::npos);
}

TEST(StepBranches, OutsideARecordedStepNothingIsKept) {
  StepBranches b;  // neither recording nor checking: calls outside a step
  for (int i = 0; i < 100; ++i) two_layer_step(b);
  EXPECT_TRUE(b.entries().empty());
  EXPECT_EQ(b.branch(), Branch::kMain);
  EXPECT_FALSE(b.side_pending());
}


// ---------------------------------------------------------------------------
// The backends' side branch.

TEST(TwoBranchStep, TheCpuRunsEverythingInOrder) {
  std::unique_ptr<Backend> cpu = make_backend("cpu");
  EXPECT_FALSE(cpu->set_two_branch(true));
  EXPECT_TRUE(cpu->set_two_branch(false));
  cpu->begin_side_branch();  // no-ops
  cpu->end_side_branch();
  cpu->join_side_branches();
}

// The arrays' values one after another, on the host.
std::vector<float> on_host(Backend& backend, std::initializer_list<DeviceArray<float>*> arrays) {
  std::vector<float> all;
  for (DeviceArray<float>* a : arrays) {
    const std::vector<float> v = to_host(backend, a->get(), a->size());
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

// A layer's backward in miniature: dW = X^T dA on the side branch, dX = dA W^T
// on the main one, then the main branch overwrites nothing the side reads.
struct MiniBackward {
  static constexpr int kRows = 96, kIn = 40, kOut = 24;
  Backend& backend;
  DeviceArray<float> x, w, da, dw, dx, dbias;
  explicit MiniBackward(Backend& be)
      : backend(be), x(be, kRows * kIn), w(be, kIn * kOut), da(be, kRows * kOut), dw(be, kIn * kOut),
        dx(be, kRows * kIn), dbias(be, kIn) {}
  void set_inputs(uint64_t seed) {
    for (DeviceArray<float>* a : {&x, &w, &da}) {
      std::vector<float> v(a->size());
      for (size_t i = 0; i < v.size(); ++i) v[i] = random_normal(RandomKey{seed, RandomStream::kInit, a->size()}, i);
      backend.copy_to_device(a->get(), v.data(), v.size() * sizeof(float));
    }
  }
  void step(bool dw_on_side) {
    if (dw_on_side) backend.begin_side_branch();
    backend.gemm(true, false, kIn, kOut, kRows, 1.0f, x.get(), kIn, da.get(), kOut, 0.0f, dw.get(), kOut);
    if (dw_on_side) backend.end_side_branch();
    backend.gemm(false, true, kRows, kIn, kOut, 1.0f, da.get(), kOut, w.get(), kOut, 0.0f, dx.get(), kIn);
    backend.activation_backward_bias_grad(dx.get(), x.get(), dbias.get(), kRows, kIn, Activation::kTanh, nullptr);
    backend.join_side_branches();
  }
  std::vector<float> results() { return on_host(backend, {&dw, &dx, &dbias}); }
};

// Five runs of a miniature step (eager, captured, replayed x 3), on one
// stream in `one` and with its weight gradient on the side branch in `two`:
// the same bits every run. prepare(run) sets both steps' inputs for a run.
template <class MiniStep>
void expect_side_branch_gives_one_streams_bits(Backend& one, Backend& two, MiniStep& a, MiniStep& b,
                                               const std::function<void(int run)>& prepare) {
  std::unique_ptr<StepRecording> ra = one.make_step_recording(), rb = two.make_step_recording();
  for (int run = 0; run < 5; ++run) {
    prepare(run);
    one.run_step(ra.get(), [&] { a.step(false); });
    two.run_step(rb.get(), [&] { b.step(true); });
    EXPECT_EQ(b.results(), a.results()) << "run " << run;
  }
}

TEST(TwoBranchStep, SideBranchGivesOneStreamsBitsEagerCapturedAndReplayed) {
  CUVAE_BACKEND_OR_SKIP(two, "cuda");
  std::unique_ptr<Backend> one = make_backend("cuda");
  ASSERT_TRUE(two->set_two_branch(true));
  MiniBackward a(*one), b(*two);
  expect_side_branch_gives_one_streams_bits(*one, *two, a, b, [&](int run) {  // new inputs each time
    a.set_inputs(100 + static_cast<uint64_t>(run));
    b.set_inputs(100 + static_cast<uint64_t>(run));
  });
  // Without a recording too (eager, joined at the end of run_step at the latest).
  two->run_step(nullptr, [&] { b.step(true); });
  EXPECT_EQ(b.results(), a.results());
}

TEST(TwoBranchStep, AReplayWithTheWeightGradientOnTheMainBranchIsRefused) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  ASSERT_TRUE(cuda->set_two_branch(true));
  MiniBackward m(*cuda);
  m.set_inputs(7);
  std::unique_ptr<StepRecording> recording = cuda->make_step_recording();
  for (int run = 0; run < 3; ++run) cuda->run_step(recording.get(), [&] { m.step(true); });
  const std::string e = error_of([&] { cuda->run_step(recording.get(), [&] { m.step(false); }); });
  EXPECT_NE(e.find("step branches"), std::string::npos) << e;
  // The backend is usable afterwards, on its main branch.
  cuda->synchronize();
  cuda->run_step(nullptr, [&] { m.step(true); });
  EXPECT_EQ(m.results().size(), static_cast<size_t>(MiniBackward::kIn * MiniBackward::kOut + MiniBackward::kRows * MiniBackward::kIn + MiniBackward::kIn));
}

// A capture that throws while its side branch is forked (here: inside it,
// as a cuBLASLt refusal there would) is abandoned with the side stream joined:
// the backend then runs an eager two-branch step and a new capture with the
// one-stream bits.
TEST(TwoBranchStep, ACaptureThatThrowsInsideItsSideBranchLeavesTheBackendUsable) {
  CUVAE_BACKEND_OR_SKIP(two, "cuda");
  std::unique_ptr<Backend> one = make_backend("cuda");
  ASSERT_TRUE(two->set_two_branch(true));
  MiniBackward a(*one), b(*two);
  a.set_inputs(11);
  b.set_inputs(11);
  one->run_step(nullptr, [&] { a.step(false); });
  std::unique_ptr<StepRecording> recording = two->make_step_recording();
  two->run_step(recording.get(), [&] { b.step(true); });  // eager warm-up
  const std::string e = error_of([&] {
    two->run_step(recording.get(), [&] {
      two->begin_side_branch();
      two->gemm(true, false, MiniBackward::kIn, MiniBackward::kOut, MiniBackward::kRows, 1.0f, b.x.get(),
                MiniBackward::kIn, b.da.get(), MiniBackward::kOut, 0.0f, b.dw.get(), MiniBackward::kOut);
      throw Error("refused inside the capture");
    });
  });
  EXPECT_EQ(e, "refused inside the capture");
  two->synchronize();
  two->run_step(nullptr, [&] { b.step(true); });
  EXPECT_EQ(b.results(), a.results());
  std::unique_ptr<StepRecording> fresh = two->make_step_recording();
  for (int run = 0; run < 3; ++run) two->run_step(fresh.get(), [&] { b.step(true); });
  EXPECT_EQ(b.results(), a.results());
}

// An eager call that outgrows the bias-gradient scratch buffer between two
// replays of a captured step: the graph's kernels still hold the old buffer,
// which must stay allocated (compute-sanitizer's memcheck sees a read of a
// freed one; the bits show it where the freed memory is reused).
TEST(TwoBranchStep, ReplayAfterAnEagerCallOutgrewTheBiasScratch) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  std::unique_ptr<Backend> one = make_backend("cuda");
  MiniBackward a(*one), b(*cuda);
  std::unique_ptr<StepRecording> recording = cuda->make_step_recording();
  for (int run = 0; run < 2; ++run) cuda->run_step(recording.get(), [&] { b.step(false); });  // eager, captured
  constexpr int kManyRows = 50000;
  DeviceArray<float> dy(*cuda, size_t{kManyRows} * MiniBackward::kIn), y(*cuda, dy.size()),
      dbias(*cuda, MiniBackward::kIn);
  cuda->copy_to_device(y.get(), std::vector<float>(y.size(), 0.5f).data(), y.size() * sizeof(float));
  cuda->copy_to_device(dy.get(), std::vector<float>(dy.size(), 1.0f).data(), dy.size() * sizeof(float));
  cuda->activation_backward_bias_grad(dy.get(), y.get(), dbias.get(), kManyRows, MiniBackward::kIn,
                                      Activation::kTanh, nullptr);
  for (int run = 0; run < 3; ++run) {
    a.set_inputs(300 + static_cast<uint64_t>(run));
    b.set_inputs(300 + static_cast<uint64_t>(run));
    one->run_step(nullptr, [&] { a.step(false); });
    cuda->run_step(recording.get(), [&] { b.step(false); });
    EXPECT_EQ(b.results(), a.results()) << "replay " << run;
  }
}

TEST(TwoBranchStep, AStepEndingInsideItsSideBranchIsAnError) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  ASSERT_TRUE(cuda->set_two_branch(true));
  const std::string e = error_of([&] { cuda->run_step(nullptr, [&] { cuda->begin_side_branch(); }); });
  EXPECT_NE(e.find("inside a side branch"), std::string::npos) << e;
  cuda->synchronize();  // back on the main branch
}

// Inputs written inside the step, by kernels on the main branch, before the
// side branch forks: the side's GEMM must wait for them. Between runs the
// inputs are overwritten outside the step with other values, which a side
// GEMM that did not wait would read. 4096 x 1024 inputs, so that the fills
// still run when an unordered GEMM would start.
struct FilledBackward {
  static constexpr int kRows = 4096, kIn = 1024, kOut = 256;
  Backend& backend;
  DeviceArray<float> x, w, da, dw, dx;
  explicit FilledBackward(Backend& be)
      : backend(be), x(be, size_t{kRows} * kIn), w(be, size_t{kIn} * kOut), da(be, size_t{kRows} * kOut),
        dw(be, size_t{kIn} * kOut), dx(be, size_t{kRows} * kIn) {
    std::vector<float> v(w.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = random_normal(RandomKey{5, RandomStream::kInit, 0}, i);
    backend.copy_to_device(w.get(), v.data(), v.size() * sizeof(float));
  }
  void spoil_inputs(float value) {
    for (DeviceArray<float>* a : {&x, &da}) {
      const std::vector<float> v(a->size(), value);
      backend.copy_to_device(a->get(), v.data(), v.size() * sizeof(float));
    }
    backend.synchronize();
  }
  void step(bool dw_on_side) {
    backend.fill_normal(x.get(), x.size(), 0, RandomKey{21, RandomStream::kEps, 1});
    backend.fill_normal(da.get(), da.size(), 0, RandomKey{22, RandomStream::kEps, 1});
    if (dw_on_side) backend.begin_side_branch();
    backend.gemm(true, false, kIn, kOut, kRows, 1.0f, x.get(), kIn, da.get(), kOut, 0.0f, dw.get(), kOut);
    if (dw_on_side) backend.end_side_branch();
    backend.gemm(false, true, kRows, kIn, kOut, 1.0f, da.get(), kOut, w.get(), kOut, 0.0f, dx.get(), kIn);
    backend.join_side_branches();
  }
  std::vector<float> results() { return on_host(backend, {&dw, &dx}); }
};

TEST(TwoBranchStep, InputsMadeInsideTheStepAreWaitedFor) {
  CUVAE_BACKEND_OR_SKIP(two, "cuda");
  std::unique_ptr<Backend> one = make_backend("cuda");
  ASSERT_TRUE(two->set_two_branch(true));
  FilledBackward a(*one), b(*two);
  expect_side_branch_gives_one_streams_bits(*one, *two, a, b, [&](int run) {
    a.spoil_inputs(static_cast<float>(run + 1));
    b.spoil_inputs(static_cast<float>(-run - 1));
  });
}

}  // namespace
}  // namespace cuvae
