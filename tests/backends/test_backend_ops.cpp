// One test per backend operation, run on every backend (ggml's
// test-backend-ops pattern) against a reference computed here in double
// precision straight from the formulas, not from vae_math.h, so a mistake in
// the shared math cannot hide in both sides.
//
// Tolerances, with the reasoning:
//  - GEMM: inputs are small integers, so every product and partial sum is an
//    exactly representable float and any summation order gives the exact
//    result (CUTLASS's basic_gemm trick): equality, which checks layouts,
//    transposes and leading dimensions with no tolerance to hide behind.
//  - element-wise ops: a few float operations, each within 0.5 ulp on the
//    CPU and 2 ulp for CUDA's expf/logf: relative 1e-5 (~80 ulp) + tiny abs.
//  - row sums of n float terms: the rounding error of a float sum grows like
//    n * 2^-24 * sum|terms| in the worst case; we allow 2n * 6e-8 * sum|terms|.
//  - binarization: exact (a comparison of exactly computed values).
#include <gtest/gtest.h>
#include <omp.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "backend_fixture.h"
#include "cuvae/error.h"
#include "cuvae/model/philox.h"
#include "cuvae/model/trainer.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {
namespace {

using testing::expect_all_close;

class BackendOps : public ::testing::TestWithParam<std::string> {};

std::vector<float> normals(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * random_normal(RandomKey{seed, RandomStream::kInit, 0}, i);
  return v;
}

TEST_P(BackendOps, GemmAllTransposesExactOnSmallIntegers) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int m = 37, n = 29, k = 53;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // op(A) is m x k, op(B) k x n; stored row-major with padding columns.
      const int a_rows = ta ? k : m, a_cols = ta ? m : k, lda = a_cols + 3;
      const int b_rows = tb ? n : k, b_cols = tb ? k : n, ldb = b_cols + 2;
      const int ldc = n + 1;
      std::vector<float> a(static_cast<size_t>(a_rows) * lda), b(static_cast<size_t>(b_rows) * ldb);
      std::vector<float> c(static_cast<size_t>(m) * ldc);
      for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>(i * 7 % 9) - 4);
      for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>(i * 5 % 7) - 3);
      for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<float>(static_cast<int>(i % 5) - 2);
      auto a_d = to_device(*backend, a), b_d = to_device(*backend, b), c_d = to_device(*backend, c);
      backend->gemm(ta, tb, m, n, k, 2.0f, a_d.get(), lda, b_d.get(), ldb, 1.0f, c_d.get(), ldc);
      const std::vector<float> got = to_host(*backend, c_d.get(), c.size());
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double sum = 0;
          for (int p = 0; p < k; ++p) {
            const double av = ta ? a[static_cast<size_t>(p) * lda + i] : a[static_cast<size_t>(i) * lda + p];
            const double bv = tb ? b[static_cast<size_t>(j) * ldb + p] : b[static_cast<size_t>(p) * ldb + j];
            sum += av * bv;
          }
          const double expected = 2.0 * sum + c[static_cast<size_t>(i) * ldc + j];
          ASSERT_EQ(got[static_cast<size_t>(i) * ldc + j], expected)
              << "ta=" << ta << " tb=" << tb << " at " << i << "," << j;
        }
      }
    }
  }
}

TEST_P(BackendOps, BiasActivationForwardAndBackward) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  // Not multiples of the CUDA block shapes; the second has 9 row chunks and
  // makes the CUDA backend grow its scratch buffer.
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{203, 77}, {1030, 200}})
  for (Activation act : {Activation::kRelu, Activation::kIdentity}) {
    const bool relu = act == Activation::kRelu;
    const std::vector<float> y0 = normals(static_cast<size_t>(rows) * cols, 1), bias = normals(cols, 2);
    auto y = to_device(*backend, y0);
    auto b = to_device(*backend, bias);
    backend->bias_activation_forward(y.get(), b.get(), rows, cols, act);
    const std::vector<float> y1 = to_host(*backend, y.get(), y0.size());
    std::vector<double> expected(y0.size());
    for (size_t i = 0; i < y0.size(); ++i) {
      const double a = static_cast<double>(y0[i]) + bias[i % cols];
      expected[i] = relu ? std::max(a, 0.0) : a;
    }
    // One float addition: within half an ulp (2^-24 relative) of the double sum.
    expect_all_close(y1, expected, 6e-8, 1e-30, relu ? "bias+relu forward" : "bias forward");

    const std::vector<float> dy0 = normals(y0.size(), 3);
    auto dy = to_device(*backend, dy0);
    DeviceArray<float> dbias(*backend, cols);
    backend->activation_backward_bias_grad(dy.get(), y.get(), dbias.get(), rows, cols, act, nullptr);
    std::vector<double> expected_dy(y0.size()), expected_db(cols, 0.0), abs_sum(cols, 0.0);
    for (size_t i = 0; i < y0.size(); ++i) {
      expected_dy[i] = relu ? (y1[i] > 0 ? dy0[i] : 0.0) : dy0[i];
      expected_db[i % cols] += expected_dy[i];
      abs_sum[i % cols] += std::fabs(expected_dy[i]);
    }
    expect_all_close(to_host(*backend, dy.get(), y0.size()), expected_dy, 0, 0,
                     relu ? "relu backward dy" : "identity backward dy");
    const std::vector<float> db = to_host(*backend, dbias.get(), cols);
    double worst = 0;
    for (int c = 0; c < cols; ++c) {
      const double tolerance = 2.0 * rows * 6e-8 * abs_sum[c] + 1e-30;
      worst = std::max(worst, std::fabs(db[c] - expected_db[c]) / tolerance);
    }
    EXPECT_LE(worst, 1.0) << "bias gradient";
    std::printf("  %-40s worst error %.3f of tolerance\n", "bias gradient (column sums)", worst);
  }
}

// Every backend knows its memory, so a configuration that cannot fit is
// refused with one line before anything is allocated (the CUDA backend
// reported 0, unknown, and such a run failed mid-allocation).
TEST_P(BackendOps, MemoryIsKnownAndTooLargeModelsAreRefused) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  EXPECT_GT(backend->memory_bytes(), size_t{0});
  Architecture huge;
  huge.hidden = {Architecture::kMaxWidth, Architecture::kMaxWidth};  // 8.7e9 parameters: 139 GB with Adam's
  try {
    check_model_fits(*backend, huge, 20000, 1);  // and 40 GB of activations
    ADD_FAILURE() << "a 180 GB configuration was not refused on " << backend->name();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GiB"), std::string::npos) << e.what();
  }
  Architecture seed;  // the seed's model fits everywhere
  EXPECT_NO_THROW(check_model_fits(*backend, seed, 200, 1));
}

// The refusal names what dominates: "--hidden 65536,65536 --batch-size 20"
// said "--samples 1 with --batch-size 20 needs 129.58 GiB", blaming the two
// flags that cost least. Parameters first where they dominate, activations
// (images x samples) where they do; the command's own flag names where given.
TEST_P(BackendOps, TheMemoryRefusalNamesWhatDominates) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  auto refusal = [&](const Architecture& arch, int images, int samples, const MemoryCauses& causes) {
    try {
      check_model_fits(*backend, arch, images, samples, causes);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "not refused on " << backend->name();
    return std::string();
  };
  Architecture huge;  // 2.1e10 parameters: 344 GB with their gradients and Adam's moments
  huge.hidden = {Architecture::kMaxWidth, Architecture::kMaxWidth};
  huge.latent_dim = Architecture::kMaxWidth;
  const std::string by_parameters = refusal(huge, 20, 1, {});
  EXPECT_EQ(by_parameters.rfind("--hidden 65536,65536 and --latent-dim 65536 needs ", 0), 0u) << by_parameters;
  EXPECT_NE(by_parameters.find("parameters, their gradients and Adam's moments"), std::string::npos) << by_parameters;
  EXPECT_NE(by_parameters.find("--batch-size 20 and --samples 1)"), std::string::npos) << by_parameters;
  const Architecture seed;  // 100000 x 100000 decoder rows: 40 TB of activations
  const std::string by_activations = refusal(seed, 100000, 100000, {});
  EXPECT_EQ(by_activations.rfind("--batch-size 100000 with --samples 100000 needs ", 0), 0u) << by_activations;
  EXPECT_NE(by_activations.find("for the activations of 10000000000 decoder rows"), std::string::npos)
      << by_activations;
  EXPECT_NE(by_activations.find("with the parameters of --hidden 200,200 and --latent-dim 50)"), std::string::npos)
      << by_activations;
  const std::string named = refusal(seed, 100000, 100000, {"the model m.safetensors", "chunks of 1 test image", "--k 100000"});
  EXPECT_EQ(named.rfind("chunks of 1 test image with --k 100000 needs ", 0), 0u) << named;
  EXPECT_EQ(named.find("--batch-size"), std::string::npos) << named;
}

// The bias gradient over more rows than the CUDA kernel's grid has in y
// (65535 chunks of 32 rows: a decoder of batch 500 and K 5000 has more), and
// at 25000 x 784 (a grid-stride loop's second pass). Small integers keep every
// column sum exact in float (below 2^24), so each backend must give the
// exact sums.
TEST_P(BackendOps, BiasGradientBeyondOneGridOfRowChunks) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{65535 * 32 + 100, 3}, {25000, 784}}) {
    const size_t count = static_cast<size_t>(rows) * cols;
    std::vector<float> dy0(count), y0(count);
    for (size_t i = 0; i < count; ++i) {
      dy0[i] = static_cast<float>(static_cast<int>(i % 5) - 2);
      y0[i] = (i / 3) % 4 == 0 ? 0.0f : 1.0f;  // ReLU's output: 0 blocks the gradient
    }
    auto dy = to_device(*backend, dy0);
    auto y = to_device(*backend, y0);
    DeviceArray<float> dbias(*backend, cols);
    backend->activation_backward_bias_grad(dy.get(), y.get(), dbias.get(), rows, cols, Activation::kRelu, nullptr);
    std::vector<double> expected(cols, 0.0);
    for (size_t i = 0; i < count; ++i) expected[i % cols] += y0[i] > 0 ? dy0[i] : 0.0;
    expect_all_close(to_host(*backend, dbias.get(), cols), expected, 0, 0,
                     "bias gradient, " + std::to_string(rows) + " x " + std::to_string(cols));
  }
}

// The bias (with tanh, the paper's activation) and the noise past one grid
// of the CUDA kernels (65535 blocks of 256 threads), where their grid-stride
// loops take a second pass: the bias at 25000 x 784 (a decoder's rows at
// evaluation's K = 5000, 5 images), the noise at 90000 x 784 (a thread
// draws 4 normals, so one grid covers 67M). The bias: one float addition,
// then tanh (the tolerance of the element-wise ops). The noise: every 97th
// element and the last 1000 against the stream (the tolerance of
// FillNormalMatchesTheStreamAtAnyOffset).
TEST_P(BackendOps, BiasAndNoisePastOneGrid) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 25000, cols = 784;
  const size_t count = static_cast<size_t>(rows) * cols;
  std::vector<float> y0(count);
  for (size_t i = 0; i < count; ++i) y0[i] = static_cast<float>(static_cast<int>(i % 11) - 5) * 0.25f;
  const std::vector<float> bias = normals(cols, 31);
  auto y = to_device(*backend, y0);
  auto b = to_device(*backend, bias);
  backend->bias_activation_forward(y.get(), b.get(), rows, cols, Activation::kTanh);
  std::vector<double> expected(count);
  for (size_t i = 0; i < count; ++i) expected[i] = std::tanh(static_cast<double>(y0[i] + bias[i % cols]));
  expect_all_close(to_host(*backend, y.get(), count), expected, 1e-5, 1e-7, "bias + tanh, 25000 x 784");

  const RandomKey key{17, RandomStream::kEvalEps, 2};
  const size_t normals_count = size_t{90000} * cols;
  DeviceArray<float> noise(*backend, normals_count);
  backend->fill_normal(noise.get(), normals_count, 0, key);
  const std::vector<float> got = to_host(*backend, noise.get(), normals_count);
  std::vector<float> sampled;
  std::vector<double> wanted;
  for (size_t i = 0; i < normals_count; i += i + 1000 < normals_count ? 97 : 1) {
    sampled.push_back(got[i]);
    wanted.push_back(random_normal(key, i));
  }
  expect_all_close(sampled, wanted, 1e-5, 2e-6, "fill_normal, 90000 x 784");
}

// Whole dense layers (dense_forward, dense_backward_input), unfused and, on
// CUDA, with cuBLASLt epilogues. Small integers with half-integer biases make
// every product, sum, bias and ReLU exact in float and no pre-activation 0
// (where a ReLU mask convention could differ), so the test asks for
// equality: it checks the column-major mapping, the bit mask's leading
// dimension and the bias gradient's layout with nothing to hide behind. In
// the first three cases the weights sit one float past an aligned address,
// as a layer's weights inside the flat parameter buffer may (cuBLASLt may
// or may not have an FP32 epilogue algorithm there: exact either way); the
// biases 16-byte aligned, and in the third case one float past, which the
// CUDA backend must leave unfused. In the last case everything is 16-byte
// aligned: there the epilogues must fuse.
TEST_P(BackendOps, DenseLayersExactOnSmallIntegers) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  auto small_ints = [](size_t n, int mod, int shift) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<int>((i * 7 + i / 5) % mod) - shift);
    return v;
  };
  for (const bool epilogues : {false, true}) {
    if (!backend->set_gemm_epilogues(epilogues)) continue;  // the CPU has no cuBLASLt
    const DenseFusionCounts before = backend->dense_fusion_counts();
    DenseFusionCounts before_aligned;
    // rows x in -> hidden (ReLU) -> out (identity); hidden 77 and 200 need
    // a mask leading dimension rounded up to 128 and 256 bits.
    for (const auto& [rows, in, hidden, out, bias_shift, weight_shift] : std::vector<std::array<int, 6>>{
             {203, 53, 77, 29, 0, 1}, {1030, 64, 200, 130, 0, 1}, {203, 53, 77, 29, 1, 1}, {1030, 64, 200, 128, 0, 0}}) {
      if (weight_shift == 0) before_aligned = backend->dense_fusion_counts();
      const std::vector<float> x0 = small_ints(static_cast<size_t>(rows) * in, 7, 3);
      auto aligned = [&](size_t offset, int shift) { return (offset + 3) / 4 * 4 + static_cast<size_t>(shift); };
      const size_t w1 = static_cast<size_t>(weight_shift), b1 = aligned(w1 + static_cast<size_t>(in) * hidden, bias_shift),
                   w2 = aligned(b1 + hidden, weight_shift), b2 = aligned(w2 + static_cast<size_t>(hidden) * out, bias_shift);
      std::vector<float> params = small_ints(b2 + out, 5, 2);
      for (size_t c = 0; c < static_cast<size_t>(hidden); ++c) params[b1 + c] += 0.5f;
      for (size_t c = 0; c < static_cast<size_t>(out); ++c) params[b2 + c] += 0.5f;
      auto x = to_device(*backend, x0);
      auto p = to_device(*backend, params);
      DeviceArray<float> h(*backend, static_cast<size_t>(rows) * hidden), y(*backend, static_cast<size_t>(rows) * out);
      DeviceArray<unsigned char> mask(*backend, backend->activation_mask_bytes(rows, hidden));
      backend->dense_forward(x.get(), p.get() + w1, p.get() + b1, rows, in, hidden, Activation::kRelu, h.get(), mask.get());
      backend->dense_forward(h.get(), p.get() + w2, p.get() + b2, rows, hidden, out, Activation::kIdentity, y.get(), nullptr);

      std::vector<double> h_ref(static_cast<size_t>(rows) * hidden), y_ref(static_cast<size_t>(rows) * out);
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < hidden; ++c) {
          double a = params[b1 + c];
          for (int i = 0; i < in; ++i) a += static_cast<double>(x0[static_cast<size_t>(r) * in + i]) * params[w1 + static_cast<size_t>(i) * hidden + c];
          h_ref[static_cast<size_t>(r) * hidden + c] = std::max(a, 0.0);
        }
        for (int c = 0; c < out; ++c) {
          double a = params[b2 + c];
          for (int i = 0; i < hidden; ++i) a += h_ref[static_cast<size_t>(r) * hidden + i] * params[w2 + static_cast<size_t>(i) * out + c];
          y_ref[static_cast<size_t>(r) * out + c] = a;
        }
      }
      const std::string tag = std::string(epilogues ? " (epilogues)" : "") + " " + std::to_string(rows) + "x" +
                              std::to_string(hidden) + (bias_shift != 0 ? ", bias unaligned" : "") +
                              (weight_shift != 0 ? ", weights 4-byte aligned" : ", all 16-byte aligned");
      expect_all_close(to_host(*backend, h.get(), h_ref.size()), h_ref, 0, 0, "dense forward, bias+relu" + tag);
      expect_all_close(to_host(*backend, y.get(), y_ref.size()), y_ref, 0, 0, "dense forward, bias" + tag);

      // Back through the second layer's input: dh = (dy W2^T) * relu'(h),
      // db1 = column sums of dh, over a db1 buffer holding garbage.
      const std::vector<float> dy0 = small_ints(y_ref.size(), 5, 2);
      auto dy = to_device(*backend, dy0);
      DeviceArray<float> dh(*backend, h_ref.size());
      auto db1 = to_device(*backend, std::vector<float>(hidden, 1e6f));
      backend->dense_backward_input(dy.get(), p.get() + w2, rows, hidden, out, h.get(), mask.get(), Activation::kRelu, dh.get(), db1.get());
      std::vector<double> dh_ref(h_ref.size()), db1_ref(hidden, 0.0);
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < hidden; ++c) {
          double g = 0;
          for (int j = 0; j < out; ++j) g += static_cast<double>(dy0[static_cast<size_t>(r) * out + j]) * params[w2 + static_cast<size_t>(c) * out + j];
          g = h_ref[static_cast<size_t>(r) * hidden + c] > 0 ? g : 0.0;
          dh_ref[static_cast<size_t>(r) * hidden + c] = g;
          db1_ref[c] += g;
        }
      }
      expect_all_close(to_host(*backend, dh.get(), dh_ref.size()), dh_ref, 0, 0, "dense backward input, relu'" + tag);
      expect_all_close(to_host(*backend, db1.get(), db1_ref.size()), db1_ref, 0, 0, "dense backward input, bias grad" + tag);
    }
    const DenseFusionCounts after = backend->dense_fusion_counts();
    std::printf("  %s: %ld dense-layer calls fused, %ld not\n", epilogues ? "epilogues on" : "epilogues off",
                after.fused - before.fused, after.unfused - before.unfused);
    if (epilogues) {
      // 12 calls: the 3 with an unaligned bias unfused by our rule; those
      // with 4-byte-aligned weights fused where cuBLASLt has an FP32
      // algorithm (exact above either way: a capability, not an error); the
      // 3 of the all-aligned case fused.
      EXPECT_EQ(after.fused + after.unfused - before.fused - before.unfused, 12);
      EXPECT_GE(after.unfused - before.unfused, 3) << "an unaligned bias was given to cuBLASLt";
      EXPECT_EQ(after.fused - before_aligned.fused, 3) << "cuBLASLt left an all-aligned layer unfused";
    } else {
      EXPECT_EQ(after.fused, before.fused) << "fused with the epilogues off";
    }
  }
}

TEST_P(BackendOps, UploadAndBinarizeIsExactAndOffsetAware) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 13, cols = 31;  // rows * cols not a multiple of 4
  std::vector<uint8_t> pixels(static_cast<size_t>(rows) * cols);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 37 % 256);
  const RandomKey key{3, RandomStream::kBinarize, 17};
  DeviceArray<float> x(*backend, pixels.size());
  for (uint64_t first_row : {0ull, 5ull}) {
    backend->upload_and_binarize(pixels.data(), rows, cols, first_row, key, x.get());
    const std::vector<float> got = to_host(*backend, x.get(), pixels.size());
    for (size_t i = 0; i < pixels.size(); ++i) {
      const double u = random_uniform(key, first_row * cols + i);
      ASSERT_EQ(got[i], pixels[i] / 255.0 > u ? 1.0f : 0.0f) << "element " << i;
    }
  }
}

TEST_P(BackendOps, BinarizeRowsGathersTheOrderedImagesExactly) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int images = 9, rows = 5, cols = 31;  // rows * cols not a multiple of 4
  std::vector<uint8_t> pixels(static_cast<size_t>(images) * cols);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 53 % 256);
  const std::vector<uint32_t> order = {8, 2, 7, 0, 5, 1, 3, 6, 4};
  const DeviceArray<uint8_t> on_backend = to_device(*backend, pixels);
  const DeviceArray<uint32_t> order_on_backend = to_device(*backend, order);
  const RandomKey key{4, RandomStream::kBinarize, 9};
  DeviceArray<float> x(*backend, static_cast<size_t>(rows) * cols);
  for (const bool ordered : {false, true}) {
    const uint64_t first_position = 3;
    backend->binarize_rows(on_backend.get(), ordered ? order_on_backend.get() : nullptr, first_position,
                           rows, cols, key, x.get());
    const std::vector<float> got = to_host(*backend, x.get(), x.size());
    for (int r = 0; r < rows; ++r) {
      const uint32_t image = ordered ? order[first_position + r] : static_cast<uint32_t>(first_position + r);
      for (int j = 0; j < cols; ++j) {
        const size_t i = static_cast<size_t>(r) * cols + j;
        const double u = random_uniform(key, i);  // batch-relative, as upload_and_binarize's
        ASSERT_EQ(got[i], pixels[static_cast<size_t>(image) * cols + j] / 255.0 > u ? 1.0f : 0.0f)
            << (ordered ? "ordered" : "in order") << ", element " << i;
      }
    }
  }
}

TEST_P(BackendOps, FillNormalMatchesTheStreamAtAnyOffset) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const RandomKey key{9, RandomStream::kEps, 4};
  // The last case spans many of the CPU's 256-block chunks, on its threads,
  // with a partial block at either end and a partial last chunk.
  for (const auto& [first, n] : std::vector<std::pair<uint64_t, size_t>>{{0, 1027}, {3, 1027}, {1001, 1027}, {5, 70003}}) {
    DeviceArray<float> out(*backend, n);
    backend->fill_normal(out.get(), n, first, key);
    std::vector<double> expected(n);
    for (size_t i = 0; i < n; ++i) {
      // Box-Muller in double from the same bits.
      const Philox4 block = random_block(key, (first + i) / 4);
      const int lane = static_cast<int>((first + i) % 4), pair = lane / 2;
      const double u1 = ((block.v[2 * pair] >> 8) + 1.0) / 16777216.0;
      const double u2 = (block.v[2 * pair + 1] >> 8) / 16777216.0;
      const double r = std::sqrt(-2 * std::log(u1)), theta = 2 * M_PI * u2;
      expected[i] = lane % 2 == 0 ? r * std::cos(theta) : r * std::sin(theta);
    }
    expect_all_close(to_host(*backend, out.get(), n), expected, 1e-5, 2e-6,
                     "fill_normal offset " + std::to_string(first));
  }
}

TEST_P(BackendOps, ReparameterizeKlForwardAndBackward) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 37, latent = 45;  // latent > 32: lanes loop
  std::vector<float> enc = normals(static_cast<size_t>(rows) * 2 * latent, 5);
  enc[latent] = -30.0f;  // extreme log_std values
  enc[latent + 1] = 30.0f;
  const std::vector<float> eps = normals(static_cast<size_t>(rows) * latent, 6);
  const std::vector<float> dz = normals(eps.size(), 7);
  auto enc_d = to_device(*backend, enc), eps_d = to_device(*backend, eps), dz_d = to_device(*backend, dz);
  DeviceArray<float> z(*backend, eps.size()), kl(*backend, rows), ratio(*backend, rows);
  DeviceArray<float> d_enc(*backend, enc.size());
  backend->reparameterize_kl_forward(enc_d.get(), eps_d.get(), rows, 1, latent, z.get(), kl.get(), ratio.get());
  const float scale = 0.125f;
  backend->reparameterize_kl_backward(dz_d.get(), enc_d.get(), eps_d.get(), rows, 1, latent, scale, d_enc.get());

  std::vector<double> ez(eps.size()), ekl(rows, 0), eratio(rows, 0), ed(enc.size());
  std::vector<double> kl_abs(rows, 0), ratio_abs(rows, 0);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < latent; ++j) {
      const size_t mi = static_cast<size_t>(r) * 2 * latent + j, si = mi + latent;
      const size_t zi = static_cast<size_t>(r) * latent + j;
      const double m = enc[mi], s = enc[si], e = eps[zi];
      ez[zi] = m + std::exp(s) * e;
      const double kl_term = 0.5 * (std::exp(2 * s) + m * m - 1 - 2 * s);
      const double ratio_term = 0.5 * (e * e - ez[zi] * ez[zi]) + s;
      ekl[r] += kl_term;
      kl_abs[r] += std::fabs(kl_term);
      eratio[r] += ratio_term;
      ratio_abs[r] += std::fabs(ratio_term);
      ed[mi] = dz[zi] + scale * m;
      ed[si] = dz[zi] * std::exp(s) * e + scale * (std::exp(2 * s) - 1);
    }
  }
  expect_all_close(to_host(*backend, z.get(), eps.size()), ez, 1e-5, 1e-6, "reparameterize z");
  expect_all_close(to_host(*backend, d_enc.get(), enc.size()), ed, 1e-5, 1e-6, "d mean, d log_std");
  const std::vector<float> got_kl = to_host(*backend, kl.get(), rows);
  const std::vector<float> got_ratio = to_host(*backend, ratio.get(), rows);
  for (int r = 0; r < rows; ++r) {
    EXPECT_NEAR(got_kl[r], ekl[r], 2.0 * latent * 6e-8 * kl_abs[r] + 1e-5 * kl_abs[r]) << "row " << r;
    EXPECT_NEAR(got_ratio[r], eratio[r], 2.0 * latent * 6e-8 * ratio_abs[r] + 1e-5 * ratio_abs[r]) << "row " << r;
  }
}

TEST_P(BackendOps, BernoulliLogProbAndGradWithExtremeLogits) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 9, cols = 784;
  std::vector<float> logits = normals(static_cast<size_t>(rows) * cols, 8, 4.0f);
  std::vector<float> x(logits.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i * 2654435761u) % 3 == 0 ? 1.0f : 0.0f;
  const float extremes[] = {100.0f, -100.0f, 50.0f, -50.0f};
  for (int i = 0; i < 4; ++i) logits[static_cast<size_t>(i) * 7] = extremes[i];
  auto x_d = to_device(*backend, x), f_d = to_device(*backend, logits);
  DeviceArray<float> dlogits(*backend, logits.size()), rowsum(*backend, rows);
  const float scale = 0.25f;
  backend->bernoulli_logprob_and_grad(x_d.get(), f_d.get(), rows, cols, 1, scale, dlogits.get(), rowsum.get());
  std::vector<double> ed(logits.size()), erow(rows, 0), erow_abs(rows, 0);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double f = logits[i];
    const double sig = 1.0 / (1.0 + std::exp(-f));
    const double logp = x[i] * f - (std::max(f, 0.0) + std::log1p(std::exp(-std::fabs(f))));
    ed[i] = scale * (sig - x[i]);
    erow[i / cols] += logp;
    erow_abs[i / cols] += std::fabs(logp);
  }
  expect_all_close(to_host(*backend, dlogits.get(), logits.size()), ed, 1e-5, 1e-7, "dlogits");
  const std::vector<float> got = to_host(*backend, rowsum.get(), rows);
  for (int r = 0; r < rows; ++r) {
    ASSERT_TRUE(std::isfinite(got[r]));
    EXPECT_NEAR(got[r], erow[r], 2.0 * cols * 6e-8 * erow_abs[r]) << "row " << r;
    // The CPU sums the row in double (cpu_backend.cpp's bernoulli_row): what
    // is left is the float result's own rounding (half an ulp, 3e-8
    // relative) and the terms' roundings, random in sign (about 6e-8 |sum| /
    // sqrt(784)): within 1.5 x 6e-8 |sum|. Summed in float the error grew
    // with the loop's vectorization, to ~16 x 6e-8 |sum| unvectorized.
    if (backend->name() == "cpu") {
      EXPECT_NEAR(got[r], erow[r], 1.5 * 6e-8 * erow_abs[r]) << "row " << r << ": the CPU's row sum in double";
    }
  }
  // Without a gradient buffer the sums are the same.
  DeviceArray<float> rowsum2(*backend, rows);
  backend->bernoulli_logprob_and_grad(x_d.get(), f_d.get(), rows, cols, 1, scale, nullptr, rowsum2.get());
  EXPECT_EQ(to_host(*backend, rowsum2.get(), rows), got);
}

TEST_P(BackendOps, AccumulateElboAddsInDouble) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 1000;
  const std::vector<float> logp = normals(rows, 10, 100.0f), kl = normals(rows, 11, 10.0f);
  auto logp_d = to_device(*backend, logp), kl_d = to_device(*backend, kl);
  auto acc = to_device(*backend, std::vector<double>{5.0});
  backend->accumulate_elbo(logp_d.get(), kl_d.get(), rows, 1, acc.get());
  backend->accumulate_elbo(logp_d.get(), kl_d.get(), rows, 1, acc.get());
  double expected = 5.0;
  for (int pass = 0; pass < 2; ++pass)
    for (int r = 0; r < rows; ++r) expected += static_cast<double>(logp[r]) - kl[r];
  EXPECT_NEAR(to_host(*backend, acc.get(), 1)[0], expected, 1e-9 * std::fabs(expected) + 1e-9);
}

// K samples per image: z from image b's mean and log_std, the KL once per
// image, the log-ratio per sample, the Bernoulli rows sharing their image's
// x, and the ELBO accumulator averaging each image's samples.
TEST_P(BackendOps, SamplesShareTheirImage) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int images = 5, k = 3, latent = 7, cols = 11, rows = images * k;
  const std::vector<float> enc = normals(static_cast<size_t>(images) * 2 * latent, 21, 0.5f);
  const std::vector<float> eps = normals(static_cast<size_t>(rows) * latent, 22);
  auto enc_d = to_device(*backend, enc), eps_d = to_device(*backend, eps);
  DeviceArray<float> z(*backend, eps.size()), kl(*backend, images), ratio(*backend, rows);
  backend->reparameterize_kl_forward(enc_d.get(), eps_d.get(), images, k, latent, z.get(), kl.get(), ratio.get());
  std::vector<double> ez(eps.size()), ekl(images, 0.0), eratio(rows, 0.0);
  for (int r = 0; r < rows; ++r) {
    const int b = r / k;
    for (int j = 0; j < latent; ++j) {
      const double m = enc[b * 2 * latent + j], s = enc[b * 2 * latent + latent + j], e = eps[r * latent + j];
      const double zj = m + std::exp(s) * e;
      ez[r * latent + j] = zj;
      eratio[r] += 0.5 * (e * e - zj * zj) + s;
      if (r % k == 0) ekl[b] += 0.5 * (std::exp(2 * s) + m * m - 1 - 2 * s);
    }
  }
  expect_all_close(to_host(*backend, z.get(), eps.size()), ez, 1e-6, 1e-6, "K-sample z");
  expect_all_close(to_host(*backend, kl.get(), images), ekl, 1e-5, 1e-5, "K-sample KL per image");
  expect_all_close(to_host(*backend, ratio.get(), rows), eratio, 1e-5, 1e-5, "K-sample log-ratio");

  std::vector<float> x(static_cast<size_t>(images) * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 3 == 0 ? 1.0f : 0.0f;
  const std::vector<float> logits = normals(static_cast<size_t>(rows) * cols, 23, 3.0f);
  auto x_d = to_device(*backend, x), f_d = to_device(*backend, logits);
  DeviceArray<float> logp(*backend, rows), dlogits(*backend, logits.size());
  backend->bernoulli_logprob_and_grad(x_d.get(), f_d.get(), rows, cols, k, 0.5f, dlogits.get(), logp.get());
  std::vector<double> elogp(rows, 0.0), ed(logits.size());
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const double xv = x[(r / k) * cols + c], f = logits[r * cols + c];
      elogp[r] += xv * f - std::log1p(std::exp(-std::fabs(f))) - std::max(f, 0.0);
      ed[r * cols + c] = 0.5 * (1.0 / (1.0 + std::exp(-f)) - xv);
    }
  }
  expect_all_close(to_host(*backend, logp.get(), rows), elogp, 1e-5, 1e-5, "K-sample Bernoulli log p");
  expect_all_close(to_host(*backend, dlogits.get(), logits.size()), ed, 1e-5, 1e-6, "K-sample Bernoulli gradient");

  auto acc = to_device(*backend, std::vector<double>{0.0});
  backend->accumulate_elbo(logp.get(), kl.get(), images, k, acc.get());
  const std::vector<float> got_logp = to_host(*backend, logp.get(), rows), got_kl = to_host(*backend, kl.get(), images);
  double expected = 0.0;
  for (int b = 0; b < images; ++b) {
    double mean = 0.0;
    for (int s = 0; s < k; ++s) mean += got_logp[b * k + s];
    expected += mean / k - got_kl[b];
  }
  EXPECT_NEAR(to_host(*backend, acc.get(), 1)[0], expected, 1e-9 * std::fabs(expected));
}

// The K-sample bound and normalized weights against long double, for K = 1,
// 5 and 5000 with log-weights spread over hundreds of nats: finite, the
// weights summing to 1.
TEST_P(BackendOps, ImportanceWeightsAreStableOverHundredsOfNats) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  for (int k : {1, 5, 5000}) {
    const int images = 3;
    std::vector<float> logp = normals(static_cast<size_t>(images) * k, 31, 150.0f);
    const std::vector<float> ratio = normals(logp.size(), 32, 20.0f);
    for (float& v : logp) v -= 400.0f;  // log w around -400, spread over ~900 nats
    auto logp_d = to_device(*backend, logp), ratio_d = to_device(*backend, ratio);
    DeviceArray<float> weights(*backend, logp.size()), bound(*backend, images);
    backend->importance_weights(logp_d.get(), ratio_d.get(), images, k, weights.get(), bound.get());
    std::vector<double> ebound(images), ew(logp.size());
    for (int b = 0; b < images; ++b) {
      long double max = -INFINITY, sum = 0;
      for (int s = 0; s < k; ++s) max = std::max<long double>(max, (long double)logp[b * k + s] + ratio[b * k + s]);
      for (int s = 0; s < k; ++s) sum += std::exp((long double)logp[b * k + s] + ratio[b * k + s] - max);
      ebound[b] = static_cast<double>(max + std::log(sum / k));
      for (int s = 0; s < k; ++s) {
        ew[b * k + s] = static_cast<double>(std::exp((long double)logp[b * k + s] + ratio[b * k + s] - max) / sum);
      }
    }
    // The bound: float log-weights' rounding (~3e-5 at 400 nats) dominates.
    expect_all_close(to_host(*backend, bound.get(), images), ebound, 1e-6, 1e-4, "bound K=" + std::to_string(k));
    const std::vector<float> w = to_host(*backend, weights.get(), logp.size());
    // Weights: log w = log p + log ratio is added in float, off by up to half
    // an ulp of ~1000 nats (3e-5), which exp turns into that relative error;
    // samples more than 87 nats below the max clamp at ~1e-38 / sum.
    expect_all_close(w, ew, 1e-4, 1e-30, "weights K=" + std::to_string(k));
    for (int b = 0; b < images; ++b) {
      double total = 0.0;
      for (int s = 0; s < k; ++s) total += w[b * k + s];
      EXPECT_NEAR(total, 1.0, 1e-5) << "K=" << k << " image " << b;
    }
  }
}

// The grouped objectives' weights and bound (miwae, ciwae, piwae's encoder:
// importance_weights over the B M groups, then grouped_objective_weights)
// against the formula in long double, and each weight against the central
// difference of the image's bound in its sample's log p: the weights are the
// bound's gradient. Log-weights around -5 +- 3 nats, so float's rounding of
// log p + h (~5e-7) is small next to h = 1e-2: the difference quotient is
// good to ~1e-4 (rounding ~5e-7 / h, truncation h^2 / 6 times the third
// derivative, ~2e-5).
TEST_P(BackendOps, GroupedObjectiveWeightsMatchTheFormulaAndFiniteDifferences) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  struct Case { int groups, samples; float beta; };
  double worst_formula = 0.0, worst_fd = 0.0;  // as fractions of the tolerances
  for (const Case& c : {Case{1, 1, 0.3f}, Case{1, 5, 0.05f}, Case{2, 3, 0.0f}, Case{4, 8, 0.0f},
                        Case{3, 4, 0.5f}, Case{1, 6, 1.0f}}) {
    const std::string what = std::to_string(c.groups) + "x" + std::to_string(c.samples) + " beta " +
                             std::to_string(c.beta);
    SCOPED_TRACE(what);
    const int images = 3, per_image = c.groups * c.samples, rows = images * per_image;
    std::vector<float> logp = normals(static_cast<size_t>(rows), 51, 3.0f);
    const std::vector<float> ratio = normals(logp.size(), 52, 1.0f);
    for (float& v : logp) v -= 5.0f;
    auto run = [&](const std::vector<float>& lp, std::vector<float>* weights_out) {
      auto lp_d = to_device(*backend, lp), ratio_d = to_device(*backend, ratio);
      DeviceArray<float> weights(*backend, lp.size()), group_bound(*backend, static_cast<size_t>(images) * c.groups);
      DeviceArray<float> bound(*backend, images);
      backend->importance_weights(lp_d.get(), ratio_d.get(), images * c.groups, c.samples, weights.get(),
                                  group_bound.get());
      backend->grouped_objective_weights(lp_d.get(), ratio_d.get(), group_bound.get(), images, c.groups,
                                         c.samples, c.beta, weights.get(), bound.get());
      if (weights_out != nullptr) *weights_out = to_host(*backend, weights.get(), lp.size());
      return to_host(*backend, bound.get(), images);
    };
    std::vector<float> w;
    const std::vector<float> bound = run(logp, &w);
    std::vector<double> ebound(images, 0.0), ew(logp.size());
    for (int b = 0; b < images; ++b) {
      for (int m = 0; m < c.groups; ++m) {
        const size_t first = (static_cast<size_t>(b) * c.groups + m) * c.samples;
        long double max = -INFINITY, sum = 0, mean = 0;
        for (int k = 0; k < c.samples; ++k) max = std::max<long double>(max, (long double)logp[first + k] + ratio[first + k]);
        for (int k = 0; k < c.samples; ++k) {
          sum += std::exp((long double)logp[first + k] + ratio[first + k] - max);
          mean += ((long double)logp[first + k] + ratio[first + k]) / c.samples;
        }
        const long double lme = max + std::log(sum / c.samples);
        ebound[b] += static_cast<double>((c.beta * mean + (1.0L - c.beta) * lme) / c.groups);
        for (int k = 0; k < c.samples; ++k) {
          const long double tilde = std::exp((long double)logp[first + k] + ratio[first + k] - max) / sum;
          ew[first + k] = static_cast<double>((c.beta / (long double)c.samples + (1.0L - c.beta) * tilde) / c.groups);
        }
      }
    }
    expect_all_close(bound, ebound, 1e-6, 1e-5, "bound " + what);
    expect_all_close(w, ew, 1e-5, 1e-7, "weights " + what);
    for (int b = 0; b < images; ++b) {
      double total = 0.0;
      for (int s = 0; s < per_image; ++s) total += w[static_cast<size_t>(b) * per_image + s];
      EXPECT_NEAR(total, 1.0, 1e-5) << "image " << b;
      worst_formula = std::max(worst_formula, std::fabs(bound[b] - ebound[b]) / (1e-5 + 1e-6 * std::fabs(ebound[b])));
    }
    const float h = 1e-2f;
    const double tolerance = 2e-4;
    for (int r = 0; r < rows; ++r) {
      std::vector<float> up = logp, down = logp;
      up[r] += h;
      down[r] -= h;
      const double fd = (static_cast<double>(run(up, nullptr)[r / per_image]) - run(down, nullptr)[r / per_image]) /
                        (static_cast<double>(up[r]) - down[r]);
      EXPECT_NEAR(w[r], fd, tolerance) << "sample " << r;
      worst_fd = std::max(worst_fd, std::fabs(w[r] - fd) / tolerance);
    }
  }
  std::printf("  grouped_objective_weights on %s: worst bound error %.2f of tolerance, worst |fd - weight| %.2f of 2e-4\n",
              GetParam().c_str(), worst_formula, worst_fd);
}

// The IWAE and DReG backward to the encoder outputs against the formula of
// backend.h in double.
TEST_P(BackendOps, ImportanceWeightedLatentBackwardMatchesTheFormula) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int images = 4, k = 6, latent = 9, rows = images * k;
  const std::vector<float> enc = normals(static_cast<size_t>(images) * 2 * latent, 41, 0.5f);
  const std::vector<float> eps = normals(static_cast<size_t>(rows) * latent, 42);
  const std::vector<float> dz = normals(eps.size(), 43, 0.1f);
  std::vector<float> weights(rows), z(eps.size());
  for (int r = 0; r < rows; ++r) weights[r] = static_cast<float>(r % k + 1) / (k * (k + 1) / 2.0f);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < latent; ++j)
      z[r * latent + j] = enc[(r / k) * 2 * latent + j] + std::exp(enc[(r / k) * 2 * latent + latent + j]) * eps[r * latent + j];
  auto enc_d = to_device(*backend, enc), eps_d = to_device(*backend, eps), dz_d = to_device(*backend, dz);
  auto z_d = to_device(*backend, z), w_d = to_device(*backend, weights);
  const float scale = 0.25f;
  for (bool dreg : {false, true}) {
    DeviceArray<float> d_enc(*backend, enc.size());
    backend->importance_weighted_latent_backward(dz_d.get(), enc_d.get(), eps_d.get(), z_d.get(), w_d.get(),
                                                 images, k, latent, scale, dreg, d_enc.get());
    std::vector<double> expected(enc.size(), 0.0);
    for (int r = 0; r < rows; ++r) {
      const int b = r / k;
      for (int j = 0; j < latent; ++j) {
        const size_t i = static_cast<size_t>(r) * latent + j;
        const double sigma = std::exp(enc[b * 2 * latent + latent + j]), w = weights[r];
        const double d = dreg ? w * dz[i] + scale * w * w * (z[i] - eps[i] / sigma) : dz[i] + scale * w * z[i];
        expected[b * 2 * latent + j] += d;
        expected[b * 2 * latent + latent + j] += d * sigma * eps[i];
      }
    }
    if (!dreg) {
      for (int b = 0; b < images; ++b)
        for (int j = 0; j < latent; ++j) expected[b * 2 * latent + latent + j] -= scale;
    }
    expect_all_close(to_host(*backend, d_enc.get(), enc.size()), expected, 1e-5, 1e-6,
                     dreg ? "DReG latent backward" : "IWAE latent backward");
  }
}

// The layers above the first: gaussian_layer_forward against its formula in
// double (log N(h; m, e^2l) - log N(h; 0, 1), added to the rows it is given,
// with log-stds and distances far from 0 among them), gaussian_layer_backward
// against the forward's central differences in double, and upper_latent_backward
// against its formula, DReG and the full gradient both.
TEST_P(BackendOps, GaussianLayerMatchesTheDensityAndItsFiniteDifferences) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const int rows = 37, latent = 45;  // latent > 32: the CUDA warp strides
  std::vector<float> h = normals(static_cast<size_t>(rows) * latent, 51, 2.0f);
  std::vector<float> params = normals(static_cast<size_t>(rows) * 2 * latent, 52, 1.5f);
  params[latent] = 9.0f;         // sigma e^9: u ~ 0
  params[latent + 1] = -9.0f;    // sigma e^-9: u ~ 1e4, u^2 ~ 1e8
  h[1] = params[1] + 1e-3f;
  const std::vector<float> upper = normals(rows, 53, 10.0f), start = normals(rows, 54, 10.0f);
  std::vector<float> weights(rows);
  for (int r = 0; r < rows; ++r) weights[r] = 0.1f + 0.8f * static_cast<float>(r) / rows;
  auto h_d = to_device(*backend, h), p_d = to_device(*backend, params), up_d = to_device(*backend, upper);
  auto row_d = to_device(*backend, start), w_d = to_device(*backend, weights);
  backend->gaussian_layer_forward(h_d.get(), p_d.get(), up_d.get(), rows, latent, row_d.get());
  auto term = [&](double hv, double m, double l) {
    const double u = (hv - m) * std::exp(-l);
    return 0.5 * (hv * hv - u * u) - l;
  };
  std::vector<double> expected(rows);
  for (int r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int j = 0; j < latent; ++j) {
      sum += term(h[r * latent + j], params[r * 2 * latent + j], params[r * 2 * latent + latent + j]);
    }
    expected[r] = start[r] + upper[r] + sum;
  }
  // Row 0 sums terms up to ~5e7 (u ~ 1e4): float keeps 6e-8 of each term.
  expect_all_close(to_host(*backend, row_d.get(), rows), expected, 2e-6, 1e-4, "gaussian_layer_forward");

  const float scale = 0.5f;
  DeviceArray<float> d_params(*backend, params.size());
  std::vector<float> dh0 = normals(h.size(), 55, 0.1f);
  auto dh_d = to_device(*backend, dh0);
  backend->gaussian_layer_backward(h_d.get(), p_d.get(), w_d.get(), rows, latent, scale, d_params.get(), dh_d.get());
  const std::vector<float> got_params = to_host(*backend, d_params.get(), params.size());
  const std::vector<float> got_dh = to_host(*backend, dh_d.get(), h.size());
  double worst = 0.0;
  for (int r = 0; r < rows; ++r) {
    const double g = scale * weights[r];
    for (int j = 0; j < latent; ++j) {
      const size_t i = static_cast<size_t>(r) * latent + j, mi = static_cast<size_t>(r) * 2 * latent + j;
      const double hv = h[i], m = params[mi], l = params[mi + latent];
      // Central differences of -g term in double, step 1e-6 relative.
      auto diff = [&](auto f, double x) {
        const double step = 1e-6 * std::max(1.0, std::fabs(x));
        return (f(x + step) - f(x - step)) / (2 * step);
      };
      const double fd_m = diff([&](double v) { return -g * term(hv, v, l); }, m);
      const double fd_l = diff([&](double v) { return -g * term(hv, m, v); }, l);
      const double fd_h = diff([&](double v) { return -g * term(v, m, l); }, hv);
      const double checks[3][2] = {{got_params[mi], fd_m}, {got_params[mi + latent], fd_l}, {got_dh[i] - dh0[i], fd_h}};
      for (const auto& [analytic, fd] : checks) {
        // float's rounding of terms up to u^2 ~ 1e8 (row 0) and of the sum dh0 + d.
        const double tolerance = 1e-5 + 2e-5 * std::fabs(fd) + 1e-7 * std::fabs(dh0[i]);
        worst = std::max(worst, std::fabs(analytic - fd) / tolerance);
        EXPECT_NEAR(analytic, fd, tolerance) << "row " << r << " latent " << j;
      }
    }
  }
  std::printf("  gaussian_layer_backward on %s: worst |analytic - fd| %.2f of tolerance\n", GetParam().c_str(), worst);

  // upper_latent_backward: one sample a row, its own weight.
  const std::vector<float> enc = normals(params.size(), 56, 0.5f), eps = normals(h.size(), 57);
  std::vector<float> z(h.size());
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < latent; ++j)
      z[r * latent + j] = enc[r * 2 * latent + j] + std::exp(enc[r * 2 * latent + latent + j]) * eps[r * latent + j];
  auto enc_d = to_device(*backend, enc), eps_d = to_device(*backend, eps), z_d = to_device(*backend, z);
  DeviceArray<float> d_enc(*backend, enc.size()), d_below(*backend, enc.size());
  for (bool dreg : {false, true}) {
    backend->upper_latent_backward(dh_d.get(), enc_d.get(), eps_d.get(), z_d.get(), w_d.get(), rows, latent, scale,
                                   dreg, d_enc.get(), dreg ? d_below.get() : nullptr);
    std::vector<double> want(enc.size()), want_full(enc.size());
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < latent; ++j) {
        const size_t i = static_cast<size_t>(r) * latent + j, mi = static_cast<size_t>(r) * 2 * latent + j;
        const double sigma = std::exp(enc[mi + latent]), w = weights[r], dh = got_dh[i];
        const double full = dh + scale * w * z[i];
        const double d = dreg ? w * dh + scale * w * w * (z[i] - eps[i] / sigma) : full;
        want[mi] = d;
        want[mi + latent] = d * sigma * eps[i] - (dreg ? 0.0 : scale * w);
        want_full[mi] = full;
        want_full[mi + latent] = full * sigma * eps[i] - scale * w;
      }
    }
    expect_all_close(to_host(*backend, d_enc.get(), enc.size()), want, 1e-5, 1e-6,
                     dreg ? "upper_latent_backward DReG" : "upper_latent_backward");
    if (dreg) {
      expect_all_close(to_host(*backend, d_below.get(), enc.size()), want_full, 1e-5, 1e-6,
                       "upper_latent_backward's gradient to the layer below");
    }
  }
}

TEST_P(BackendOps, AdamStepMatchesDoubleFormula) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const size_t n = 100003;
  const std::vector<float> p0 = normals(n, 12), g = normals(n, 13, 0.1f);
  std::vector<float> m0 = normals(n, 14, 0.01f), v0 = normals(n, 15, 0.001f);
  for (float& v : v0) v = v * v;
  auto p = to_device(*backend, p0), g_d = to_device(*backend, g), m = to_device(*backend, m0), v = to_device(*backend, v0);
  const int t = 7;
  backend->adam_step(p.get(), g_d.get(), m.get(), v.get(), n, make_adam_step(1e-3, 0.9, 0.999, 1e-8, t));
  std::vector<double> ep(n), em(n), ev(n);
  for (size_t i = 0; i < n; ++i) {
    em[i] = 0.9 * m0[i] + 0.1 * g[i];
    ev[i] = 0.999 * v0[i] + 0.001 * g[i] * static_cast<double>(g[i]);
    const double m_hat = em[i] / (1 - std::pow(0.9, t)), v_hat = ev[i] / (1 - std::pow(0.999, t));
    ep[i] = p0[i] - 1e-3 * m_hat / (std::sqrt(v_hat) + 1e-8);
  }
  // m = 0.9 m + 0.1 g can cancel to ~1e-6 from terms of up to ~0.05: its
  // error is relative to the terms (3 roundings of 2^-24 * 0.05 < 1e-8), not
  // to the result.
  expect_all_close(to_host(*backend, m.get(), n), em, 1e-5, 1e-8, "adam m");
  expect_all_close(to_host(*backend, v.get(), n), ev, 1e-5, 1e-12, "adam v");
  // The update itself is ~1e-3: compare it with a relative tolerance.
  std::vector<float> got = to_host(*backend, p.get(), n);
  std::vector<float> update(n);
  std::vector<double> expected_update(n);
  for (size_t i = 0; i < n; ++i) {
    update[i] = got[i] - p0[i];
    expected_update[i] = ep[i] - p0[i];
  }
  // got - p0 is exact to float rounding of p (~6e-8 |p|), ~1e-4 of an update.
  expect_all_close(update, expected_update, 1e-3, 2e-7, "adam parameter update");
}

// The CPU's bias gradient sums fixed chunks of rows in a fixed order: the
// same bits on 1, 2 and 3 threads (rows not a multiple of the chunk, above
// the size where the loop goes parallel).
TEST(CpuBackend, BiasGradientBitsDoNotDependOnTheThreadCount) {
  std::unique_ptr<Backend> cpu = make_backend("cpu");
  const int rows = 1001, cols = 200;
  const std::vector<float> y = normals(static_cast<size_t>(rows) * cols, 4), dy0 = normals(y.size(), 5);
  const int threads_before = omp_get_max_threads();
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    auto dy = to_device(*cpu, dy0);
    auto yd = to_device(*cpu, y);
    DeviceArray<float> db(*cpu, cols);
    cpu->activation_backward_bias_grad(dy.get(), yd.get(), db.get(), rows, cols, Activation::kRelu, nullptr);
    results.push_back(to_host(*cpu, db.get(), cols));
  }
  omp_set_num_threads(threads_before);
  EXPECT_EQ(0, std::memcmp(results[0].data(), results[1].data(), cols * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(results[0].data(), results[2].data(), cols * sizeof(float)));
  // And no rows: a zero gradient, whatever the buffer held.
  auto db = to_device(*cpu, std::vector<float>(cols, 7.0f));
  cpu->activation_backward_bias_grad(nullptr, nullptr, db.get(), 0, cols, Activation::kRelu, nullptr);
  EXPECT_EQ(to_host(*cpu, db.get(), cols), std::vector<float>(cols, 0.0f));
}

// device_seconds (vae-bench's clock): 20 ms of host sleep between the two
// marks reads as at least 20 ms on every backend (a CUDA event is recorded
// when the stream reaches it: the start at once, the stop after the sleep),
// and a device copy comes out positive and finite.
TEST_P(BackendOps, DeviceSecondsMeasuresTheWorkBetweenItsMarks) {
  CUVAE_BACKEND_OR_SKIP(backend, GetParam());
  const double slept = backend->device_seconds([] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); });
  EXPECT_GE(slept, 0.0195);
  EXPECT_LT(slept, 5.0);
  DeviceArray<float> a(*backend, size_t{1} << 22), b(*backend, size_t{1} << 22);
  const double copied = backend->device_seconds([&] { backend->copy_on_device(b.get(), a.get(), a.size() * sizeof(float)); });
  EXPECT_GT(copied, 0.0);
  EXPECT_LT(copied, 5.0);
  std::printf("  20 ms sleep: %.2f ms; 16 MiB copy: %.3f ms\n", 1e3 * slept, 1e3 * copied);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::Values("cpu", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

}  // namespace
}  // namespace cuvae
