// Launch geometry shared by the element-wise kernels, and the one way every
// fused kernel is launched: straight onto the stream, through the step's
// CUDA Graph (include/cuvae/backends/cuda/step_graph.h) while one is captured
// or replayed, or, for a pack's members, collected and launched once for all
// of them (collected_step.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "cuvae/backends/cuda/collected_step.h"
#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "cuvae/backends/cuda/step_graph.h"

namespace cuvae::kernels {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, no
// more than the items need (65535 keeps within every grid limit).
inline unsigned int blocks_for(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<size_t>(1, std::min<size_t>(blocks, 65535)));
}

// A grid-stride loop with a 32-bit index over `count` items must not wrap:
// count plus one grid's threads (blocks_for's most) stays below 2^32.
inline void check_32bit_grid_stride(const char* what, size_t count) {
  if (count > 0xffffffffu - size_t{65535} * kThreads) {
    throw Error(std::string(what) + ": " + std::to_string(count) +
                " elements is more than this kernel's 32-bit indices allow");
  }
}

// images * samples sample rows, as an int (the rows of the decoder's GEMMs).
inline int sample_rows(const char* what, int images, int samples) {
  const long long rows = static_cast<long long>(images) * samples;
  if (images < 0 || samples < 1 || rows > 0x7fffffff) {
    throw Error(std::string(what) + ": " + std::to_string(images) + " images x " +
                std::to_string(samples) +
                " samples (K must be at least 1 and the sample rows at most 2^31 - 1)");
  }
  return static_cast<int>(rows);
}

template <typename T>
struct Exactly {
  using type = T;
};

// ---- kernels as bodies
// Every fused kernel is written as a __device__ function of its parameters,
// its body (e.g. adam_step_kernel in adam.cu), and launched as launch<body>:
// single_kernel<body> for one model, or, for a pack's members in lock step
// (collected_step.h), batched_kernel<body>, one launch for all of them:
// blockIdx.z picks the member, whose arguments come in the kernel's
// parameters (up to kMaxBatchParamBytes of them, so one launch serves up to
// a few hundred members; more take more launches). A body uses blockIdx.x/y,
// gridDim.x/y and its own shared memory, never blockIdx.z.

// The parameters as one trivially copyable aggregate (no std::tuple: its
// copy is not trivial, and its bytes are what a graph node compares).
template <typename... P>
struct Args;
template <>
struct Args<> {};
template <typename H, typename... T>
struct Args<H, T...> {
  H head;
  Args<T...> tail;
};

inline void assign(Args<>&) {}
template <typename H, typename... T>
void assign(Args<H, T...>& a, H head, T... tail) {
  a.head = head;
  assign(a.tail, tail...);
}

template <auto Body, typename... Done>
__device__ __forceinline__ void call_body(const Args<>&, Done... done) {
  Body(done...);
}
template <auto Body, typename H, typename... T, typename... Done>
__device__ __forceinline__ void call_body(const Args<H, T...>& a, Done... done) {
  call_body<Body>(a.tail, done..., a.head);
}

template <auto Body, typename... P>
__global__ void single_kernel(P... p) {
  Body(p...);
}

template <typename A, int N>
struct Batch {
  A members[N];
};

// __grid_constant__: the members' arguments stay in the parameter space,
// read in place, never copied into each thread's local memory.
template <auto Body, int N, typename... P>
__global__ void batched_kernel(__grid_constant__ const Batch<Args<P...>, N> batch) {
  call_body<Body>(batch.members[blockIdx.z]);
}

// CUDA 12.1+ on Volta and newer takes up to 32,764 bytes of kernel parameters.
constexpr size_t kMaxBatchParamBytes = 32000;
// Packs of up to 16 members pass 16 members' arguments; larger ones as many
// as fit (never fewer than 16: no body has parameters of 2,000 bytes).
constexpr int kSmallBatch = 16;
template <typename A>
constexpr int large_batch() {
  const size_t fit = kMaxBatchParamBytes / sizeof(A);
  return static_cast<int>(fit < kSmallBatch ? kSmallBatch : (fit > 1024 ? 1024 : fit));
}

// A kernel's launch: into the step graph when one is captured or replayed,
// else straight onto the stream.
inline void launch_function(const LaunchTarget& on, const void* function, dim3 grid, dim3 block,
                            size_t shared_bytes, void** argv, const size_t* sizes, int count) {
  if (on.graph != nullptr) {
    on.graph->kernel(function, grid, block, shared_bytes, argv, sizes, count, on.stream);
  } else {
    CUVAE_CUDA_CHECK(cudaLaunchKernel(function, grid, block, argv, shared_bytes, on.stream));
  }
}

template <auto Body>
struct BodyOf;
template <typename... P, void (*F)(P...)>
struct BodyOf<F> {
  using Arguments = Args<P...>;

  static void launch(const LaunchTarget& on, dim3 grid, dim3 block, size_t shared_bytes,
                     typename Exactly<P>::type... args) {
    if (grid.z != 1) throw Error("a fused kernel's grid has one z layer (the member of a batched launch)");
    if (on.collect != nullptr) {  // a pack member's step being collected: recorded, not run
      Arguments a;
      std::memset(static_cast<void*>(&a), 0, sizeof a);  // the padding too: a graph node compares these bytes
      assign(a, args...);
      CollectedCall c;
      c.kind = CollectedCall::Kind::kKernel;
      c.function = reinterpret_cast<const void*>(&single_kernel<F, P...>);
      c.grid = grid;
      c.block = block;
      c.shared_bytes = shared_bytes;
      const auto* bytes = reinterpret_cast<const unsigned char*>(&a);
      c.args.assign(bytes, bytes + sizeof a);
      c.launch_batched = &launch_batched;
      on.collect->push_back(std::move(c));
      return;
    }
    void* argv[] = {static_cast<void*>(&args)..., nullptr};
    const size_t sizes[] = {sizeof(P)..., 0};
    launch_function(on, reinterpret_cast<const void*>(&single_kernel<F, P...>), grid, block, shared_bytes,
                    argv, sizes, static_cast<int>(sizeof...(P)));
  }

  template <int N>
  static void launch_chunk(const LaunchTarget& on, dim3 grid, dim3 block, size_t shared_bytes,
                           const unsigned char* const* args, int count) {
    Batch<Arguments, N> batch;
    std::memset(static_cast<void*>(&batch), 0, sizeof batch);
    for (int i = 0; i < count; ++i) std::memcpy(static_cast<void*>(&batch.members[i]), args[i], sizeof(Arguments));
    void* argv[] = {&batch};
    const size_t sizes[] = {sizeof batch};
    launch_function(on, reinterpret_cast<const void*>(&batched_kernel<F, N, P...>),
                    dim3(grid.x, grid.y, static_cast<unsigned int>(count)), block, shared_bytes, argv, sizes, 1);
  }

  // `count` members' launches (collected by launch above) as one, or as
  // few as the parameter space allows.
  static void launch_batched(const LaunchTarget& on, dim3 grid, dim3 block, size_t shared_bytes,
                             const unsigned char* const* args, int count) {
    constexpr int kLarge = large_batch<Arguments>();
    for (int first = 0; first < count;) {
      const int n = std::min(count - first, kLarge);
      if (n <= kSmallBatch) {
        launch_chunk<kSmallBatch>(on, grid, block, shared_bytes, args + first, n);
      } else {
        launch_chunk<kLarge>(on, grid, block, shared_bytes, args + first, n);
      }
      first += n;
    }
  }
};

// Body<<<grid, block, shared_bytes, on.stream>>>(args...) as single_kernel,
// checked; or recorded in on.collect. The arguments are converted to the
// body's parameter types first, so the bytes a graph node compares and
// receives are exactly the parameters'.
template <auto Body, typename... A>
void launch(const LaunchTarget& on, dim3 grid, dim3 block, size_t shared_bytes, A... args) {
  BodyOf<Body>::launch(on, grid, block, shared_bytes, args...);
}

}  // namespace cuvae::kernels
