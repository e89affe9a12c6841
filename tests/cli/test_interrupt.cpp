// What a second interrupt says when it lands while a checkpoint is being
// written (src/cli/interrupt.cpp). The signals are raised from inside the
// write, in a child process (a death test), so the timing is exact: CI once
// sent two SIGINTs just after the checkpoint's rename and before the step was
// recorded, and the line said that nothing was saved.
#include <gtest/gtest.h>
#include <signal.h>

#include <stdexcept>

#include "cuvae/cli/interrupt.h"

namespace cuvae {
namespace {

class Interrupt : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

// The child: a run whose checkpoint holds step 3 writes the one of step 4.
void interrupted_while_writing(int signals, bool write_fails) {
  install_interrupt_handlers();
  set_interrupted_run("/runs/a", 3);
  try {
    commit_checkpoint(4, [&] {
      for (int i = 0; i < signals; ++i) ::raise(SIGINT);
      if (write_fails) throw std::runtime_error("disk full");
    });
  } catch (const std::exception&) {
  }
  ::_exit(0);  // not reached when the second interrupt is honoured
}

TEST_F(Interrupt, ASecondInterruptDuringTheWriteNamesTheStepItWrote) {
  EXPECT_EXIT(interrupted_while_writing(2, false), ::testing::ExitedWithCode(128 + SIGINT),
              "\nvae: second interrupt, exiting now; /runs/a/checkpoint.safetensors holds step 4 "
              "\\(vae train --resume /runs/a continues from there\\)\n");
}

TEST_F(Interrupt, AWriteThatFailsLeavesThePreviousStep) {
  EXPECT_EXIT(interrupted_while_writing(2, true), ::testing::ExitedWithCode(128 + SIGINT),
              "/runs/a/checkpoint.safetensors holds step 3 \\(vae train --resume /runs/a continues from there\\)\n");
}

TEST_F(Interrupt, AThirdInterruptDoesNotWaitAndNamesBothSteps) {
  EXPECT_EXIT(interrupted_while_writing(3, false), ::testing::ExitedWithCode(128 + SIGINT),
              "/runs/a/checkpoint.safetensors holds step 3 or 4 \\(a third interrupt cut the writing of step 4 "
              "short; vae train --resume /runs/a continues from the one there\\)\n");
}

TEST_F(Interrupt, OneInterruptOnlyAsksToStop) {
  EXPECT_EXIT(interrupted_while_writing(1, false), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace cuvae
