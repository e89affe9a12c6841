// CPU backend. Every loop is deterministic: each output element is computed by
// one thread in a fixed order, whatever the thread count, so the same seed
// gives the same bits (OpenBLAS's sgemm is deterministic for a fixed thread
// count).
#include "cuvae/backends/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/cpu_gemm.h"
#include "cuvae/backends/cpu/openmp_wait.h"
#include "cuvae/backends/cpu/thread_tuner.h"
#include "cuvae/error.h"

// Declared by OpenBLAS's cblas.h on Debian, but not by every cblas.h; these
// are OpenBLAS's own entry points and are how we prove the BLAS is OpenBLAS.
extern "C" char* openblas_get_config(void);
extern "C" int openblas_get_num_threads(void);
extern "C" int openblas_get_parallel(void);

namespace cuvae {

namespace {

// Below this many elements a loop runs on one thread: forking costs more
// than it saves.
constexpr long kParallelThreshold = 16384;

// The inner loops over a row (or a chunk) are separate, not inlined,
// functions: GCC 12 vectorizes these loops on their own but not once inlined
// into an OpenMP region ("control flow in loop"). Vector partial sums are
// added in an order fixed by the binary, so results stay reproducible.
#define CUVAE_VECTORIZED_ROW __attribute__((noinline))

// Rows per chunk of activation_backward_bias_grad's column sums.
constexpr int kBiasChunkRows = 32;

// sums += row.
CUVAE_VECTORIZED_ROW void add_row(const float* __restrict row, int cols, float* __restrict sums) {
  for (int c = 0; c < cols; ++c) sums[c] += row[c];
}

// dy = act'(y) dy (for ReLU: dy where y > 0, else 0) and sums += dy: one
// row. One instance per activation, so each loop is branch-free.
template <Activation kAct>
CUVAE_VECTORIZED_ROW void mask_and_add_row(float* __restrict dy, const float* __restrict y, int cols,
                                           float* __restrict sums) {
  for (int c = 0; c < cols; ++c) {
    dy[c] = activation_backward(dy[c], y[c], kAct);
    sums[c] += dy[c];
  }
}

// dy *= scale: one row (the IWAE objectives' per-sample weight).
CUVAE_VECTORIZED_ROW void scale_row(float* __restrict dy, int cols, float scale) {
  for (int c = 0; c < cols; ++c) dy[c] *= scale;
}

// y = act(y + bias): one row.
template <Activation kAct>
CUVAE_VECTORIZED_ROW void bias_activation_row(float* __restrict y, const float* __restrict bias, int cols) {
  for (int c = 0; c < cols; ++c) y[c] = activate(y[c] + bias[c], kAct);
}

// The row loops' instances for a run-time activation (the identity's
// backward is add_row alone: no mask row for it).
using MaskRow = void (*)(float*, const float*, int, float*);
MaskRow mask_row_for(Activation act) {
  return act == Activation::kRelu ? mask_and_add_row<Activation::kRelu> : mask_and_add_row<Activation::kTanh>;
}
using BiasRow = void (*)(float*, const float*, int);
BiasRow bias_row_for(Activation act) {
  return act == Activation::kRelu   ? bias_activation_row<Activation::kRelu>
         : act == Activation::kTanh ? bias_activation_row<Activation::kTanh>
                                    : bias_activation_row<Activation::kIdentity>;
}

// A counter-based draw of elements [first, first + count) comes in Philox
// blocks of four: element e is lane e % 4 of block e / 4. Calls
// partial(g, from, to) for the lanes [from, to) of a block at either end that
// the range only touches in part, and whole(g0, n) for runs of n whole blocks
// from g0 (at most kRandomChunk each), spread over OpenMP threads.
constexpr long kRandomChunk = 256;  // blocks: 4 KiB of raw bits, in L1

template <typename Partial, typename Whole>
void for_each_random_chunk(uint64_t first, long count, Partial partial, Whole whole) {
  if (count <= 0) return;
  const uint64_t end = first + static_cast<uint64_t>(count);
  const uint64_t whole_begin = (first + 3) / 4, whole_end = end / 4;
  if (whole_begin > whole_end) {  // inside one block
    partial(first / 4, static_cast<int>(first % 4), static_cast<int>(end - first / 4 * 4));
    return;
  }
  if (first % 4 != 0) partial(first / 4, static_cast<int>(first % 4), 4);
  const long blocks = static_cast<long>(whole_end - whole_begin);
  const long chunks = (blocks + kRandomChunk - 1) / kRandomChunk;
#pragma omp parallel for schedule(static) if (blocks >= kParallelThreshold / 4)
  for (long c = 0; c < chunks; ++c) {
    whole(whole_begin + static_cast<uint64_t>(c * kRandomChunk), std::min(kRandomChunk, blocks - c * kRandomChunk));
  }
  if (end % 4 != 0) partial(whole_end, 0, static_cast<int>(end % 4));
}

// Normals from n whole Philox blocks from g0 into out (4n floats). Two loops
// over a chunk, the blocks' raw bits into an L1 buffer and then Box-Muller:
// GCC vectorizes each well, and the pair beats one loop doing both by ~10%
// (vae-bench cpu/fill_normal, fused vs unfused; cpu/fill_normal/philox_only
// is the first loop alone).
CUVAE_VECTORIZED_ROW void normals_from_blocks(const RandomKey& key, uint64_t g0, long n,
                                              float* __restrict out) {
  alignas(64) uint32_t bits[4 * kRandomChunk];
  for (long g = 0; g < n; ++g) {
    const Philox4 block = random_block(key, g0 + static_cast<uint64_t>(g));
    for (int lane = 0; lane < 4; ++lane) bits[4 * g + lane] = block.v[lane];
  }
  for (long g = 0; g < n; ++g) {
    const Philox4 block{{bits[4 * g], bits[4 * g + 1], bits[4 * g + 2], bits[4 * g + 3]}};
    normals_from_block(block, out + 4 * g);
  }
}

// x[i] = binarize(pixels[i], u_i) for i < count, u_i = uniform element
// first + i of `key`: one contiguous run of pixels (a row of a batch). The
// whole Philox groups in the middle are a loop GCC vectorizes across groups.
CUVAE_VECTORIZED_ROW void binarize_span(const uint8_t* __restrict pixels, long count, uint64_t first,
                                        const RandomKey& key, float* __restrict x) {
  const uint64_t end = first + static_cast<uint64_t>(count);
  const uint64_t whole_begin = std::min(end, (first + 3) / 4 * 4), whole_end = std::max(whole_begin, end / 4 * 4);
  auto one = [&](uint64_t u) {
    x[u - first] = binarize(pixels[u - first], uniform_from_bits(random_block(key, u / 4).v[u % 4]));
  };
  for (uint64_t u = first; u < whole_begin; ++u) one(u);
  for (uint64_t g = whole_begin / 4; g < whole_end / 4; ++g) {
    const Philox4 block = random_block(key, g);
    for (int lane = 0; lane < 4; ++lane) {
      const uint64_t i = g * 4 + static_cast<uint64_t>(lane) - first;
      x[i] = binarize(pixels[i], uniform_from_bits(block.v[lane]));
    }
  }
  for (uint64_t u = whole_end; u < end; ++u) one(u);
}

// Row r of x: image order[first_position + r] of `images` (or image
// first_position + r), with uniforms from element uniform_base + r * cols:
// the one binarization loop behind upload_and_binarize and binarize_rows.
void binarize_batch(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
                    int cols, uint64_t uniform_base, const RandomKey& key, float* x) {
#pragma omp parallel for schedule(static) if (long(rows) * cols >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const uint64_t position = first_position + static_cast<uint64_t>(r);
    const uint64_t image = order != nullptr ? order[position] : position;
    binarize_span(images + image * static_cast<uint64_t>(cols), cols,
                  uniform_base + static_cast<uint64_t>(r) * static_cast<uint64_t>(cols), key,
                  x + static_cast<size_t>(r) * static_cast<size_t>(cols));
  }
}

// log p(x|z) of a row: a sum of 784 terms of about -0.3 nats each, summed
// in double. In float its rounding depended on how the compiler vectorized
// the loop: unvectorized (the sanitizer build) it was ~3e-4 nats on a -200
// nat row, which the IWAE objectives' weights softmax(log w) carry into
// every gradient (2x the 2e-4 tolerance of check_gradients_torch.py on the
// Zen 3 of 2026-12-06, where float32 PyTorch stays at 0.06x). In double it
// is the final rounding alone, however the loop is vectorized. With
// kWithGradient, dlogits too (one instance each, so each loop is branch-free).
template <bool kWithGradient>
CUVAE_VECTORIZED_ROW float bernoulli_row(const float* __restrict x, const float* __restrict logits, int cols,
                                         float grad_scale, float* __restrict dlogits) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < cols; ++c) {
    float dlogp;
    sum += bernoulli_logprob_and_grad(x[c], logits[c], &dlogp);
    if constexpr (kWithGradient) dlogits[c] = -grad_scale * dlogp;
  }
  return static_cast<float>(sum);
}

// One row of reparameterization + KL: z, and the row's KL and
// log p(z) - log q(z|x) sums.
CUVAE_VECTORIZED_ROW float reparameterize_kl_row(const float* __restrict mean,
                                                 const float* __restrict log_std,
                                                 const float* __restrict eps, int latent,
                                                 float* __restrict z, float* log_ratio_sum) {
  float kl = 0.0f, log_ratio = 0.0f;
#pragma omp simd reduction(+ : kl, log_ratio)
  for (int j = 0; j < latent; ++j) {
    const float zj = reparameterize(mean[j], log_std[j], eps[j]);
    z[j] = zj;
    kl += kl_divergence_term(mean[j], log_std[j]);
    log_ratio += log_prior_minus_log_posterior(zj, eps[j], log_std[j]);
  }
  *log_ratio_sum = log_ratio;
  return kl;
}

// One row's sum of gaussian_log_ratio_term.
CUVAE_VECTORIZED_ROW float gaussian_log_ratio_row(const float* __restrict h, const float* __restrict mean,
                                                  const float* __restrict log_std, int latent) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < latent; ++j) sum += gaussian_log_ratio_term(h[j], mean[j], log_std[j]);
  return sum;
}

// One row of gaussian_layer_backward: the log-ratio term's gradient, weighted
// g, to p(h_{s-1}|h_s)'s mean | log_std, and (dh non-null) added to dh.
CUVAE_VECTORIZED_ROW void gaussian_log_ratio_backward_row(const float* __restrict h, const float* __restrict mean,
                                                          const float* __restrict log_std, int latent, float g,
                                                          float* __restrict dmean, float* __restrict dlog_std,
                                                          float* __restrict dh) {
  if (dh != nullptr) {
#pragma omp simd
    for (int j = 0; j < latent; ++j) {
      float dm, dl, d;  // locals, then stores (as below)
      gaussian_log_ratio_backward(h[j], mean[j], log_std[j], g, &dm, &dl, &d);
      dmean[j] = dm;
      dlog_std[j] = dl;
      dh[j] += d;
    }
  } else {
#pragma omp simd
    for (int j = 0; j < latent; ++j) {
      float dm, dl, d;
      gaussian_log_ratio_backward(h[j], mean[j], log_std[j], g, &dm, &dl, &d);
      dmean[j] = dm;
      dlog_std[j] = dl;
    }
  }
}

// One row of upper_latent_backward with one `dreg` choice: the gradient to
// q(h_s|h_{s-1})'s mean | log_std.
CUVAE_VECTORIZED_ROW void upper_latent_backward_row(const float* __restrict dh, const float* __restrict h,
                                                    const float* __restrict eps, const float* __restrict log_std,
                                                    int latent, float weight, float scale, bool dreg,
                                                    float* __restrict dmean, float* __restrict dlog_std) {
#pragma omp simd
  for (int j = 0; j < latent; ++j) {
    float dm, dl;
    upper_latent_backward_term(dh[j], h[j], eps[j], log_std[j], weight, scale, dreg, &dm, &dl);
    dmean[j] = dm;
    dlog_std[j] = dl;
  }
}

// The one-sample backward of a row (vae_math.h's reparameterize_kl_backward):
// K = 1 keeps exactly the seed objective's arithmetic (the compiler may fuse
// the formula's multiply-adds, which a sum over samples written to memory
// between terms would not allow).
CUVAE_VECTORIZED_ROW void reparameterize_kl_backward_row(
    const float* __restrict dz, const float* __restrict mean, const float* __restrict log_std,
    const float* __restrict eps, int latent, float kl_scale, float* __restrict dmean,
    float* __restrict dlog_std) {
#pragma omp simd
  for (int j = 0; j < latent; ++j) {
    float dm, dls;  // locals, then stores: GCC 12 does not if-convert stores through the pointers
    reparameterize_kl_backward(dz[j], mean[j], log_std[j], eps[j], kl_scale, &dm, &dls);
    dmean[j] = dm;
    dlog_std[j] = dls;
  }
}

// One image's backward over its K samples (K consecutive rows of dz, eps
// and z): d_mean[j] = sum_k dmean_term(k, j), d_log_std[j] = sum_k
// dlog_std_term(k, j), added in order k = 0..K-1 from the k = 0 term;
// terms(k, j, sigma_j, &dmean, &dlog_std).
template <typename Terms>
void sum_sample_terms(const float* log_std, int samples, int latent, float* __restrict dmean,
                      float* __restrict dlog_std, Terms terms) {
  for (int k = 0; k < samples; ++k) {
#pragma omp simd
    for (int j = 0; j < latent; ++j) {
      float dm, dls;  // locals, then stores: GCC 12 does not if-convert stores through the pointers
      terms(k, j, exp_clamped(log_std[j]), &dm, &dls);
      dmean[j] = k == 0 ? dm : dmean[j] + dm;
      dlog_std[j] = k == 0 ? dls : dlog_std[j] + dls;
    }
  }
}

// Calls backward(b, mean, log_std, d_mean, d_log_std) for each image b's
// rows of encoder_out and d_encoder_out (images x 2L), images over threads.
template <typename Backward>
void for_each_image_backward(int images, int samples, int latent, const float* encoder_out,
                             float* d_encoder_out, Backward backward) {
#pragma omp parallel for schedule(static) if (long(images) * samples * latent >= kParallelThreshold)
  for (int b = 0; b < images; ++b) {
    const size_t row = static_cast<size_t>(b) * 2 * latent;
    backward(b, encoder_out + row, encoder_out + row + latent, d_encoder_out + row,
             d_encoder_out + row + latent);
  }
}

// The analytic KL's gradient, added: d_mean += kl_scale mean,
// d_log_std += kl_scale expm1(2 log_std) (vae_math.h's reparameterize_kl_backward).
CUVAE_VECTORIZED_ROW void add_kl_gradient_row(const float* __restrict mean, const float* __restrict log_std,
                                              int latent, float kl_scale, float* __restrict dmean,
                                              float* __restrict dlog_std) {
  for (int j = 0; j < latent; ++j) {
    dmean[j] += kl_scale * mean[j];
    dlog_std[j] += kl_scale * expm1_accurate(2.0f * log_std[j]);
  }
}

// One image's K log-weights log w_k = logprob_k + log_ratio_k: returns
// L_K = log (1/K) sum_k w_k and, if weights is not null, writes the
// normalized weights (vae_math.h: max-shifted, the sum in double).
float importance_weights_row(const float* logprob, const float* log_ratio, int samples, float* weights) {
  float max_log_w = -INFINITY;
  for (int k = 0; k < samples; ++k) max_log_w = std::max(max_log_w, logprob[k] + log_ratio[k]);
  double sum = 0.0;
  for (int k = 0; k < samples; ++k) sum += shifted_importance_weight(logprob[k] + log_ratio[k], max_log_w);
  if (weights != nullptr) {
    for (int k = 0; k < samples; ++k) {
      weights[k] = static_cast<float>(shifted_importance_weight(logprob[k] + log_ratio[k], max_log_w) / sum);
    }
  }
  return static_cast<float>(log_mean_exp_from(max_log_w, sum, samples));
}

class CpuBackend final : public Backend {
 public:
  CpuBackend()
      : max_threads_(omp_get_max_threads()),
        adaptive_allowed_(cpu_gemm_is_blocked() && adaptive_threads_requested() && max_threads_ > 1),
        adaptive_(adaptive_allowed_),
        tuner_(max_threads_) {}
  ~CpuBackend() override {
    if (adaptive_allowed_) omp_set_num_threads(max_threads_);
  }
  std::string name() const override { return "cpu"; }
  bool memory_is_host() const override { return true; }
  void set_adaptive_threads(bool on) override { adaptive_ = on && adaptive_allowed_; }
  size_t memory_bytes() const override {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  }

  std::string description() const override {
    // openblas_get_parallel: 0 sequential, 1 pthreads, 2 OpenMP.
    const int parallel = openblas_get_parallel();
    const char* threading = parallel == 2 ? "OpenMP" : parallel == 1 ? "pthreads" : "sequential";
    std::string text = "CPU, " + std::to_string(max_threads_) +
                       (adaptive_ ? " OpenMP threads (training: 1 to " + std::to_string(max_threads_) +
                                        ", the faster under the machine's load; CUVAE_THREADS=fixed keeps " +
                                        std::to_string(max_threads_) + ")"
                                  : " OpenMP threads") +
                       ", BLAS: " + std::string(openblas_get_config()) + " (" +
                       threading + ", " + std::to_string(openblas_get_num_threads()) + " threads), " +
                       cpu_gemm_kernel().summary + ", OpenMP waiting: " + openmp_wait_description();
    if (parallel == 1) {
      text += " [warning: OpenBLAS's pthread build spins against our OpenMP threads and makes "
              "training several times slower; install libopenblas-openmp-dev and rebuild]";
    }
    return text;
  }

  void* allocate(size_t bytes) override {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple.
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) {
      throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
    }
    return p;
  }
  void deallocate(void* pointer) override { std::free(pointer); }
  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    std::memcpy(dst, host_src, bytes);
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    std::memcpy(host_dst, src, bytes);
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

  void gemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
            int lda, const float* b, int ldb, float beta, float* c, int ldc) override {
    cpu_sgemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  void bias_activation_forward(float* y, const float* bias, int rows, int cols,
                               Activation act) override {
    const BiasRow row = bias_row_for(act);
#pragma omp parallel for schedule(static) if (long(rows) * cols >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) row(y + static_cast<size_t>(r) * cols, bias, cols);
  }

  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                     Activation act, const float* row_scale) override {
    // By fixed chunks of rows, whatever the thread count: each chunk's rows
    // get the ReLU mask and are summed into the chunk's own column sums, in
    // one pass; then dbias[c] = the chunks' sums added in chunk order. So
    // threads share no cache line but where two chunks' sums meet (splitting
    // the columns between threads instead made this 6x slower when the two
    // threads ran on separate cores: 782 vs 126 us at batch 4096 on the
    // development VM), and dbias does not depend on the thread count.
    const MaskRow mask_row = mask_row_for(act);
    const int chunks = (rows + kBiasChunkRows - 1) / kBiasChunkRows;
    if (chunks == 0) {  // no rows: a zero gradient
      std::fill(dbias, dbias + cols, 0.0f);
      return;
    }
    bias_chunk_sums_.resize(static_cast<size_t>(chunks) * cols);
    float* chunk_sums = bias_chunk_sums_.data();
#pragma omp parallel for schedule(static) if (long(rows) * cols >= kParallelThreshold)
    for (int k = 0; k < chunks; ++k) {
      float* sums = chunk_sums + static_cast<size_t>(k) * cols;
      std::fill(sums, sums + cols, 0.0f);
      for (int r = k * kBiasChunkRows; r < std::min(rows, (k + 1) * kBiasChunkRows); ++r) {
        float* dy_row = dy + static_cast<size_t>(r) * cols;
        if (row_scale != nullptr) scale_row(dy_row, cols, row_scale[r]);
        if (act == Activation::kIdentity) {
          add_row(dy_row, cols, sums);
        } else {
          mask_row(dy_row, y + static_cast<size_t>(r) * cols, cols, sums);
        }
      }
    }
    std::copy(chunk_sums, chunk_sums + cols, dbias);
    for (int k = 1; k < chunks; ++k) add_row(chunk_sums + static_cast<size_t>(k) * cols, cols, dbias);
  }

  void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                           const RandomKey& key, float* x) override {
    binarize_batch(host_pixels, nullptr, 0, rows, cols, first_row * static_cast<uint64_t>(cols), key, x);
  }
  void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
                     int cols, const RandomKey& key, float* x) override {
    binarize_batch(images, order, first_position, rows, cols, 0, key, x);
  }

  void fill_normal(float* out, size_t count, uint64_t first_index,
                   const RandomKey& key) override {
    for_each_random_chunk(
        first_index, static_cast<long>(count),
        [&](uint64_t g, int from, int to) {
          float normals[4];
          normals_from_block(random_block(key, g), normals);
          for (int lane = from; lane < to; ++lane) out[g * 4 + static_cast<uint64_t>(lane) - first_index] = normals[lane];
        },
        [&](uint64_t g0, long n) { normals_from_blocks(key, g0, n, out + (g0 * 4 - first_index)); });
  }

  void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images,
                                 int samples, int latent, float* z, float* row_kl,
                                 float* row_log_ratio) override {
    // By sample rows r = b K + k (the KL of image b from its k = 0 row), so
    // that a few images with many samples still spread over the threads.
    const long rows = long(images) * samples;
#pragma omp parallel for schedule(static) if (rows * latent >= kParallelThreshold)
    for (long r = 0; r < rows; ++r) {
      const long b = r / samples;
      const float* mean = encoder_out + static_cast<size_t>(b) * 2 * latent;
      float log_ratio;
      const float kl = reparameterize_kl_row(mean, mean + latent, eps + static_cast<size_t>(r) * latent,
                                             latent, z + static_cast<size_t>(r) * latent, &log_ratio);
      if (r % samples == 0 && row_kl != nullptr) row_kl[b] = kl;
      if (row_log_ratio != nullptr) row_log_ratio[r] = log_ratio;
    }
  }

  void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                  int images, int samples, int latent, float kl_scale,
                                  float* d_encoder_out) override {
    for_each_image_backward(images, samples, latent, encoder_out, d_encoder_out,
                            [&](int b, const float* mean, const float* log_std, float* dmean, float* dlog_std) {
      const size_t first = static_cast<size_t>(b) * samples * latent;
      if (samples == 1) {
        reparameterize_kl_backward_row(dz + first, mean, log_std, eps + first, latent, kl_scale,
                                       dmean, dlog_std);
        return;
      }
      sum_sample_terms(log_std, samples, latent, dmean, dlog_std,
                       [&](int k, int j, float sigma, float* dm, float* dls) {
        const size_t i = first + static_cast<size_t>(k) * latent + j;
        *dm = dz[i];
        *dls = dz[i] * sigma * eps[i];
      });
      add_kl_gradient_row(mean, log_std, latent, kl_scale, dmean, dlog_std);
    });
  }

  void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                           const float* eps, const float* z, const float* weights,
                                           int images, int samples, int latent, float scale,
                                           bool dreg, float* d_encoder_out) override {
    for_each_image_backward(images, samples, latent, encoder_out, d_encoder_out,
                            [&](int b, const float*, const float* log_std, float* dmean, float* dlog_std) {
      const size_t first = static_cast<size_t>(b) * samples;
      sum_sample_terms(log_std, samples, latent, dmean, dlog_std,
                       [&](int k, int j, float sigma, float* dm, float* dls) {
        const size_t i = (first + static_cast<size_t>(k)) * latent + j;
        *dm = importance_weighted_dz(dz[i], z[i], eps[i], sigma, weights[first + k], scale, dreg);
        *dls = *dm * sigma * eps[i];
      });
      // IWAE: log w's explicit + log_std (from -log q), weighted by sum_k w~_k = 1.
      if (!dreg) {
        for (int j = 0; j < latent; ++j) dlog_std[j] -= scale;
      }
    });
  }

  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                  int samples, float grad_scale, float* dlogits,
                                  float* row_logprob) override {
#pragma omp parallel for schedule(static) if (long(rows) * cols >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) {
      const size_t offset = static_cast<size_t>(r) * cols;
      const float* x_row = x + static_cast<size_t>(r / samples) * cols;  // the sample's image
      const float sum = dlogits != nullptr
                            ? bernoulli_row<true>(x_row, logits + offset, cols, grad_scale, dlogits + offset)
                            : bernoulli_row<false>(x_row, logits + offset, cols, grad_scale, nullptr);
      row_logprob[r] = sum;
    }
  }

  void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                       double* accumulator) override {
    double sum = 0.0;
    for (int b = 0; b < images; ++b) {
      double logprob = 0.0;
      for (int k = 0; k < samples; ++k) logprob += static_cast<double>(row_logprob[size_t(b) * samples + k]);
      sum += logprob / samples - (row_kl != nullptr ? static_cast<double>(row_kl[b]) : 0.0);
    }
    *accumulator += sum;
  }

  void importance_weights(const float* row_logprob, const float* row_log_ratio, int images,
                          int samples, float* weights, float* row_bound) override {
#pragma omp parallel for schedule(static) if (long(images) * samples >= kParallelThreshold / 16)
    for (int b = 0; b < images; ++b) {
      const size_t first = static_cast<size_t>(b) * samples;
      row_bound[b] = importance_weights_row(row_logprob + first, row_log_ratio + first, samples,
                                            weights != nullptr ? weights + first : nullptr);
    }
  }

  void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                                 const float* group_bound, int images, int groups, int samples,
                                 float beta, float* weights, float* row_bound) override {
    const long per_image = static_cast<long>(groups) * samples;
#pragma omp parallel for schedule(static) if (long(images) * per_image >= kParallelThreshold / 16)
    for (int b = 0; b < images; ++b) {
      row_bound[b] = grouped_objective_image(row_logprob, row_log_ratio, group_bound, b, groups, samples, beta, weights);
    }
  }

  void gaussian_layer_forward(const float* h_below, const float* p_params,
                              const float* upper_log_ratio, int rows, int latent,
                              float* row_log_ratio) override {
#pragma omp parallel for schedule(static) if (long(rows) * latent >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) {
      const float* h = h_below + static_cast<size_t>(r) * latent;
      const float* mean = p_params + static_cast<size_t>(r) * 2 * latent;
      row_log_ratio[r] += upper_log_ratio[r] + gaussian_log_ratio_row(h, mean, mean + latent, latent);
    }
  }

  void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights,
                               int rows, int latent, float scale, float* d_params,
                               float* dh_below) override {
#pragma omp parallel for schedule(static) if (long(rows) * latent >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) {
      const size_t row = static_cast<size_t>(r) * latent;
      const float* mean = p_params + 2 * row;
      float* dmean = d_params + 2 * row;
      gaussian_log_ratio_backward_row(h_below + row, mean, mean + latent, latent, scale * weights[r], dmean,
                                      dmean + latent, dh_below != nullptr ? dh_below + row : nullptr);
    }
  }

  void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                             const float* h, const float* weights, int rows, int latent,
                             float scale, bool dreg, float* d_encoder_out,
                             float* d_encoder_out_below) override {
#pragma omp parallel for schedule(static) if (long(rows) * latent >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) {
      const size_t row = static_cast<size_t>(r) * latent;
      const float* log_std = encoder_out + 2 * row + latent;
      float* out = d_encoder_out + 2 * row;
      upper_latent_backward_row(dh + row, h + row, eps + row, log_std, latent, weights[r], scale, dreg, out,
                                out + latent);
      if (d_encoder_out_below != nullptr) {  // DReG: the full gradient too, for the layer below
        float* below = d_encoder_out_below + 2 * row;
        upper_latent_backward_row(dh + row, h + row, eps + row, log_std, latent, weights[r], scale, false, below,
                                  below + latent);
      }
    }
  }

  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override {
    if (adaptive_) follow_the_load();
    const long n = static_cast<long>(count);
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
    for (long i = 0; i < n; ++i) cuvae::adam_step(&params[i], &m[i], &v[i], grads[i], step);
  }

 private:
  // One Adam update a training step: the time since the previous one is a
  // step's, which the tuner turns into the thread count of the next steps.
  // The results do not depend on it (adaptive_ only where every GEMM runs in
  // shape-fixed blocks, and every other loop is element-wise or in fixed
  // chunks).
  void follow_the_load() {
    const auto now = std::chrono::steady_clock::now();
    if (has_last_step_) {
      tuner_.record(std::chrono::duration<double>(now - last_step_).count());
      if (tuner_.threads() != omp_get_max_threads()) omp_set_num_threads(tuner_.threads());
    }
    has_last_step_ = true;
    last_step_ = now;
  }

  const int max_threads_;
  const bool adaptive_allowed_;
  bool adaptive_;
  ThreadTuner tuner_;
  bool has_last_step_ = false;
  std::chrono::steady_clock::time_point last_step_;
  std::vector<float> bias_chunk_sums_;  // activation_backward_bias_grad's per-chunk column sums
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace cuvae
