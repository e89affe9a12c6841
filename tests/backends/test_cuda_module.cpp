// The CUDA backend's module (include/cuvae/backends/cuda/cuda_module.h): a
// CUDA build opens it (here, without a GPU, too: what it needs of the core
// must be exported by the executable, and a missing symbol shows only when it
// is opened), and a command that uses no GPU never loads cuBLAS, whose load
// costs ~0.7 s.
#include <gtest/gtest.h>

#include <string>

#include "cuvae/backends/backend.h"
#include "cuvae/backends/cuda/cuda_module.h"
#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

#if CUVAE_HAVE_CUDA

TEST(CudaModule, OpensAndSaysWhetherThereIsADevice) {
  std::string error;
  const CudaModuleApi* api = open_cuda_module(&error);
  ASSERT_NE(api, nullptr) << error;
  EXPECT_EQ(api->version, kCudaModuleApiVersion);
  std::string why_not;
  if (!api->device_present(&why_not)) {
    EXPECT_EQ(why_not.rfind("no CUDA device", 0), 0u) << why_not;
  }
}

#else

TEST(CudaModule, ABuildWithoutCudaSaysSo) {
  std::string why_not;
  EXPECT_FALSE(cuda_available(&why_not));
  EXPECT_EQ(why_not, "this build has no CUDA backend (nvcc was not found when it was configured)");
}

#endif

// The dynamic loader's list of what it opened (LD_DEBUG=files, on stderr).
TEST(CudaModule, ACommandOnTheCpuNeverLoadsCublas) {
  TempDir dir;
  ScopedEnv debug("LD_DEBUG", "files");
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, std::vector<std::string>{"train", "--help"}}) {
    const RunResult r = run_vae(args, dir.path());
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(contains(r.err, "file=libstdc++")) << "LD_DEBUG=files said nothing: " << describe(r);
    EXPECT_FALSE(contains(r.err, "libcublas")) << describe(r);
    EXPECT_FALSE(contains(r.err, kCudaModuleFile)) << describe(r);
  }
}

}  // namespace
}  // namespace cuvae
