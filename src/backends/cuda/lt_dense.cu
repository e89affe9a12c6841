// Dense layers as cuBLASLt matmuls with fused epilogues (lt_dense.h says
// what each computes and how the row-major layer maps onto cuBLASLt).
#include "cuvae/backends/cuda/lt_dense.h"

#include <algorithm>

#include "cuvae/backends/cuda/cuda_check.h"

namespace cuvae {

namespace {

// The largest power of two (up to 256) that divides the address: what the
// heuristic must assume of a pointer (its default is 256 bytes).
uint32_t alignment_of(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  if (address == 0) return 256;
  return static_cast<uint32_t>(std::min<uintptr_t>(256, address & (~address + 1)));
}

template <typename T>
void set(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  CUVAE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attribute, &value, sizeof(value)));
}

template <typename T>
void set(cublasLtMatmulPreference_t preference, cublasLtMatmulPreferenceAttributes_t attribute,
         const T& value) {
  CUVAE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
}

}  // namespace

LtDense::LtDense(cudaStream_t stream, void* workspace, size_t workspace_bytes)
    : stream_(stream), workspace_(workspace), workspace_bytes_(workspace_bytes) {
  CUVAE_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

LtDense::~LtDense() {
  while (!plans_.empty()) destroy_and_erase(plans_.begin()->first);
  cublasLtDestroy(handle_);
}

LtDense::Plan& LtDense::plan(const Shape& s, const void* a, const void* b, const void* d,
                             const void* bias, const void* aux) {
  const std::vector<unsigned char> key =
      call_key(s.transpose_a, s.m, s.n, s.k, s.lda, s.ldb, s.ldd, static_cast<int>(s.epilogue),
               s.aux_ld, tf32_, alignment_of(a), alignment_of(b), alignment_of(d),
               alignment_of(bias), alignment_of(aux));
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  Plan& p = plans_[key];
  // Made once: a plan whose set-up threw is not kept (its descriptors go).
  struct EraseUnlessDone {
    LtDense& self;
    const std::vector<unsigned char>& key;
    bool done = false;
    ~EraseUnlessDone() {
      if (!done) self.destroy_and_erase(key);
    }
  } guard{*this, key};

  CUVAE_CUBLAS_CHECK(cublasLtMatmulDescCreate(
      &p.op, tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set(p.op, CUBLASLT_MATMUL_DESC_TRANSA, s.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(p.op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  set(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, s.epilogue);
  // The heuristic reads the bias and aux pointers' alignment from these.
  set(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  if (s.aux_ld != 0) {
    set(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
    set(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, s.aux_ld);
  }
  // Stored shapes: A is lda-major with m (or, transposed, k) rows.
  CUVAE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, s.transpose_a ? s.k : s.m,
                                                s.transpose_a ? s.m : s.k, s.lda));
  CUVAE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, s.k, s.n, s.ldb));
  CUVAE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, s.m, s.n, s.ldd));

  cublasLtMatmulPreference_t preference = nullptr;
  CUVAE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  cublasLtMatmulHeuristicResult_t result{};
  int found_count = 0;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  try {
    set(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace_bytes_);
    set(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment_of(a));
    set(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment_of(b));
    set(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment_of(d));
    set(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment_of(d));
    // The first (best-ranked) algorithm only: the ranking depends on the
    // device and the library, not on timing, so the choice, and the bits,
    // repeat from run to run.
    status = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.d, p.d, preference, 1,
                                            &result, &found_count);
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(preference);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(preference);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED ||
      (status == CUBLAS_STATUS_SUCCESS && (found_count == 0 || result.state != CUBLAS_STATUS_SUCCESS))) {
    p.supported = false;  // the result's other fields are only valid with state SUCCESS
    guard.done = true;
    return p;
  }
  CUVAE_CUBLAS_CHECK(status);
  p.algo = result.algo;
  p.supported = true;
  guard.done = true;
  return p;
}

void LtDense::destroy_and_erase(const std::vector<unsigned char>& key) noexcept {
  auto found = plans_.find(key);
  if (found == plans_.end()) return;
  Plan& p = found->second;
  if (p.op != nullptr) cublasLtMatmulDescDestroy(p.op);
  if (p.a != nullptr) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b != nullptr) cublasLtMatrixLayoutDestroy(p.b);
  if (p.d != nullptr) cublasLtMatrixLayoutDestroy(p.d);
  plans_.erase(found);
}

bool LtDense::run(Plan& p, const void* a, const void* b, void* d, const void* bias,
                  const void* aux, StepGraph* graph, const std::vector<unsigned char>& key) {
  // A replayed step checks the call against the recording instead of making it.
  if (graph != nullptr && !graph->call("cublasLtMatmul", key)) return true;
  set(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  if (aux != nullptr) set(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t status = cublasLtMatmul(handle_, p.op, &one, a, p.a, b, p.b, &zero, d, p.d,
                                               d, p.d, &p.algo, workspace_, workspace_bytes_, stream_);
  // The heuristic's algorithm is not guaranteed to run (cuBLAS docs on
  // cublasLtMatmulAlgoCheck): outside a CUDA Graph (so in a step's eager
  // first run, before any capture) the layer then goes unfused, now and
  // from then on. Inside a capture the call must not change: it throws.
  if (graph == nullptr &&
      (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_ARCH_MISMATCH)) {
    p.supported = false;
    return false;
  }
  CUVAE_CUBLAS_CHECK(status);
  return true;
}

bool LtDense::forward(const float* x, const float* w, const float* b, int rows, int in, int out,
                      Activation act, float* y, void* mask, StepGraph* graph) {
  const bool relu = act == Activation::kRelu;
  const bool with_mask = relu && mask != nullptr;
  written_masks_.erase(mask);  // written below only if this call is fused
  // The epilogues are BIAS and RELU(_AUX)_BIAS: no tanh (or any other) activation.
  if (act != Activation::kRelu && act != Activation::kIdentity) {
    ++counts_.unfused;
    return false;
  }
  // Y^T (out x rows) = W^T (out x in, stored lda = out) X^T (in x rows, ldb = in).
  const Shape shape{false, out, rows, in, out, in, out,
                    with_mask ? CUBLASLT_EPILOGUE_RELU_AUX_BIAS
                    : relu    ? CUBLASLT_EPILOGUE_RELU_BIAS
                              : CUBLASLT_EPILOGUE_BIAS,
                    with_mask ? mask_ld(out) : 0};
  const void* aux = with_mask ? mask : nullptr;
  // Below 16 bytes the bias may meet kernels that assume it (pytorch#194497,
  // a misaligned-address fault), and there is no preference to say so.
  if (alignment_of(b) < 16) {
    ++counts_.unfused;
    return false;
  }
  Plan& p = plan(shape, w, x, y, b, aux);
  if (!p.supported ||
      !run(p, w, x, y, b, aux, graph,
           call_key(0, rows, in, out, static_cast<int>(shape.epilogue), tf32_, x, w, b, y, aux))) {
    ++counts_.unfused;
    return false;
  }
  if (with_mask) written_masks_[mask] = {rows, out};
  ++counts_.fused;
  return true;
}

bool LtDense::backward_input(const float* da, const float* w, int rows, int in, int out,
                             const void* x_mask, float* dx, float* x_dbias, StepGraph* graph) {
  const auto written = written_masks_.find(x_mask);
  if (x_mask == nullptr || written == written_masks_.end() ||
      written->second != std::pair<int, int>{rows, in} || alignment_of(x_dbias) < 16) {
    ++counts_.unfused;
    return false;
  }
  // dX^T (in x rows) = W (in x out: the stored out x in W^T, transposed)
  // dA^T (out x rows, ldb = out); the ReLU gradient and the bias gradient
  // (length m = in, summed over the n = rows columns) in the epilogue.
  const Shape shape{true, in, rows, out, out, out, in, CUBLASLT_EPILOGUE_DRELU_BGRAD, mask_ld(in)};
  Plan& p = plan(shape, w, da, dx, x_dbias, x_mask);
  if (!p.supported ||
      !run(p, w, da, dx, x_dbias, x_mask, graph,
           call_key(1, rows, in, out, static_cast<int>(shape.epilogue), tf32_, da, w, x_mask, dx,
                    x_dbias))) {
    ++counts_.unfused;
    return false;
  }
  ++counts_.fused;
  return true;
}

}  // namespace cuvae
