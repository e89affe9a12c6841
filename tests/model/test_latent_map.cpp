// The latent-space helpers of vae manifold and vae latents: the normal
// quantile function and the principal plane, against exact values.
#include "cuvae/model/latent_map.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuvae/error.h"

namespace {

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

TEST(NormalQuantile, KnownValues) {
  EXPECT_EQ(cuvae::normal_quantile(0.5), 0.0);
  EXPECT_NEAR(cuvae::normal_quantile(0.975), 1.959963984540054, 1e-14);
  EXPECT_NEAR(cuvae::normal_quantile(0.025), -1.959963984540054, 1e-14);
  EXPECT_NEAR(cuvae::normal_quantile(0.8413447460685429), 1.0, 1e-13);
  EXPECT_NEAR(cuvae::normal_quantile(1e-10), -6.361340902404056, 1e-12);  // the far tail (r > 5)
}

TEST(NormalQuantile, InvertsTheCdfOnEveryBranch) {
  // Central (|p - 0.5| <= 0.425), intermediate and far tails, both sides.
  for (double p : {1e-300, 1e-50, 1e-12, 1e-6, 0.001, 0.05, 0.075, 0.076, 0.3, 0.5 - 1e-9, 0.61,
                   0.924, 0.93, 0.999, 1 - 1e-9}) {
    const double x = cuvae::normal_quantile(p);
    const double back = p < 0.5 ? normal_cdf(x) : 1.0 - normal_cdf(-x) ;
    EXPECT_NEAR(back / p, 1.0, 1e-12) << "p = " << p;
    if (p >= 1e-6) {  // below, rounding 1 - p moves the far tail's quantile visibly
      EXPECT_NEAR(cuvae::normal_quantile(1.0 - p), -x, 1e-8 * (1 + std::fabs(x))) << "p = " << p;
    }
  }
}

TEST(NormalQuantile, RefusesOutsideTheOpenInterval) {
  for (double p : {0.0, 1.0, -0.1, 1.5, std::nan("")}) {
    EXPECT_THROW(cuvae::normal_quantile(p), cuvae::Error) << p;
  }
}

// Points with known principal axes: an orthonormal basis of R^5 (a rotation),
// coordinates with standard deviations 3, 2, 1, 0.5, 0.25 around a mean.
TEST(PrincipalPlane, RecoversKnownDirectionsAndSpreads) {
  const int dim = 5, n = 20000;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  // A random orthonormal basis (Gram-Schmidt of Gaussian vectors).
  std::vector<std::vector<double>> basis;
  while (basis.size() < static_cast<size_t>(dim)) {
    std::vector<double> v(dim);
    for (double& x : v) x = normal(rng);
    for (const auto& b : basis) {
      double c = 0;
      for (int i = 0; i < dim; ++i) c += v[i] * b[i];
      for (int i = 0; i < dim; ++i) v[i] -= c * b[i];
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    for (double& x : v) x /= std::sqrt(norm);
    basis.push_back(v);
  }
  const double sds[dim] = {3, 2, 1, 0.5, 0.25};
  const double mean[dim] = {1, -2, 0.5, 4, 0};
  std::vector<double> points(static_cast<size_t>(n) * dim);
  for (int p = 0; p < n; ++p) {
    for (int i = 0; i < dim; ++i) points[p * dim + i] = mean[i];
    for (int k = 0; k < dim; ++k) {
      const double c = sds[k] * normal(rng);
      for (int i = 0; i < dim; ++i) points[p * dim + i] += c * basis[k][i];
    }
  }
  const cuvae::PrincipalPlane plane = cuvae::principal_plane(points, n, dim);
  double total = 0;
  for (double s : sds) total += s * s;
  for (int k = 0; k < 2; ++k) {
    double c = 0, norm = 0;
    for (int i = 0; i < dim; ++i) {
      c += plane.direction[k][i] * basis[k][i];
      norm += plane.direction[k][i] * plane.direction[k][i];
    }
    EXPECT_NEAR(norm, 1.0, 1e-12);
    EXPECT_GT(std::fabs(c), 0.999) << "direction " << k;  // sampling error only
    EXPECT_NEAR(plane.sd[k], sds[k], 0.03 * sds[k]);
    EXPECT_NEAR(plane.variance_share[k], sds[k] * sds[k] / total, 0.01);
  }
  double cross = 0;
  for (int i = 0; i < dim; ++i) cross += plane.direction[0][i] * plane.direction[1][i];
  EXPECT_NEAR(cross, 0.0, 1e-12);
  for (int i = 0; i < dim; ++i) EXPECT_NEAR(plane.mean[i], mean[i], 0.05);
  // Projection: the mean goes to the origin, mean + direction to (1, 0).
  double x = 1, y = 1;
  cuvae::project(plane, plane.mean.data(), &x, &y);
  EXPECT_NEAR(x, 0.0, 1e-12);
  EXPECT_NEAR(y, 0.0, 1e-12);
  std::vector<double> shifted(plane.mean);
  for (int i = 0; i < dim; ++i) shifted[i] += plane.direction[0][i];
  cuvae::project(plane, shifted.data(), &x, &y);
  EXPECT_NEAR(x, 1.0, 1e-12);
  EXPECT_NEAR(y, 0.0, 1e-12);
}

// Exact on a small case: points (±a, 0, 0), (0, ±b, 0) with a > b: the axes
// are e1 and e2, the variances 2a^2/3 and 2b^2/3 (n - 1 = 3).
TEST(PrincipalPlane, ExactOnAxisAlignedPoints) {
  const double a = 3, b = 2;
  const std::vector<double> points = {a, 0, 0, -a, 0, 0, 0, b, 0, 0, -b, 0};
  const cuvae::PrincipalPlane plane = cuvae::principal_plane(points, 4, 3);
  EXPECT_NEAR(plane.direction[0][0], 1.0, 1e-12);
  EXPECT_NEAR(plane.direction[1][1], 1.0, 1e-12);  // signs: largest component positive
  EXPECT_NEAR(plane.sd[0], std::sqrt(2 * a * a / 3), 1e-12);
  EXPECT_NEAR(plane.sd[1], std::sqrt(2 * b * b / 3), 1e-12);
  EXPECT_NEAR(plane.variance_share[0] + plane.variance_share[1], 1.0, 1e-12);
}

TEST(PrincipalPlane, RefusesWhatItCannotDo) {
  EXPECT_THROW(cuvae::principal_plane({1, 2, 3, 4}, 2, 2), cuvae::Error);  // too few points
  EXPECT_THROW(cuvae::principal_plane(std::vector<double>(9, 1.0), 3, 3), cuvae::Error);  // no spread
  // Spread along one line only: no second direction.
  EXPECT_THROW(cuvae::principal_plane({1, 1, 1, 2, 2, 2, 3, 3, 3}, 3, 3), cuvae::Error);
  EXPECT_THROW(cuvae::principal_plane(std::vector<double>(3 * 1025, 0.0), 3, 1025), cuvae::Error);
  EXPECT_THROW(cuvae::principal_plane(std::vector<double>(5, 0.0), 3, 2), cuvae::Error);  // size
}

}  // namespace
