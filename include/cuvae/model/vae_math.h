// The per-element math of the VAE's fused operations, written once.
//
// Every function here is CUVAE_HD: the CPU backend (src/backends/cpu/cpu_backend.cpp)
// calls it in plain loops and the CUDA kernels (kernels/) call the same code
// on the device. tests/model/test_vae_math.cpp checks each against its formula in
// double precision, extreme inputs included.
//
// Conventions: the model minimizes loss = -(batch mean of ELBO); gradients
// below are of that loss unless the name says otherwise. "log_std" is the log
// of the posterior's standard deviation, as in the seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuvae/model/hd.h"

namespace cuvae {

// ---------------------------------------------------------------------------
// exp, expm1 and log1p on the ranges the fused operations need, branch-free.
//
// On the device these are CUDA's expf and log1pf. On the host, glibc's are
// library calls that the compiler cannot vectorize (short of -ffast-math),
// and they made the per-pixel log-prob cost ~11 ns, the largest cost of a
// training step after the GEMMs. These versions use Cephes' single-precision
// polynomials (S. L. Moshier, "Methods and Programs for Mathematical
// Functions", 1989) with selects instead of branches, so the CPU loops
// vectorize; tests/model/test_vae_math.cpp holds them to a few ulps of the
// double-precision functions over their whole range.

namespace detail {

CUVAE_HD float float_from_bits(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

// exp(r) for x = n ln2 + r, |r| <= ln2/2: r from x and n with ln2 in two
// parts (the first exact in n ln2), then Cephes' degree-7 polynomial.
CUVAE_HD float exp_of_remainder(float x, int n) {
  const float nf = static_cast<float>(n);
  const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

}  // namespace detail

// exp(x) with x clamped to [-87.3, 88.3]: below, exp would be a denormal
// (we return ~1.2e-38, which changes no value we compute from it by more
// than that); above, it would overflow (we return ~2.4e38, as large as a
// float gets while staying finite).
CUVAE_HD float exp_clamped(float x) {
#if defined(__CUDA_ARCH__)
  return expf(fminf(fmaxf(x, -87.3365f), 88.3762f));
#else
  x = x > -87.3365f ? x : -87.3365f;
  x = x < 88.3762f ? x : 88.3762f;
  // x = n ln2 + r, |r| <= ln2/2, n = round(x / ln2) by truncating t +- 1/2
  // (int conversion vectorizes where floorf may not).
  const float t = x * 1.44269504088896341f;
  const int n = static_cast<int>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float exp_r = detail::exp_of_remainder(x, n);
  // * 2^n in two factors, each a normal float for n in [-126, 128]
  // (an arithmetic shift, not n / 2: the vectorized division by 2 of a
  // signed int costs a sign correction; either split gives the same bits).
  const int half = n >> 1;
  return exp_r * detail::float_from_bits(static_cast<uint32_t>(half + 127) << 23) *
         detail::float_from_bits(static_cast<uint32_t>(n - half + 127) << 23);
#endif
}

// exp(x) for x <= 0 (the Bernoulli log-prob's exp(-|f|)): exp_clamped's
// bits, with fewer operations on the host, where the Bernoulli pass is
// bound by them: no upper clamp, n = round(t) = (int)(t - 1/2) for t <= 0,
// and 2^n, n in [-126, 0], is one normal float, so one scaling (which rounds
// a subnormal result once, as exp_clamped's two scalings do). Tested equal
// to exp_clamped, bit for bit.
CUVAE_HD float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return exp_clamped(x);
#else
  x = x > -87.3365f ? x : -87.3365f;
  const float t = x * 1.44269504088896341f;
  const int n = static_cast<int>(t - 0.5f);
  return detail::exp_of_remainder(x, n) * detail::float_from_bits(static_cast<uint32_t>(n + 127) << 23);
#endif
}

// expm1(x) - x = x^2/2! + x^3/3! + ..., without the cancellation of
// subtracting x from expm1(x) when |x| is small: the series to x^9 for
// |x| < 1/2 (truncation error < 3e-10 relative), else expm1(x) - x, which
// loses no more than a factor 2.5 of expm1's error there.
CUVAE_HD float expm1_minus_identity(float x) {
#if defined(__CUDA_ARCH__)
  const float s = x;
#else
  // The series is used only for |x| < 1/2; clamped there, it stays finite for
  // any x, which the blend below needs (0 * inf would be NaN).
  const float s = x < -0.5f ? -0.5f : (x > 0.5f ? 0.5f : x);
#endif
  float p = 1.0f / 362880.0f;
  p = p * s + 1.0f / 40320.0f;
  p = p * s + 1.0f / 5040.0f;
  p = p * s + 1.0f / 720.0f;
  p = p * s + 1.0f / 120.0f;
  p = p * s + 1.0f / 24.0f;
  p = p * s + 1.0f / 6.0f;
  p = p * s + 0.5f;
  const float series = p * s * s;
#if defined(__CUDA_ARCH__)
  const float direct = expm1f(fminf(x, 88.3762f)) - x;  // clamped as on the host
  return fabsf(x) < 0.5f ? series : direct;
#else
  const float direct = (exp_clamped(x) - 1.0f) - x;
  // An arithmetic blend with weights 0 and 1 (exact), not `?:`: GCC 12 turns
  // a select between this polynomial and exp_clamped into a branch, and a
  // loop with a branch does not vectorize ("control flow in loop").
  const float small = fabsf(x) < 0.5f ? 1.0f : 0.0f;
  return small * series + (1.0f - small) * direct;
#endif
}

// expm1(x) = exp(x) - 1, accurate near 0 (through the series above).
CUVAE_HD float expm1_accurate(float x) { return x + expm1_minus_identity(x); }

namespace detail {

// log(2^k m) for m in [sqrt(1/2), sqrt(2)): Cephes' logf polynomial in
// x = m - 1, with ln2 in two parts (as in exp_clamped). Host only.
inline float log_reduced(float m, float k) {
  const float x = m - 1.0f;
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  float y = x * z * p;
  y += k * -2.12194440e-4f;
  y += -0.5f * z;
  return (x + y) + k * 0.693359375f;
}

}  // namespace detail

// log(u) for a normal float u > 0: u = 2^k m with m in [sqrt(1/2), sqrt(2))
// read off u's bits, then detail::log_reduced; branch-free, so loops over it
// vectorize. On the device, logf.
CUVAE_HD float log_positive(float u) {
#if defined(__CUDA_ARCH__)
  return logf(u);
#else
  uint32_t bits;
  memcpy(&bits, &u, sizeof bits);
  const float mantissa = detail::float_from_bits((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool halve = mantissa > 1.41421356237f;
  const float k = static_cast<float>(static_cast<int>((bits >> 23) & 0xffu) - 127 + (halve ? 1 : 0));
  return detail::log_reduced(halve ? 0.5f * mantissa : mantissa, k);
#endif
}

// log1p(e) for e in [0, 1]. log(u) with u = 1 + e rounded, times the
// correction e / (u - 1), which restores the bits of e lost in rounding u
// (D. Goldberg, "What every computer scientist should know about
// floating-point arithmetic", 1991, theorem 4); log1p(e) = e when u == 1.
CUVAE_HD float log1p_unit(float e) {
#if defined(__CUDA_ARCH__)
  return log1pf(e);
#else
  const float u = 1.0f + e;
  // u in [1, 2]: m = u or u/2, no need to read the exponent's bits.
  const bool halve = u > 1.41421356237f;
  const float log_u = detail::log_reduced(halve ? 0.5f * u : u, halve ? 1.0f : 0.0f);
  const float correction = e / (u - 1.0f);  // inf or nan when u == 1: not selected then
  return u == 1.0f ? e : log_u * correction;
#endif
}

// sin(2 pi t) and cos(2 pi t) for t in [0, 1) (Box-Muller's angle, in
// turns): 4t = q + f with q an integer and |f| <= 1/2, both exact, so the
// angle is q quarter turns plus a = f pi/2 in [-pi/4, pi/4], where Cephes'
// sinf and cosf polynomials hold to about an ulp; then rotate by q quarter
// turns. Branch-free, so loops over it vectorize. On the device, sinf and
// cosf of 2 pi t (as verified on a GPU; sincospif would be more exact).
CUVAE_HD void sincos_turns(float t, float* sine, float* cosine) {
#if defined(__CUDA_ARCH__)
  const float theta = 6.28318530717958647692f * t;
  *sine = sinf(theta);
  *cosine = cosf(theta);
#else
  const float four_t = 4.0f * t;
  const int q = static_cast<int>(four_t + 0.5f);
  const float a = (four_t - static_cast<float>(q)) * 1.57079632679489662f;
  const float z = a * a;
  const float sa = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * a + a;
  const float ca =
      ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
  const int quarter = q & 3;
  *cosine = quarter == 0 ? ca : quarter == 1 ? -sa : quarter == 2 ? -ca : sa;
  *sine = quarter == 0 ? sa : quarter == 1 ? ca : quarter == 2 ? -sa : -ca;
#endif
}

// Numerically stable sigmoid: exp() is only ever taken of a non-positive
// number, so it cannot overflow. sigma(f) = 1/(1+e^-f) = e^f/(1+e^f).
// sigmoid_given_exp takes e = exp(-|f|) so that callers that also need e
// (the Bernoulli log-prob) compute it once. One division of a selected
// numerator, not two branches: the CPU loops stay branch-free and vectorize.
CUVAE_HD float sigmoid_given_exp(float f, float e) { return (f >= 0.0f ? 1.0f : e) / (1.0f + e); }

// max(a, 0) as a select: fmaxf is a library call on the CPU unless the
// compiler may ignore NaNs, and both give 0 for a NaN input.
CUVAE_HD float positive_part(float a) { return a > 0.0f ? a : 0.0f; }
CUVAE_HD float sigmoid(float f) { return sigmoid_given_exp(f, exp_nonpositive(-fabsf(f))); }

// Bernoulli log-likelihood of a binary pixel x under logit f, and its
// derivative with respect to f:
//   log p(x|f) = x log sigma(f) + (1-x) log(1-sigma(f))
//              = x f - softplus(f),  softplus(f) = max(f,0) + log1p(e^-|f|)
//   d/df log p(x|f) = x - sigma(f)
// The softplus form never takes the log of a rounded-to-zero probability, so
// logits of +-100 give finite, exact-to-rounding values (e.g. x=0, f=100 gives
// -100, where log(1 - sigmoid(100)) in float would be log(0) = -inf).
CUVAE_HD float bernoulli_logprob_and_grad(float x, float f, float* dlogprob_df) {
  const float e = exp_nonpositive(-fabsf(f));
  *dlogprob_df = x - sigmoid_given_exp(f, e);
  // x f - max(f,0) is exact for x in {0,1}; log1p keeps the small tail.
  return x * f - positive_part(f) - log1p_unit(e);
}

// Reparameterization: z = mean + exp(log_std) * eps, eps ~ N(0,1).
CUVAE_HD float reparameterize(float mean, float log_std, float eps) {
  return mean + exp_clamped(log_std) * eps;
}

// KL(N(mean, exp(2 log_std)) || N(0,1)) for one latent dimension:
//   0.5 (exp(2 log_std) + mean^2 - 1 - 2 log_std)
// written with expm1 so that log_std near 0 (where exp(2s) - 1 - 2s ~ 2s^2)
// does not cancel to noise.
CUVAE_HD float kl_divergence_term(float mean, float log_std) {
  return 0.5f * (expm1_minus_identity(2.0f * log_std) + mean * mean);
}

// Backward of reparameterization + KL for one latent dimension. Given
// dz = dloss/dz (from the decoder) and kl_scale = dloss/dKL (1/batch for the
// batch-mean ELBO), the loss's gradient with respect to the encoder outputs:
//   dloss/dmean    = dz + kl_scale * mean
//   dloss/dlog_std = dz * exp(log_std) * eps + kl_scale * (exp(2 log_std) - 1)
CUVAE_HD void reparameterize_kl_backward(float dz, float mean, float log_std, float eps,
                                         float kl_scale, float* dmean, float* dlog_std) {
  *dmean = dz + kl_scale * mean;
  *dlog_std = dz * exp_clamped(log_std) * eps + kl_scale * expm1_accurate(2.0f * log_std);
}

// One latent dimension's share of log p(z) - log q(z|x), for importance
// sampling. With z = mean + exp(s) eps:
//   log N(z; 0, 1)            = -z^2/2 - log(2 pi)/2
//   log N(z; mean, exp(2 s))  = -eps^2/2 - s - log(2 pi)/2
// so the difference is (eps^2 - z^2)/2 + s; the constants cancel.
CUVAE_HD float log_prior_minus_log_posterior(float z, float eps, float log_std) {
  return 0.5f * (eps * eps - z * z) + log_std;
}

// Dynamic binarization (the seed's): a pixel p in 0..255 becomes 1 with
// probability p/255, given u ~ U[0,1): x = [p/255 > u]. Exactly 0 for p = 0
// and exactly 1 for p = 255.
CUVAE_HD float binarize(uint8_t pixel, float u) {
  return static_cast<float>(pixel) / 255.0f > u ? 1.0f : 0.0f;
}

// ReLU and its derivative expressed through its output (y > 0 iff a > 0), so
// the backward pass needs only the stored activations.
CUVAE_HD float relu(float a) { return positive_part(a); }
CUVAE_HD float relu_backward(float dy, float y) { return y > 0.0f ? dy : 0.0f; }

// tanh(a) = sign(a) (1 - e^-2|a|) / (1 + e^-2|a|) = -sign(a) t / (2 + t),
// t = expm1(-2|a|) in (-1, 0]: expm1 keeps the small-|a| digits that
// 1 - e^-2|a| would cancel (tanh(a) ~ a there), and e^-2|a| cannot overflow.
// Branch-free on the host (the loops vectorize); tanhf on the device.
CUVAE_HD float tanh_activation(float a) {
#if defined(__CUDA_ARCH__)
  return tanhf(a);
#else
  const float t = expm1_accurate(-2.0f * fabsf(a));
  const float magnitude = -t / (2.0f + t);
  return a < 0.0f ? -magnitude : magnitude;
#endif
}
// d tanh(a)/da = 1 - tanh(a)^2, from the layer's output y = tanh(a).
CUVAE_HD float tanh_backward(float dy, float y) { return dy * (1.0f - y * y); }

// A hidden layer's nonlinearity (the seed's ReLU, the IWAE paper's tanh), or
// none for the output layers.
enum class Activation { kIdentity, kRelu, kTanh };

CUVAE_HD float activate(float a, Activation act) {
  return act == Activation::kRelu ? relu(a) : act == Activation::kTanh ? tanh_activation(a) : a;
}
// dy * act'(a), from the output y = act(a).
CUVAE_HD float activation_backward(float dy, float y, Activation act) {
  return act == Activation::kRelu   ? relu_backward(dy, y)
         : act == Activation::kTanh ? tanh_backward(dy, y)
                                    : dy;
}

// ---------------------------------------------------------------------------
// K importance samples per image (Burda, Grosse & Salakhutdinov, ICLR 2016).
//
// Image b has K log-weights log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)
// (z_k = mean + exp(log_std) eps_k). The K-sample bound and its gradient:
//   L_K     = log (1/K) sum_k w_k = m + log(sum_k exp(log w_k - m)) - log K,
//             m = max_k log w_k (nothing exponentiated is above 1: no overflow,
//             and the largest term is exactly 1: no underflow of the sum)
//   dL_K    = sum_k w~_k d log w_k,   w~_k = exp(log w_k - m) / sum_j exp(log w_j - m)
// The sum of exponentials is added in double: K = 5000 terms in float would
// lose ~3 of its 7 digits.

// exp(log w - m), the max-shifted weight; its argument is <= 0.
CUVAE_HD double shifted_importance_weight(float log_w, float max_log_w) {
  return static_cast<double>(exp_nonpositive(log_w - max_log_w));
}

// L_K from m, the sum of the shifted weights and K.
CUVAE_HD double log_mean_exp_from(float max_log_w, double shifted_sum, int samples) {
  return static_cast<double>(max_log_w) + log(shifted_sum) - log(static_cast<double>(samples));
}

// The loss's gradient with respect to one sample's z_k, given dz_k from the
// decoder (the decoder's backward ran with weight scale * w~_k on that sample's
// Bernoulli gradient), for loss = -scale * L_K (scale = 1/B):
//   IWAE: log w_k also depends on z_k through log p(z_k) = -z_k^2/2 + c:
//           dz_k += scale w~_k z_k
//   DReG (Tucker, Lawson, Gu & Maddison, ICLR 2019), encoder's gradient
//   sum_k w~_k^2 d log w_k / d z_k dz_k/dphi, with q's parameters held fixed in
//   log q, so d log q / d z_k = -(z_k - mean)/sigma^2 = -eps_k/sigma:
//           dz_k = w~_k dz_k + scale w~_k^2 (z_k - eps_k / sigma)
//   (w~_k dz_k turns the decoder's w~_k weighting into w~_k^2).
CUVAE_HD float importance_weighted_dz(float dz, float z, float eps, float sigma, float weight,
                                      float scale, bool dreg) {
  return dreg ? weight * dz + scale * weight * weight * (z - eps / sigma)
              : dz + scale * weight * z;
}

// ---------------------------------------------------------------------------
// Objectives over groups of samples (Rainforth, Kosiorek, Le, Maddison, Igl,
// Wood & Teh, "Tighter Variational Bounds are Not Necessarily Better", ICML 2018).
//
// Image b has M groups of K samples (M K in all; sample k of group m in row
// (b M + m) K + k), log w_mk as above, and per group
//   L_K(m)   = log (1/K) sum_k w_mk      (importance_weights over the B M groups)
//   E_K(m)   = (1/K) sum_k log w_mk      (the K-sample ELBO with a sampled KL)
// The objectives (beta in [0, 1]):
//   miwae  M x K:  (1/M) sum_m L_K(m)
//   ciwae  beta:   beta E_K + (1 - beta) L_K                (M = 1)
//   piwae  M x K:  the decoder's gradient is IWAE's over all M K samples
//                  (L_MK), the encoder's MIWAE(M, K)'s, from the same samples
// Each is a sum over groups of bound(m) = beta E_K(m) + (1 - beta) L_K(m),
// divided by M (miwae: beta = 0; ciwae: M = 1; iwae: M = 1, beta = 0), so its
// gradient with respect to sample k's log w is one weight per sample,
//   v_mk = (beta / K + (1 - beta) w~_mk) / M,   w~_mk = w_mk / sum_j w_mj,
// and the v of an image sum to 1 (as IWAE's w~ do): the IWAE backward runs
// unchanged with v in place of w~.

// v_mk from the sample's normalized weight within its group.
CUVAE_HD float grouped_sample_weight(float group_weight, float beta, int samples, int groups) {
  return (beta / static_cast<float>(samples) + (1.0f - beta) * group_weight) /
         static_cast<float>(groups);
}

// bound(m) = beta E_K(m) + (1 - beta) L_K(m), from the group's sum of log w
// (in double) and its L_K; beta 0 is L_K exactly (no 0 * E term).
CUVAE_HD double grouped_bound_term(double log_w_sum, double group_bound, float beta, int samples) {
  return beta == 0.0f ? group_bound
                      : static_cast<double>(beta) * (log_w_sum / samples) +
                            (1.0 - static_cast<double>(beta)) * group_bound;
}

// grouped_objective_weights for image b: its M groups of K samples in the
// order (m, then k) that both backends use, so that they add the same
// doubles. `weights` (each normalized within its group) become the
// objective's per-sample weights v_mk in place; returns the image's bound,
// the mean over its groups of grouped_bound_term.
CUVAE_HD float grouped_objective_image(const float* row_logprob, const float* row_log_ratio,
                                       const float* group_bound, int b, int groups, int samples, float beta,
                                       float* weights) {
  double bound = 0.0;
  for (int m = 0; m < groups; ++m) {
    const size_t group = static_cast<size_t>(b) * groups + m;
    const size_t first = group * samples;
    double log_w_sum = 0.0;
    for (int k = 0; k < samples; ++k) {
      log_w_sum += static_cast<double>(row_logprob[first + k] + row_log_ratio[first + k]);
      weights[first + k] = grouped_sample_weight(weights[first + k], beta, samples, groups);
    }
    bound += grouped_bound_term(log_w_sum, static_cast<double>(group_bound[group]), beta, samples);
  }
  return static_cast<float>(bound / groups);
}

// ---------------------------------------------------------------------------
// More than one stochastic layer (the IWAE paper's second architecture).
//
// Stochastic layer s >= 2 draws h_s = mean + exp(log_std) eps from
// q(h_s|h_{s-1}) (reparameterize, one sample per row) and has a Gaussian
// decoder p(h_{s-1}|h_s) = N(m, exp(2 l)). Every layer's reparameterization
// adds log N(h_s; 0, 1) - log q(h_s|.) to log w (log_prior_minus_log_posterior);
// each decoder layer adds its density relative to the standard normal that
// the layer below already counted,
//   log N(h; m, e^2l) - log N(h; 0, 1) = (h^2 - u^2)/2 - l,   u = (h - m) e^-l,
// so that the sum over layers is log p(h_S) + sum_s log p(h_{s-1}|h_s) -
// sum_s log q(h_s|.), with no constant left to cancel.

// One dimension's log N(h; m, e^2l) - log N(h; 0, 1).
CUVAE_HD float gaussian_log_ratio_term(float h, float mean, float log_std) {
  const float u = (h - mean) * exp_clamped(-log_std);
  return 0.5f * (h - u) * (h + u) - log_std;
}

// The loss's gradient of that term, weighted g = scale * (the sample's
// objective weight), for loss = -g (term):
//   dloss/dm = -g u e^-l,  dloss/dl = g (1 - u^2),  dloss/dh = g (u e^-l - h).
CUVAE_HD void gaussian_log_ratio_backward(float h, float mean, float log_std, float g,
                                          float* dmean, float* dlog_std, float* dh) {
  const float inv_sigma = exp_clamped(-log_std);
  const float u = (h - mean) * inv_sigma;
  *dmean = -g * u * inv_sigma;
  *dlog_std = g * (1.0f - u * u);
  *dh = g * (u * inv_sigma - h);
}

// The backward of an upper layer's reparameterization (one sample per row,
// so the sample's own weight w where layer 1 has sum_k w~_k = 1): given dh =
// dloss/dh_s from everything above and beside it (the decoders, weighted w,
// and the layer above's encoder), the gradient to [mean | log_std] of
// q(h_s|h_{s-1}), for loss = -scale w log w:
//   dz  = importance_weighted_dz(dh, h, eps, sigma, w, scale, dreg)
//   dmean = dz,   dlog_std = dz sigma eps - (dreg ? 0 : scale w)
// DReG's encoder gradient is this with dreg (the weight w^2, q's parameters
// held fixed in log q). The gradient that continues to h_{s-1} is the full
// one, dreg false, in either case: with h_s fixed, log q(h_s|h_{s-1})
// still depends on h_{s-1} through q's mean and log_std (DReG stops only
// the parameters), and what flows down stays in the w weighting that the
// layer below turns into w^2.
CUVAE_HD void upper_latent_backward_term(float dh, float h, float eps, float log_std, float weight,
                                         float scale, bool dreg, float* dmean, float* dlog_std) {
  const float sigma = exp_clamped(log_std);
  const float dz = importance_weighted_dz(dh, h, eps, sigma, weight, scale, dreg);
  *dmean = dz;
  *dlog_std = dz * sigma * eps - (dreg ? 0.0f : scale * weight);
}

// Adam's hyper-parameters for one step t (1-based). 1 - beta, the step size
// lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t) are computed once per step on
// the host, in double: in float, 1 - 0.999f is 0.00099998713, off by 1.3e-5
// relative.
struct AdamStep {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float one_minus_beta1 = 0.1f;
  float one_minus_beta2 = 0.001f;
  float eps = 1e-8f;
  float step_size = 1e-3f;                // lr / (1 - beta1^t)
  float inv_sqrt_bias_correction2 = 1.0f;  // 1 / sqrt(1 - beta2^t)
};

inline AdamStep make_adam_step(double lr, double beta1, double beta2, double eps, uint64_t t) {
  AdamStep s;
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.eps = static_cast<float>(eps);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(t))));
  s.inv_sqrt_bias_correction2 =
      static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t))));
  return s;
}

// Adam (Kingma & Ba 2015, Algorithm 1), as in the seed, descending the loss:
//   m = beta1 m + (1 - beta1) g
//   v = beta2 v + (1 - beta2) g^2
//   p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// written as PyTorch's Adam writes it,
//   p = p - step_size * m / (sqrt(v) * inv_sqrt_bias_correction2 + eps),
// so that an element costs one division and one square root: with the bias
// corrections divided per element (three divisions) the CPU's divider, not
// memory, bounded the step (0.35 ms a step over the 425,284 parameters on one
// AVX-512 core; docs/results/2026-12-02-cpu/adam.md).
CUVAE_HD void adam_step(float* param, float* m, float* v, float grad, const AdamStep& s) {
  const float m_new = s.beta1 * *m + s.one_minus_beta1 * grad;
  const float v_new = s.beta2 * *v + s.one_minus_beta2 * grad * grad;
  *m = m_new;
  *v = v_new;
  *param -= s.step_size * m_new / (sqrtf(v_new) * s.inv_sqrt_bias_correction2 + s.eps);
}

}  // namespace cuvae
