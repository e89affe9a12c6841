// The shared per-element math (vae_math.h, philox.h) against its formulas
// evaluated in double precision, extreme inputs included.
//
// Tolerances: a float function of a few operations is within a few ulps of
// the double formula; we allow a relative error of 1e-5 (about 80 float ulps)
// plus an absolute 1e-6 for values near zero, which still catches any wrong
// sign, factor or term.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include "cuvae/model/philox.h"
#include "cuvae/model/vae_math.h"

namespace cuvae {
namespace {

void expect_close(double actual, double expected, double rel = 1e-5, double abs = 1e-6) {
  EXPECT_TRUE(std::isfinite(actual)) << "actual " << actual << " expected " << expected;
  EXPECT_LE(std::fabs(actual - expected), abs + rel * std::fabs(expected))
      << "actual " << actual << " expected " << expected;
}

// log sigma(f) and log(1 - sigma(f)) in double, stably, as the reference.
double log_sigmoid(double f) { return f >= 0 ? -std::log1p(std::exp(-f)) : f - std::log1p(std::exp(f)); }

// The host's vectorizable exp and log1p over their whole input range, on a
// dense grid (2 million points each, plus a geometric sweep of tiny e),
// against double precision: within 2.5e-7 relative error, i.e. 2 to 4 float
// ulps (glibc's expf and log1pf are within ~1 ulp; ours measured 1.4 and 2.8).
TEST(VaeMath, ExpAndLog1pAreAccurateOverTheirRanges) {
  double worst_exp = 0, worst_log1p = 0;
  const int n = 2000000;
  for (int i = 0; i <= n; ++i) {
    const float x = -87.0f * static_cast<float>(i) / n;
    const double exact = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::fabs(exp_nonpositive(x) - exact) / exact);
    const float e = static_cast<float>(i) / n;
    if (e > 0) {
      const double exact_log1p = std::log1p(static_cast<double>(e));
      worst_log1p = std::max(worst_log1p, std::fabs(log1p_unit(e) - exact_log1p) / exact_log1p);
    }
  }
  // From the smallest normal float, not 1e-38 (a subnormal): the tests run
  // with DAZ as the binaries do (docs/numerics.md, "Flush-to-zero"), under which a
  // subnormal e reads as 0 and this loop never ended.
  for (float e = std::numeric_limits<float>::min(); e < 1e-3f; e *= 1.01f) {
    const double exact = std::log1p(static_cast<double>(e));
    worst_log1p = std::max(worst_log1p, std::fabs(log1p_unit(e) - exact) / exact);
  }
  EXPECT_EQ(log1p_unit(0.0f), 0.0f);
  EXPECT_EQ(exp_nonpositive(0.0f), 1.0f);
  EXPECT_GT(exp_nonpositive(-1000.0f), 0.0f);  // clamped, not 0: no 0 * inf later
  EXPECT_LT(exp_nonpositive(-1000.0f), 1.2e-38f);
  std::printf("  worst relative error: exp %.3g, log1p %.3g\n", worst_exp, worst_log1p);
  EXPECT_LT(worst_exp, 2.5e-7);
  EXPECT_LT(worst_log1p, 2.5e-7);
}

// Box-Muller's log and sin/cos (the host's branch-free polynomials) against
// double precision: log over (0, 1] on a dense grid plus every power of two
// down to 2^-126 (relative 2.5e-7, as exp and log1p above), and sin/cos of
// 2 pi t over [0, 1) (absolute 2.5e-7: near their zeros a relative measure
// would only measure the rounding of t).
TEST(VaeMath, LogAndSincosForBoxMullerAreAccurate) {
  double worst_log = 0, worst_sincos = 0;
  const int n = 2000000;
  for (int i = 1; i <= n; ++i) {
    const float u = static_cast<float>(i) / n;
    const double exact = std::log(static_cast<double>(u));
    if (u != 1.0f) worst_log = std::max(worst_log, std::fabs(log_positive(u) - exact) / std::fabs(exact));
    const float t = static_cast<float>(i - 1) / n;
    float sine, cosine;
    sincos_turns(t, &sine, &cosine);
    const double angle = 2.0 * M_PI * static_cast<double>(t);
    worst_sincos = std::max({worst_sincos, std::fabs(sine - std::sin(angle)), std::fabs(cosine - std::cos(angle))});
  }
  for (int k = -126; k <= 0; ++k) {
    const float u = std::ldexp(1.0f, k) * 1.2345f;
    if (u < 1.0f) worst_log = std::max(worst_log, std::fabs(log_positive(u) - std::log(static_cast<double>(u))) /
                                                      std::fabs(std::log(static_cast<double>(u))));
  }
  EXPECT_EQ(log_positive(1.0f), 0.0f);
  std::printf("  worst error: log relative %.3g, sin/cos absolute %.3g\n", worst_log, worst_sincos);
  EXPECT_LT(worst_log, 2.5e-7);
  EXPECT_LT(worst_sincos, 2.5e-7);
}

// exp over its whole clamped range, and expm1(x) - x (the KL's form) near
// 0 where the naive difference cancels: within 6e-7 relative, about 5 ulps
// (just above |x| = 1/2, expm1(x) - x = e^x - 1 - x amplifies exp's error by
// e^x / (e^x - 1 - x) ~ 11; measured worst 5.3e-7 there).
TEST(VaeMath, ExpAndExpm1MinusIdentityAreAccurate) {
  double worst_exp = 0, worst_expm1 = 0;
  for (int i = -1000000; i <= 1000000; ++i) {
    const float x = (i < 0 ? 87.0f : 88.0f) * static_cast<float>(i) / 1000000;
    const double exact = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::fabs(exp_clamped(x) - exact) / exact);
    const float y = 20.0f * static_cast<float>(i) / 1000000;
    if (y != 0) {
      const double exact_m = std::expm1(static_cast<double>(y)) - y;
      worst_expm1 = std::max(worst_expm1, std::fabs(expm1_minus_identity(y) - exact_m) / std::fabs(exact_m));
    }
  }
  for (float y = 1e-15f; y < 1.0f; y *= 1.01f) {  // y^2 stays a normal float
    for (float sign : {-1.0f, 1.0f}) {
      // In double too, expm1(y) - y cancels for tiny y: use its series there.
      const double d = static_cast<double>(sign * y);
      const double exact_m = y < 1e-3f ? d * d * (0.5 + d / 6 + d * d / 24) : std::expm1(d) - d;
      worst_expm1 = std::max(worst_expm1, std::fabs(expm1_minus_identity(sign * y) - exact_m) / exact_m);
    }
  }
  EXPECT_TRUE(std::isfinite(exp_clamped(1000.0f)));
  std::printf("  worst relative error: exp %.3g, expm1(x) - x %.3g\n", worst_exp, worst_expm1);
  EXPECT_LT(worst_exp, 2.5e-7);
  EXPECT_LT(worst_expm1, 6e-7);
}

// exp_nonpositive is exp_clamped with fewer operations for x <= 0: the same
// bits for every 101st float in [-100, 0] (the clamp's region and the subnormal
// boundary included), -0, and NaN (clamped, as exp_clamped does).
TEST(VaeMath, ExpNonpositiveIsExpClampedBitForBit) {
  auto bits = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  };
  long checked = 0, differing = 0;
  for (uint32_t b = 0x80000000u; b <= 0xC2C80000u; b += 101) {  // -0 to -100, every 101st float
    float x;
    std::memcpy(&x, &b, sizeof x);
    differing += bits(exp_nonpositive(x)) != bits(exp_clamped(x));
    ++checked;
  }
  for (float x : {-0.0f, 0.0f, -87.3365f, -87.33655f, -87.0f, -86.5f, -0.5f, -1e-30f, std::nanf("")}) {
    differing += bits(exp_nonpositive(x)) != bits(exp_clamped(x));
    ++checked;
  }
  EXPECT_EQ(differing, 0) << "of " << checked;
}

TEST(VaeMath, SigmoidMatchesDoubleIncludingExtremes) {
  for (float f : {-100.0f, -50.0f, -10.0f, -1.0f, -1e-4f, 0.0f, 1e-4f, 1.0f, 10.0f, 50.0f, 100.0f}) {
    expect_close(sigmoid(f), 1.0 / (1.0 + std::exp(-static_cast<double>(f))), 1e-6, 1e-30);
  }
  EXPECT_EQ(sigmoid(100.0f), 1.0f);
  EXPECT_GT(sigmoid(-100.0f), 0.0f);  // never 0: log(sigmoid) stays finite
}

TEST(VaeMath, BernoulliLogProbAndGradMatchFormulaAtExtremeLogits) {
  for (float x : {0.0f, 1.0f}) {
    for (float f : {-100.0f, -50.0f, -20.0f, -3.0f, -0.5f, 0.0f, 0.5f, 3.0f, 20.0f, 50.0f, 100.0f}) {
      float grad = 0.0f;
      const float logp = bernoulli_logprob_and_grad(x, f, &grad);
      // x log sigma(f) + (1 - x) log(1 - sigma(f)), log(1 - sigma(f)) = log sigma(-f)
      const double expected = x * log_sigmoid(f) + (1 - x) * log_sigmoid(-static_cast<double>(f));
      const double expected_grad = x - 1.0 / (1.0 + std::exp(-static_cast<double>(f)));
      SCOPED_TRACE(testing::Message() << "x=" << x << " f=" << f);
      expect_close(logp, expected, 1e-6, 1e-7);
      expect_close(grad, expected_grad, 1e-6, 1e-7);
      EXPECT_LE(logp, 0.0f);
    }
  }
  // The cases where the naive formula gives log(0) = -inf or 0 * inf = nan.
  float grad;
  EXPECT_FLOAT_EQ(bernoulli_logprob_and_grad(0.0f, 100.0f, &grad), -100.0f);
  EXPECT_FLOAT_EQ(grad, -1.0f);
  EXPECT_FLOAT_EQ(bernoulli_logprob_and_grad(1.0f, -100.0f, &grad), -100.0f);
  EXPECT_FLOAT_EQ(grad, 1.0f);
}

TEST(VaeMath, ReparameterizeAndKlMatchFormulas) {
  for (float mean : {-3.0f, 0.0f, 0.7f}) {
    for (float log_std : {-50.0f, -20.0f, -1.0f, -1e-3f, 0.0f, 1e-3f, 1.0f, 20.0f, 40.0f}) {
      const double m = mean, s = log_std, e = 0.37;
      SCOPED_TRACE(testing::Message() << "mean=" << mean << " log_std=" << log_std);
      expect_close(reparameterize(mean, log_std, 0.37f), m + std::exp(s) * e);
      // 0.5 (exp(2s) + m^2 - 1 - 2s)
      const double kl = 0.5 * (std::exp(2 * s) + m * m - 1 - 2 * s);
      expect_close(kl_divergence_term(mean, log_std), kl, 1e-5, 1e-9);
      EXPECT_GE(kl_divergence_term(mean, log_std), 0.0f);
    }
  }
  // Near log_std = 0 the KL is ~ s^2: the expm1 form keeps its digits.
  expect_close(kl_divergence_term(0.0f, 1e-4f), 0.5 * (std::expm1(2e-4) - 2e-4), 1e-3, 0);
}

TEST(VaeMath, ReparameterizeKlBackwardMatchesItsFormulaAndFiniteDifferences) {
  // loss = dz * z + kl_scale * KL as a function of (mean, log_std).
  const float dz = 0.7f, eps = -1.3f, scale = 0.25f;
  auto loss = [&](double m, double s) {
    return dz * (m + std::exp(s) * eps) + scale * 0.5 * (std::exp(2 * s) + m * m - 1 - 2 * s);
  };
  for (float mean : {-2.0f, 0.3f}) {
    for (float log_std : {-50.0f, -20.0f, -0.5f, 0.0f, 0.8f, 10.0f, 40.0f}) {
      float dmean, dlog_std;
      reparameterize_kl_backward(dz, mean, log_std, eps, scale, &dmean, &dlog_std);
      SCOPED_TRACE(testing::Message() << "mean=" << mean << " log_std=" << log_std);
      // The derivative's formula in double, at every log_std.
      const double s = log_std;
      expect_close(dmean, dz + scale * static_cast<double>(mean));
      expect_close(dlog_std, dz * std::exp(s) * eps + scale * (std::exp(2 * s) - 1));
      // Finite differences in double where they are accurate (the exp(2s)
      // terms make the difference quotient cancel for large |log_std|).
      if (std::fabs(log_std) <= 1.0f) {
        const double h = 1e-6;
        expect_close(dmean, (loss(mean + h, s) - loss(mean - h, s)) / (2 * h), 1e-5, 1e-6);
        expect_close(dlog_std, (loss(mean, s + h) - loss(mean, s - h)) / (2 * h), 1e-5, 1e-6);
      }
    }
  }
}

TEST(VaeMath, LogPriorMinusLogPosteriorMatchesDensities) {
  const double m = 0.4, s = -0.7, e = 1.1, z = m + std::exp(s) * e;
  const double log_prior = -0.5 * z * z - 0.5 * std::log(2 * M_PI);
  const double sd = std::exp(s);
  const double log_post = -0.5 * ((z - m) / sd) * ((z - m) / sd) - std::log(sd) - 0.5 * std::log(2 * M_PI);
  expect_close(log_prior_minus_log_posterior(static_cast<float>(z), static_cast<float>(e),
                                             static_cast<float>(s)),
               log_prior - log_post);
}

TEST(VaeMath, BinarizeIsExactAtTheEnds) {
  for (float u : {0.0f, 1e-7f, 0.5f, 0.99999994f}) {
    EXPECT_EQ(binarize(0, u), 0.0f);
    EXPECT_EQ(binarize(255, u), 1.0f);
  }
  EXPECT_EQ(binarize(128, 0.5f), 1.0f);   // 128/255 = 0.502 > 0.5
  EXPECT_EQ(binarize(127, 0.5f), 0.0f);   // 0.498
}

TEST(VaeMath, BinarizationFrequencyMatchesPixelIntensity) {
  const RandomKey key{7, RandomStream::kBinarize, 3};
  for (int pixel : {1, 64, 200}) {
    int ones = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) ones += binarize(static_cast<uint8_t>(pixel), random_uniform(key, i)) > 0;
    const double p = pixel / 255.0;
    // Binomial standard deviation sqrt(p(1-p)/n) <= 0.0012; 5 sigma.
    EXPECT_NEAR(static_cast<double>(ones) / n, p, 5 * std::sqrt(p * (1 - p) / n));
  }
}

TEST(VaeMath, ReluAndBackward) {
  EXPECT_EQ(relu(-2.0f), 0.0f);
  EXPECT_EQ(relu(3.0f), 3.0f);
  EXPECT_EQ(relu_backward(5.0f, 0.0f), 0.0f);
  EXPECT_EQ(relu_backward(5.0f, 0.1f), 5.0f);
}

// Known-answer vectors of Philox4x32-10 from the Random123 distribution
// (kat_vectors): counter, key -> output.
TEST(Philox, MatchesRandom123KnownAnswers) {
  struct Case {
    Philox4 counter;
    uint32_t key0, key1;
    Philox4 expected;
  } cases[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Case& c : cases) {
    const Philox4 out = philox4x32_10(c.counter, c.key0, c.key1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out.v[i], c.expected.v[i]) << "word " << i;
  }
}

TEST(Philox, UniformsAndNormalsHaveTheRightMoments) {
  const RandomKey key{42, RandomStream::kEps, 1};
  const int n = 400000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = random_uniform(key, i), z = random_normal(key, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ASSERT_TRUE(std::isfinite(z));
    su += u; su2 += u * u; sn += z; sn2 += z * z;
  }
  // Means within 5 standard errors; variances within 2%.
  EXPECT_NEAR(su / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12, 0.02 / 12);
  EXPECT_NEAR(sn / n, 0.0, 5 * std::sqrt(1.0 / n));
  EXPECT_NEAR(sn2 / n, 1.0, 0.02);
}

TEST(Philox, StreamsStepsAndSeedsAreDistinct) {
  std::set<uint32_t> seen;
  for (uint64_t seed : {0ull, 1ull}) {
    for (auto stream : {RandomStream::kBinarize, RandomStream::kEps}) {
      for (uint64_t step : {1ull, 2ull, (1ull << 32) + 1}) {
        seen.insert(random_block(RandomKey{seed, stream, step}, 0).v[0]);
      }
    }
  }
  EXPECT_EQ(seen.size(), 12u);
}

TEST(Adam, TwoStepsMatchHandComputedValues) {
  // Step 1, g = 0.5: m = 0.05, v = 0.00025, m_hat = 0.5, v_hat = 0.25,
  //   p = 1 - 0.001 * 0.5 / (0.5 + 1e-8) = 0.99900000002
  // Step 2, g = -1:  m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975,
  //   m_hat = -0.055 / 0.19 = -0.28947368, v_hat = 0.00124975 / 0.001999 = 0.62518759,
  //   p = 0.99900000002 + 0.001 * 0.28947368 / (0.79068805 + 1e-8) = 0.99936610
  float p = 1.0f, m = 0.0f, v = 0.0f;
  adam_step(&p, &m, &v, 0.5f, make_adam_step(1e-3, 0.9, 0.999, 1e-8, 1));
  EXPECT_FLOAT_EQ(m, 0.05f);
  EXPECT_FLOAT_EQ(v, 0.00025f);
  EXPECT_FLOAT_EQ(p, 0.999f);
  adam_step(&p, &m, &v, -1.0f, make_adam_step(1e-3, 0.9, 0.999, 1e-8, 2));
  EXPECT_FLOAT_EQ(m, -0.055f);
  EXPECT_FLOAT_EQ(v, 0.00124975f);
  EXPECT_NEAR(p, 0.99936610f, 2e-7f);
}

}  // namespace
}  // namespace cuvae
