// vae-bench: microbenchmarks (Google Benchmark) of every fused operation of
// the model, of the model's GEMM shapes, and of two references measured in
// the same run: the machine's copy bandwidth and its BLAS's throughput on a
// large square SGEMM.
//
//   build/vae-bench                                  # everything, ~1-2 minutes on 2 cores
//   build/vae-bench --benchmark_filter='cpu/bernoulli'
//   build/vae-bench --benchmark_format=json > bench.json
//
// Names are BACKEND/OP/VARIANT/ROWS, e.g. cpu/bernoulli/fused/4096 and
// cpu/bernoulli/unfused/4096, so that each fused/unfused pair sorts together.
// The ops, by Backend call (include/cuvae/backends/backend.h), at the seed's shapes
// (input 784, hidden 200, latent 50) for batches of 200, 1000 and 4096 rows:
//   bias_relu       bias_activation_forward (ReLU), rows x 200
//   relu_bwd_bias   activation_backward_bias_grad (ReLU), rows x 200
//   binarize        upload_and_binarize, rows x 784
//   fill_normal     fill_normal, rows x 50 (the reparameterization noise)
//   reparam_kl_fwd  reparameterize_kl_forward, rows x 50 (with the log-ratio
//                   output, as training computes it)
//   reparam_kl_bwd  reparameterize_kl_backward, rows x 50
//   bernoulli       bernoulli_logprob_and_grad, rows x 784 (with dlogits)
//   adam            adam_step over the seed model's 425,284 parameters (one
//                   size: it does not depend on the batch)
// "fused" is the backend's call; "unfused" (CPU only) is the same math in
// separate passes through memory (unfused.h), so fusion's gain is the ratio
// of the two times.
//
// Counters: "bytes" is the traffic of one call at minimum (each input read
// once, each output written once; below), bytes_per_second is that over the
// time, and bw_frac is that rate over the copy bandwidth of the same backend
// measured in this run (ref/copy, the best of its variants: a 256 MiB buffer
// copied, read + written bytes counted). Operands that fit in cache (most of
// these at the seed's shapes do, on the CPU) can give bw_frac > 1. With N = rows x cols of the op:
//   bias_relu       fused: read y, bias; write y = 4 (2N + cols)
//                   unfused: bias pass 4 (2N + cols), ReLU pass 4 (2N)
//   relu_bwd_bias   fused: read dy, y; write dy, dbias = 4 (3N + cols)
//                   unfused: mask pass 4 (3N), column-sum pass 4 (N + cols)
//   binarize        fused: read N pixel bytes, write x = 5N
//                   unfused: random-bits pass 4N, binarize pass N + 4N + 4N
//   fill_normal     fused: write out = 4N (generating is compute, not traffic)
//                   unfused: random-bits pass 4N, Box-Muller pass 8N
//   reparam_kl_fwd  fused: read mean|log_std (2N), eps (N); write z (N),
//                   row_kl, row_log_ratio (2 rows) = 4 (4N + 2 rows)
//                   unfused: z 4 (4N), KL 4 (3N), log-ratio 4 (4N), row sums
//                   4 (2N + 2 rows)
//   reparam_kl_bwd  fused: read dz (N), mean|log_std (2N), eps (N); write
//                   dmean|dlog_std (2N) = 4 (6N)
//                   unfused: dmean pass 4 (3N), dlog_std pass 4 (4N)
//   bernoulli       fused: read x, logits; write dlogits, row_logprob
//                   = 4 (3N + rows)
//                   unfused: sigmoid 4 (2N), log-prob 4 (3N), gradient
//                   4 (3N), row sums 4 (N + rows)
//   adam            n parameters. fused: read p, g, m, v; write p, m, v
//                   = 4 (7n); unfused: m 4 (3n), v 4 (3n), params 4 (4n)
// GEMMs report GFLOP/s (2 m n k per call) and frac_of_peak, the fraction of
// ref/sgemm's GFLOP/s in this run (2048^3 on the CPU, 4096^3 on a GPU). Their names are
// BACKEND/gemm/PASS/LAYER/ROWS: fwd is Y = X W (rows x in times in x out), dW = X^T dY, dX = dY
// W^T, as src/model/vae_model.cpp calls them (it skips dX of encoder.0, and so do we).
//
// If a filter leaves out the references, each is measured once, quietly,
// the first time a benchmark needs it.
//
// Timing: CPU benchmarks use wall-clock time (UseRealTime), since OpenMP and
// OpenBLAS run on several threads. CUDA benchmarks use manual time: each
// timing is kGraphReplaysPerTiming replays of kDeviceOpsPerTiming calls of
// the op recorded once as a CUDA Graph (as a training step is), between two
// CUDA events on the backend's stream (Backend::device_seconds), over the
// number of calls: the device's time, with one host launch gap per 100 calls
// instead of one per call, which would exceed the run time of the small ops.
// The upload benchmark (binarize) cannot be recorded (it waits for the host)
// and is timed the same way, unrecorded.
// Nothing CUDA-specific is compiled here; CUDA benchmarks are registered
// only when cuvae::cuda_available() says a device is there.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/backends/cpu/blas_kernel.h"
#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/backends/cpu/denormals.h"
#include "cuvae/build_info.h"
#include "cuvae/model/philox.h"
#include "cuvae/model/vae_math.h"
#include "cuvae/model/vae_model.h"
#include "denormal_step.h"
#include "unfused.h"

namespace {

using cuvae::Activation;
using cuvae::Backend;
using cuvae::DeviceArray;
using Clock = std::chrono::steady_clock;

constexpr int kBatches[] = {200, 1000, 4096};
// The default --benchmark_min_time (seconds), keeping the default run short;
// a --benchmark_min_time on the command line overrides it.
constexpr const char* kDefaultMinTime = "0.1";
// The references run longer: everything else is measured against them.
constexpr double kReferenceMinTime = 0.5;
constexpr size_t kCopyBytes = size_t{256} << 20;  // per buffer: 256 MiB read, 256 MiB written
constexpr int kCpuSquareGemm = 2048;
constexpr int kDeviceSquareGemm = 4096;  // 2048^3 is too little work to fill a large GPU
constexpr int kDeviceOpsPerTiming = 10;
// Graph replays per device timing: the host's bookkeeping and launch of the
// first replay lie between the two events, the later ones overlap the
// device's work, so that gap is paid once per 100 calls.
constexpr int kGraphReplaysPerTiming = 10;

// One backend under test, and its references as measured in this run.
struct Target {
  std::string name;  // "cpu" or "cuda": the first part of every benchmark name
  std::unique_ptr<Backend> backend;
  bool device = false;            // timed manually (see the top of the file)
  double copy_bytes_per_s = 0.0;  // best ref/copy variant: bytes read + written per second
  double gemm_flops_per_s = 0.0;  // ref/sgemm
};

std::vector<std::unique_ptr<Target>> g_targets;
const cuvae::Architecture kArch;  // the seed's: 784-200-200-(50+50) | 50-200-200-784

// ---------------------------------------------------------------------------
// Data

// n floats, scale * N(0,1) + shift, from Philox (fast, parallel, deterministic).
std::vector<float> host_normals(size_t n, uint64_t seed, float scale, float shift = 0.0f) {
  std::vector<float> out(n);
  const cuvae::RandomKey key{seed, cuvae::RandomStream::kInit, 0};
  const long groups = static_cast<long>((n + 3) / 4);
#pragma omp parallel for schedule(static)
  for (long g = 0; g < groups; ++g) {
    float normals[4];
    cuvae::normals_from_block(cuvae::random_block(key, static_cast<uint64_t>(g)), normals);
    for (size_t lane = 0; lane < 4; ++lane) {
      const size_t i = static_cast<size_t>(g) * 4 + lane;
      if (i < n) out[i] = scale * normals[lane] + shift;
    }
  }
  return out;
}


template <typename T>
DeviceArray<T> zeros(Backend& backend, size_t count) {
  return to_device(backend, std::vector<T>(count, T{}));
}

// ---------------------------------------------------------------------------
// Timing and counters

// Runs the benchmark loop over op; returns the seconds it measured. On a
// device, op's calls are replayed as a CUDA Graph unless `recordable` is false.
template <typename Op>
double time_loop(benchmark::State& state, const Target& target, Op&& op, bool recordable = true) {
  Backend& backend = *target.backend;
  if (!target.device) {
    const auto start = Clock::now();
    for (auto _ : state) {
      op();
      benchmark::ClobberMemory();
    }
    return std::chrono::duration<double>(Clock::now() - start).count();
  }
  const std::unique_ptr<cuvae::StepRecording> recording =
      recordable ? backend.make_step_recording() : nullptr;
  const std::function<void()> calls = [&] {
    for (int i = 0; i < kDeviceOpsPerTiming; ++i) op();
  };
  const std::function<void()> run = [&] { backend.run_step(recording.get(), calls); };
  run();  // with a recording: the eager first run,
  run();  // then the capture (and its launch)
  backend.synchronize();
  double total = 0.0;
  const std::function<void()> replays = [&] {
    for (int i = 0; i < kGraphReplaysPerTiming; ++i) run();
  };
  for (auto _ : state) {
    const double seconds =
        backend.device_seconds(replays) / (kDeviceOpsPerTiming * kGraphReplaysPerTiming);
    state.SetIterationTime(seconds);
    total += seconds;
  }
  return total;
}

// std::memcpy split into one contiguous chunk per OpenMP thread.
void parallel_memcpy(char* dst, const char* src, size_t bytes) {
#pragma omp parallel
  {
    const size_t threads = static_cast<size_t>(omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    // 4 KiB-aligned chunks, one per thread.
    const size_t chunk = (bytes / threads + 4095) / 4096 * 4096;
    const size_t begin = std::min(bytes, t * chunk);
    const size_t end = std::min(bytes, begin + chunk);
    if (end > begin) std::memcpy(dst + begin, src + begin, end - begin);
  }
}

// The reference buffers of the CPU copy benchmark, allocated and paged in
// once (in parallel, so that each page is first touched by a worker thread).
struct CopyBuffers {
  std::unique_ptr<char[]> src, dst;
  CopyBuffers() : src(new char[kCopyBytes]), dst(new char[kCopyBytes]) {
    const long n = static_cast<long>(kCopyBytes);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; ++i) {
      src[i] = static_cast<char>(i);
      dst[i] = 0;
    }
  }
};
CopyBuffers& copy_buffers() {
  static CopyBuffers buffers;
  return buffers;
}

// Two written (so really allocated) kCopyBytes device buffers.
struct DeviceCopyBuffers {
  DeviceArray<char> src, dst;
  explicit DeviceCopyBuffers(Backend& backend) {
    const std::vector<char> ones(kCopyBytes, 1);
    src = to_device(backend, ones);
    dst = to_device(backend, ones);
  }
};

// The copy bandwidth of the target: the best ref/copy of this run, or, if
// the filter left those out, a quick measurement now.
double copy_bandwidth(Target& target) {
  if (target.copy_bytes_per_s > 0.0) return target.copy_bytes_per_s;
  Backend& backend = *target.backend;
  std::unique_ptr<DeviceCopyBuffers> buffers;
  if (target.device) buffers = std::make_unique<DeviceCopyBuffers>(backend);
  double best = 0.0;
  for (int rep = 0; rep < 4; ++rep) {
    const double seconds = backend.device_seconds([&] {
      if (target.device) {
        backend.copy_on_device(buffers->dst.get(), buffers->src.get(), kCopyBytes);
      } else {
        parallel_memcpy(copy_buffers().dst.get(), copy_buffers().src.get(), kCopyBytes);
      }
    });
    if (rep > 0) best = std::max(best, 2.0 * kCopyBytes / seconds);  // rep 0 warms up
  }
  target.copy_bytes_per_s = best;
  return best;
}

// bytes per call -> "bytes", bytes_per_second and "bw_frac". `seconds` is
// what time_loop measured (plain counters, computed here, print without
// Google Benchmark's "/s" suffix of rate counters).
void report_bytes(benchmark::State& state, Target& target, double bytes, double seconds) {
  const double calls = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes * calls));
  state.counters["bytes"] = benchmark::Counter(bytes);
  state.counters["bw_frac"] = benchmark::Counter(bytes * calls / seconds / copy_bandwidth(target));
}

// A square n x n x n SGEMM on the target's BLAS (cuBLAS on a GPU).
struct SquareGemm {
  int n;
  DeviceArray<float> a, b, c;
  SquareGemm(Backend& backend, int size)
      : n(size),
        a(to_device(backend, host_normals(static_cast<size_t>(size) * size, 11, 1.0f))),
        b(to_device(backend, host_normals(static_cast<size_t>(size) * size, 12, 1.0f))),
        c(zeros<float>(backend, static_cast<size_t>(size) * size)) {}
  void run(Backend& backend) {
    backend.gemm(false, false, n, n, n, 1.0f, a.get(), n, b.get(), n, 0.0f, c.get(), n);
  }
  double flops() const { return 2.0 * n * n * static_cast<double>(n); }
};

double gemm_peak(Target& target) {
  if (target.gemm_flops_per_s > 0.0) return target.gemm_flops_per_s;
  Backend& backend = *target.backend;
  SquareGemm gemm(backend, target.device ? kDeviceSquareGemm : kCpuSquareGemm);
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const double seconds = backend.device_seconds([&] { gemm.run(backend); });
    if (rep > 0) best = std::max(best, gemm.flops() / seconds);
  }
  target.gemm_flops_per_s = best;
  return best;
}

// ---------------------------------------------------------------------------
// Reference benchmarks: run first, store their results in the Target.

enum class CopyKind { kMemcpy, kOmpMemcpy, kOmpLoop, kDevice };

void bm_copy(benchmark::State& state, Target* target, CopyKind kind) {
  Backend& backend = *target->backend;
  std::unique_ptr<DeviceCopyBuffers> device_buffers;
  char* src = nullptr;
  char* dst = nullptr;
  if (kind == CopyKind::kDevice) {
    device_buffers = std::make_unique<DeviceCopyBuffers>(backend);
    src = device_buffers->src.get();
    dst = device_buffers->dst.get();
  } else {
    src = copy_buffers().src.get();
    dst = copy_buffers().dst.get();
  }
  const double seconds = time_loop(state, *target, [&] {
    switch (kind) {
      case CopyKind::kMemcpy:
        std::memcpy(dst, src, kCopyBytes);
        break;
      case CopyKind::kOmpMemcpy:
        parallel_memcpy(dst, src, kCopyBytes);
        break;
      case CopyKind::kOmpLoop: {
        const long n = static_cast<long>(kCopyBytes / sizeof(float));
        const float* s = reinterpret_cast<const float*>(src);
        float* d = reinterpret_cast<float*>(dst);
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; ++i) d[i] = s[i];
        break;
      }
      case CopyKind::kDevice:
        backend.copy_on_device(dst, src, kCopyBytes);
        break;
    }
  });
  const double bytes = 2.0 * kCopyBytes;  // read + written
  const double bytes_per_s = bytes * static_cast<double>(state.iterations()) / seconds;
  target->copy_bytes_per_s = std::max(target->copy_bytes_per_s, bytes_per_s);
  state.SetBytesProcessed(static_cast<int64_t>(bytes * static_cast<double>(state.iterations())));
  state.counters["bytes"] = benchmark::Counter(bytes);
}

void bm_square_sgemm(benchmark::State& state, Target* target) {
  Backend& backend = *target->backend;
  SquareGemm gemm(backend, target->device ? kDeviceSquareGemm : kCpuSquareGemm);
  gemm.run(backend);  // warm up: thread pools, cuBLAS heuristics
  backend.synchronize();
  const double seconds = time_loop(state, *target, [&] { gemm.run(backend); });
  const double flops_per_s = gemm.flops() * static_cast<double>(state.iterations()) / seconds;
  target->gemm_flops_per_s = std::max(target->gemm_flops_per_s, flops_per_s);
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_s * 1e-9);
}

// ---------------------------------------------------------------------------
// The fused operations (fused: the backend's call; unfused: unfused.h, CPU)

const float kGradScale = 1.0f / 200.0f;  // 1/batch, as the model passes; value irrelevant to speed

void bm_bias_relu(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int cols = kArch.hidden[0];
  const double n = static_cast<double>(rows) * cols;
  auto y = to_device(b, host_normals(static_cast<size_t>(rows) * cols, 1, 1.0f));
  auto bias = to_device(b, host_normals(static_cast<size_t>(cols), 2, 0.01f));
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.bias_activation_forward(y.get(), bias.get(), rows, cols, Activation::kRelu);
    } else {
      cuvae::bench::unfused::bias_relu_forward(y.get(), bias.get(), rows, cols);
    }
  });
  report_bytes(state, *t, 4.0 * (fused ? 2.0 * n + cols : 4.0 * n + cols), seconds);
}

void bm_relu_bwd_bias(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int cols = kArch.hidden[0];
  const size_t count = static_cast<size_t>(rows) * cols;
  const double n = static_cast<double>(count);
  std::vector<float> host_y = host_normals(count, 3, 1.0f);
  for (float& v : host_y) v = cuvae::relu(v);
  auto y = to_device(b, host_y);
  auto dy = to_device(b, host_normals(count, 4, 0.01f));
  auto dbias = zeros<float>(b, static_cast<size_t>(cols));
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.activation_backward_bias_grad(dy.get(), y.get(), dbias.get(), rows, cols,
                                      Activation::kRelu, nullptr);
    } else {
      cuvae::bench::unfused::relu_backward_bias_grad(dy.get(), y.get(), dbias.get(), rows, cols);
    }
  });
  report_bytes(state, *t, 4.0 * (fused ? 3.0 * n + cols : 4.0 * n + cols), seconds);
}

void bm_binarize(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int cols = kArch.input_dim;
  const size_t count = static_cast<size_t>(rows) * cols;
  const double n = static_cast<double>(count);
  std::vector<uint8_t> pixels(count);  // host memory, as the trainer's dataset
  for (size_t i = 0; i < count; ++i) pixels[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
  auto x = zeros<float>(b, count);
  std::unique_ptr<DeviceArray<uint32_t>> bits;
  if (!fused) bits = std::make_unique<DeviceArray<uint32_t>>(b, count);
  const cuvae::RandomKey key{0, cuvae::RandomStream::kBinarize, 1};
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.upload_and_binarize(pixels.data(), rows, cols, 0, key, x.get());
    } else {
      cuvae::bench::unfused::upload_and_binarize(pixels.data(), rows, cols, 0, key, bits->get(),
                                                 x.get());
    }
  }, /*recordable=*/false);
  report_bytes(state, *t, fused ? 5.0 * n : 13.0 * n, seconds);
}

void bm_fill_normal(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const size_t count = static_cast<size_t>(rows) * kArch.latent_dim;
  const double n = static_cast<double>(count);
  auto out = zeros<float>(b, count);
  std::unique_ptr<DeviceArray<uint32_t>> bits;
  if (!fused) bits = std::make_unique<DeviceArray<uint32_t>>(b, count);
  const cuvae::RandomKey key{0, cuvae::RandomStream::kEps, 1};
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.fill_normal(out.get(), count, 0, key);
    } else {
      cuvae::bench::unfused::fill_normal(out.get(), count, 0, key, bits->get());
    }
  });
  report_bytes(state, *t, fused ? 4.0 * n : 12.0 * n, seconds);
}

// fill_normal's Philox blocks alone, on the CPU: drawn as fill_normal draws
// them, in chunks of 256 blocks into a 4 KiB buffer that stays in L1, so no
// memory traffic. Against fill_normal's time it says how much of that is the
// generator's arithmetic, which no memory system can speed up: where the
// two are close, fill_normal's bw_frac measures compute, not bandwidth.
void bm_fill_normal_philox_only(benchmark::State& state, Target* t, int rows) {
  const size_t count = static_cast<size_t>(rows) * kArch.latent_dim;
  constexpr long kChunk = 256;
  const long chunks = static_cast<long>(count / 4 + kChunk - 1) / kChunk;
  const long groups = static_cast<long>(count / 4);
  const cuvae::RandomKey key{0, cuvae::RandomStream::kEps, 1};
  const double seconds = time_loop(state, *t, [&] {
#pragma omp parallel for schedule(static) if (groups * 4 >= 16384)
    for (long c = 0; c < chunks; ++c) {
      alignas(64) uint32_t bits[4 * kChunk];
      const long first = c * kChunk, n = std::min(kChunk, groups - first);
      for (long g = 0; g < n; ++g) {
        const cuvae::Philox4 block = cuvae::random_block(key, static_cast<uint64_t>(first + g));
        for (int lane = 0; lane < 4; ++lane) bits[4 * g + lane] = block.v[lane];
      }
      benchmark::DoNotOptimize(bits);
    }
  });
  state.counters["ns_per_block"] = benchmark::Counter(
      1e9 * seconds / static_cast<double>(state.iterations()) / static_cast<double>(groups));
}

void bm_reparam_kl_fwd(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int latent = kArch.latent_dim;
  const size_t count = static_cast<size_t>(rows) * latent;
  const double n = static_cast<double>(count);
  // mean ~ N(0,1), log_std ~ 0.5 N(0,1) - 1: a trained encoder's range.
  std::vector<float> host_out = host_normals(2 * count, 5, 1.0f);
  for (int r = 0; r < rows; ++r) {
    float* log_std = host_out.data() + static_cast<size_t>(r) * 2 * latent + latent;
    for (int j = 0; j < latent; ++j) log_std[j] = 0.5f * log_std[j] - 1.0f;
  }
  auto encoder_out = to_device(b, host_out);
  auto eps = to_device(b, host_normals(count, 6, 1.0f));
  auto z = zeros<float>(b, count);
  auto row_kl = zeros<float>(b, static_cast<size_t>(rows));
  auto row_log_ratio = zeros<float>(b, static_cast<size_t>(rows));
  std::unique_ptr<DeviceArray<float>> kl_elem, ratio_elem;
  if (!fused) {
    kl_elem = std::make_unique<DeviceArray<float>>(b, count);
    ratio_elem = std::make_unique<DeviceArray<float>>(b, count);
  }
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.reparameterize_kl_forward(encoder_out.get(), eps.get(), rows, 1, latent, z.get(), row_kl.get(),
                                  row_log_ratio.get());
    } else {
      cuvae::bench::unfused::reparameterize_kl_forward(encoder_out.get(), eps.get(), rows, latent,
                                                       z.get(), kl_elem->get(), ratio_elem->get(),
                                                       row_kl.get(), row_log_ratio.get());
    }
  });
  report_bytes(state, *t, 4.0 * ((fused ? 4.0 * n : 13.0 * n) + 2.0 * rows), seconds);
}

void bm_reparam_kl_bwd(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int latent = kArch.latent_dim;
  const size_t count = static_cast<size_t>(rows) * latent;
  const double n = static_cast<double>(count);
  auto dz = to_device(b, host_normals(count, 7, 0.01f));
  auto encoder_out = to_device(b, host_normals(2 * count, 8, 0.5f));
  auto eps = to_device(b, host_normals(count, 9, 1.0f));
  auto d_encoder_out = zeros<float>(b, 2 * count);
  const float kl_scale = 1.0f / static_cast<float>(rows);
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.reparameterize_kl_backward(dz.get(), encoder_out.get(), eps.get(), rows, 1, latent, kl_scale,
                                   d_encoder_out.get());
    } else {
      cuvae::bench::unfused::reparameterize_kl_backward(
          dz.get(), encoder_out.get(), eps.get(), rows, latent, kl_scale, d_encoder_out.get());
    }
  });
  report_bytes(state, *t, 4.0 * (fused ? 6.0 * n : 7.0 * n), seconds);
}

void bm_bernoulli(benchmark::State& state, Target* t, int rows, bool fused) {
  Backend& b = *t->backend;
  const int cols = kArch.input_dim;
  const size_t count = static_cast<size_t>(rows) * cols;
  const double n = static_cast<double>(count);
  std::vector<float> host_x = host_normals(count, 10, 1.0f);
  for (float& v : host_x) v = v > 0.5f ? 1.0f : 0.0f;  // ~31% ones
  auto x = to_device(b, host_x);
  auto logits = to_device(b, host_normals(count, 11, 4.0f, -2.0f));
  auto dlogits = zeros<float>(b, count);
  auto row_logprob = zeros<float>(b, static_cast<size_t>(rows));
  std::unique_ptr<DeviceArray<float>> sigma, logprob;
  if (!fused) {
    sigma = std::make_unique<DeviceArray<float>>(b, count);
    logprob = std::make_unique<DeviceArray<float>>(b, count);
  }
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.bernoulli_logprob_and_grad(x.get(), logits.get(), rows, cols, 1, kGradScale, dlogits.get(),
                                   row_logprob.get());
    } else {
      cuvae::bench::unfused::bernoulli_logprob_and_grad(x.get(), logits.get(), rows, cols,
                                                        kGradScale, sigma->get(), logprob->get(),
                                                        dlogits.get(), row_logprob.get());
    }
  });
  report_bytes(state, *t, 4.0 * ((fused ? 3.0 * n : 9.0 * n) + rows), seconds);
}

void bm_adam(benchmark::State& state, Target* t, bool fused) {
  Backend& b = *t->backend;
  const size_t count = cuvae::ParameterLayout(kArch).size();
  auto params = to_device(b, host_normals(count, 12, 0.01f));
  auto grads = to_device(b, host_normals(count, 13, 1e-3f));
  auto m = zeros<float>(b, count);
  auto v = zeros<float>(b, count);
  const cuvae::AdamStep step = cuvae::make_adam_step(1e-3, 0.9, 0.999, 1e-8, 10);
  const double seconds = time_loop(state, *t, [&] {
    if (fused) {
      b.adam_step(params.get(), grads.get(), m.get(), v.get(), count, step);
    } else {
      cuvae::bench::unfused::adam_step(params.get(), grads.get(), m.get(), v.get(), count, step);
    }
  });
  report_bytes(state, *t, 4.0 * static_cast<double>(count) * (fused ? 7.0 : 10.0), seconds);
}

// ---------------------------------------------------------------------------
// The model's GEMMs

enum class GemmPass { kForward, kWeightGrad, kInputGrad };

void bm_layer_gemm(benchmark::State& state, Target* t, cuvae::DenseLayer layer, GemmPass pass,
                   int rows) {
  Backend& b = *t->backend;
  const size_t in = static_cast<size_t>(layer.in), out = static_cast<size_t>(layer.out);
  const size_t batch = static_cast<size_t>(rows);
  auto x = to_device(b, host_normals(batch * in, 14, 1.0f));    // layer input, rows x in
  auto w = to_device(b, host_normals(in * out, 15, 0.01f));     // weight, in x out
  auto dy = to_device(b, host_normals(batch * out, 16, 1.0f));  // output (or its gradient), rows x out
  auto result = zeros<float>(b, std::max(batch * out, std::max(in * out, batch * in)));
  // C (m x n) = op(A) (m x k) op(B) (k x n), as each pass calls it below.
  const int m = pass == GemmPass::kWeightGrad ? layer.in : rows;
  const int n = pass == GemmPass::kInputGrad ? layer.in : layer.out;
  const int k = pass == GemmPass::kForward      ? layer.in
                : pass == GemmPass::kWeightGrad ? rows
                                                : layer.out;
  const double seconds = time_loop(state, *t, [&] {
    switch (pass) {
      case GemmPass::kForward:  // Y = X W
        b.gemm(false, false, m, n, k, 1.0f, x.get(), layer.in, w.get(), layer.out, 0.0f,
               result.get(), layer.out);
        break;
      case GemmPass::kWeightGrad:  // dW = X^T dY
        b.gemm(true, false, m, n, k, 1.0f, x.get(), layer.in, dy.get(), layer.out, 0.0f,
               result.get(), layer.out);
        break;
      case GemmPass::kInputGrad:  // dX = dY W^T
        b.gemm(false, true, m, n, k, 1.0f, dy.get(), layer.out, w.get(), layer.out, 0.0f,
               result.get(), layer.in);
        break;
    }
  });
  const double flops_per_s =
      2.0 * m * n * static_cast<double>(k) * static_cast<double>(state.iterations()) / seconds;
  state.SetLabel("m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_s * 1e-9);
  state.counters["frac_of_peak"] = benchmark::Counter(flops_per_s / gemm_peak(*t));
}

// ---------------------------------------------------------------------------
// Registration

benchmark::internal::Benchmark* add(Target* t, const std::string& name,
                                    std::function<void(benchmark::State&)> fn) {
  benchmark::internal::Benchmark* bench =
      benchmark::RegisterBenchmark((t->name + "/" + name).c_str(), std::move(fn));
  bench->Unit(benchmark::kMicrosecond);
  if (t->device) {
    bench->UseManualTime();
  } else {
    bench->UseRealTime();
  }
  return bench;
}

void register_target(Target* t) {
  // References first: the benchmarks after them read their results.
  if (t->device) {
    add(t, "ref/copy/device", [t](benchmark::State& s) {
      bm_copy(s, t, CopyKind::kDevice);
    })->MinTime(kReferenceMinTime);
  } else {
    add(t, "ref/copy/memcpy", [t](benchmark::State& s) {
      bm_copy(s, t, CopyKind::kMemcpy);
    })->MinTime(kReferenceMinTime);
    add(t, "ref/copy/omp_memcpy", [t](benchmark::State& s) {
      bm_copy(s, t, CopyKind::kOmpMemcpy);
    })->MinTime(kReferenceMinTime);
    add(t, "ref/copy/omp_loop", [t](benchmark::State& s) {
      bm_copy(s, t, CopyKind::kOmpLoop);
    })->MinTime(kReferenceMinTime);
  }
  add(t, "ref/sgemm/" + std::to_string(t->device ? kDeviceSquareGemm : kCpuSquareGemm),
      [t](benchmark::State& s) { bm_square_sgemm(s, t); })
      ->MinTime(kReferenceMinTime);

  using RowsOp = void (*)(benchmark::State&, Target*, int, bool);
  const std::pair<const char*, RowsOp> ops[] = {
      {"bias_relu", bm_bias_relu},
      {"relu_bwd_bias", bm_relu_bwd_bias},
      {"binarize", bm_binarize},
      {"fill_normal", bm_fill_normal},
      {"reparam_kl_fwd", bm_reparam_kl_fwd},
      {"reparam_kl_bwd", bm_reparam_kl_bwd},
      {"bernoulli", bm_bernoulli},
  };
  for (const auto& [op_name, fn] : ops) {
    for (int rows : kBatches) {
      for (bool fused : {true, false}) {
        if (!fused && t->device) continue;  // the unfused passes are CPU code
        const std::string name =
            std::string(op_name) + (fused ? "/fused/" : "/unfused/") + std::to_string(rows);
        RowsOp op = fn;
        add(t, name, [t, op, rows, fused](benchmark::State& s) { op(s, t, rows, fused); });
      }
    }
  }
  if (!t->device) {
    for (int rows : kBatches) {
      add(t, "fill_normal/philox_only/" + std::to_string(rows),
          [t, rows](benchmark::State& s) { bm_fill_normal_philox_only(s, t, rows); });
    }
  }
  const std::string params = std::to_string(cuvae::ParameterLayout(kArch).size());
  add(t, "adam/fused/" + params, [t](benchmark::State& s) { bm_adam(s, t, true); });
  if (!t->device) {
    add(t, "adam/unfused/" + params, [t](benchmark::State& s) { bm_adam(s, t, false); });
  }

  const cuvae::ParameterLayout layout(kArch);
  const std::pair<const char*, GemmPass> passes[] = {
      {"fwd", GemmPass::kForward}, {"dW", GemmPass::kWeightGrad}, {"dX", GemmPass::kInputGrad}};
  for (const auto& [pass_name, pass] : passes) {
    for (const cuvae::DenseLayer& layer : layout.all_layers()) {
      // The model never computes d(input) of the encoder's first layer.
      if (pass == GemmPass::kInputGrad && layer.name == "encoder.0") continue;
      for (int rows : kBatches) {
        const GemmPass p = pass;
        add(t, "gemm/" + std::string(pass_name) + "/" + layer.name + "/" + std::to_string(rows),
            [t, layer, p, rows](benchmark::State& s) { bm_layer_gemm(s, t, layer, p, rows); });
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Context

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string model = line.substr(colon + 1);
        model.erase(0, model.find_first_not_of(" \t"));
        return model;
      }
    }
  }
  return "unknown CPU";
}

// The 1-minute load average, or -1 if unknown.
double load_average() {
  std::ifstream loadavg("/proc/loadavg");
  double load = -1.0;
  if (!(loadavg >> load)) return -1.0;
  return load;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// Prints Google Benchmark's flags after our own usage line.
void print_help() {
  std::printf(
      "vae-bench: microbenchmarks of cuvae's fused operations (fused vs unfused), its GEMM\n"
      "shapes, and the machine's copy bandwidth and square-SGEMM throughput.\n"
      "Default --benchmark_min_time is %s s. Google Benchmark's flags:\n",
      kDefaultMinTime);
  benchmark::PrintDefaultHelp();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cuvae::select_blas_kernel_at_startup(argv, true);  // as the vae binary: may restart it
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae-bench: error: %s\n", e.what());
    return 2;
  }
  cuvae::enable_flush_denormals_to_zero();  // as the vae binary runs
  // Our default minimum time goes first, so that one given on the command
  // line (parsed after it) wins.
  std::string min_time_flag = std::string("--benchmark_min_time=") + kDefaultMinTime;
  std::vector<char*> args(argv, argv + argc);
  args.insert(args.begin() + 1, min_time_flag.data());
  int args_count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&args_count, args.data(), print_help);
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  try {
    auto cpu = std::make_unique<Target>();
    cpu->name = "cpu";
    cpu->backend = cuvae::make_cpu_backend();
    g_targets.push_back(std::move(cpu));

    std::string why_not;
    std::string cuda_description;
    if (cuvae::cuda_available(&why_not)) {
      auto cuda = std::make_unique<Target>();
      cuda->name = "cuda";
      cuda->backend = cuvae::make_backend("cuda");
      cuda->device = true;
      cuda_description = cuda->backend->description();
      g_targets.push_back(std::move(cuda));
    } else {
      cuda_description = "not available: " + why_not;
    }

    const std::string machine =
        cpu_model() + ", " + std::to_string(std::thread::hardware_concurrency()) + " logical CPUs";
    const std::string date = utc_now();
    const std::string cpu_description = g_targets[0]->backend->description();
    benchmark::AddCustomContext("cuvae_machine", machine);
    benchmark::AddCustomContext("cuvae_date_utc", date);
    benchmark::AddCustomContext("cuvae_commit", CUVAE_GIT_COMMIT);
    benchmark::AddCustomContext("cuvae_cpu_backend", cpu_description);
    benchmark::AddCustomContext("cuvae_cuda_backend", cuda_description);
    // On stderr, like Google Benchmark's own context, so that stdout stays
    // pure JSON with --benchmark_format=json.
    std::fprintf(stderr, "vae-bench: machine: %s | date: %s | commit: %s | cpu: %s | cuda: %s\n",
                 machine.c_str(), date.c_str(), CUVAE_GIT_COMMIT, cpu_description.c_str(),
                 cuda_description.c_str());
    // A parallel region waits for its slowest thread: on a machine busy with
    // other work, each one can cost a scheduler time slice (milliseconds),
    // and the multi-threaded CPU timings measure the scheduler.
    const double load = load_average();
    if (omp_get_max_threads() > 1 && load >= 0.5) {
      std::fprintf(stderr,
                   "vae-bench: warning: load average %.2f before the run: other processes "
                   "compete with the %d OpenMP threads, so multi-threaded CPU timings may be "
                   "dominated by scheduling (OMP_NUM_THREADS=1 gives stable one-core numbers)\n",
                   load, omp_get_max_threads());
    }
    if (g_targets.size() == 1) {
      std::fprintf(stderr, "vae-bench: CUDA benchmarks not registered: %s\n", why_not.c_str());
    }

    for (const auto& target : g_targets) register_target(target.get());
    register_denormal_step_benchmarks(g_targets[0]->backend.get());
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae-bench: error: %s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  g_targets.clear();
  return 0;
}
