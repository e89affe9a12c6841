// The test binary's main: the same numerics as the vae binary (FTZ and DAZ
// on every computing thread, set before any thread starts), then GoogleTest.
#include <gtest/gtest.h>

#include "cuvae/backends/cpu/denormals.h"

int main(int argc, char** argv) {
  cuvae::enable_flush_denormals_to_zero();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
