#include "cuvae/model/latent_map.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "cuvae/error.h"
#include "cuvae/model/evaluate.h"

namespace cuvae {

double normal_quantile(double p) {
  if (!(p > 0.0 && p < 1.0)) {
    throw Error("normal_quantile: p must be in (0, 1), got " + std::to_string(p));
  }
  // M. J. Wichura, "Algorithm AS 241: The percentage points of the normal
  // distribution", Applied Statistics 37 (1988) 477-484: PPND16, the
  // coefficients as printed there (and as CPython's statistics module has them).
  const double q = p - 0.5;
  if (std::fabs(q) <= 0.425) {
    const double r = 0.180625 - q * q;
    const double num = (((((((2.5090809287301226727e+3 * r + 3.3430575583588128105e+4) * r + 6.7265770927008700853e+4) * r + 4.5921953931549871457e+4) * r + 1.3731693765509461125e+4) * r + 1.9715909503065514427e+3) * r + 1.3314166789178437745e+2) * r + 3.3871328727963666080e+0);
    const double den = ((((((5.2264952788528545610e+3 * r + 2.8729085735721942674e+4) * r + 3.9307895800092710610e+4) * r + 2.1213794301586595867e+4) * r + 5.3941960214247511077e+3) * r + 6.8718700749205790830e+2) * r + 4.2313330701600911252e+1) * r + 1.0;
    return q * num / den;
  }
  double r = std::sqrt(-std::log(q < 0.0 ? p : 1.0 - p));
  double num, den;
  if (r <= 5.0) {
    r -= 1.6;
    num = (((((((7.74545014278341407640e-4 * r + 2.27238449892691845833e-2) * r + 2.41780725177450611770e-1) * r + 1.27045825245236838258e+0) * r + 3.64784832476320460504e+0) * r + 5.76949722146069140550e+0) * r + 4.63033784615654529590e+0) * r + 1.42343711074968357734e+0);
    den = ((((((1.05075007164441684324e-9 * r + 5.47593808499534494600e-4) * r + 1.51986665636164571966e-2) * r + 1.48103976427480074590e-1) * r + 6.89767334985100004550e-1) * r + 1.67638483018380384940e+0) * r + 2.05319162663775882187e+0) * r + 1.0;
  } else {
    r -= 5.0;
    num = (((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r + 1.24266094738807843860e-3) * r + 2.65321895265761230930e-2) * r + 2.96560571828504891230e-1) * r + 1.78482653991729133580e+0) * r + 5.46378491116411436990e+0) * r + 6.65790464350110377720e+0);
    den = ((((((2.04426310338993978564e-15 * r + 1.42151175831644588870e-7) * r + 1.84631831751005468180e-5) * r + 7.86869131145613259100e-4) * r + 1.48753612908506148525e-2) * r + 1.36929880922735805310e-1) * r + 5.99832206555887937690e-1) * r + 1.0;
  }
  return q < 0.0 ? -num / den : num / den;
}

std::vector<double> posterior_means(VaeModel& model, const IdxImages& images, uint64_t seed) {
  Backend& backend = model.backend();
  const Architecture& arch = model.architecture();
  if (images.pixels_per_image() != arch.input_dim) {
    throw Error("images of " + std::to_string(images.pixels_per_image()) +
                " pixels, but the model expects " + std::to_string(arch.input_dim));
  }
  const int latent = arch.latent_dim;
  const int chunk = std::max(1, model.max_rows());
  DeviceArray<float> x(backend, static_cast<size_t>(chunk) * arch.input_dim);
  std::vector<float> encoded(static_cast<size_t>(chunk) * 2 * latent);
  std::vector<double> means(static_cast<size_t>(images.count) * latent);
  for (int first = 0; first < images.count; first += chunk) {
    const int rows = std::min(chunk, images.count - first);
    binarize_fixed(backend, images, first, rows, seed, x.get());
    backend.copy_to_host(encoded.data(), model.encode(x.get(), rows),
                         static_cast<size_t>(rows) * 2 * latent * sizeof(float));
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < latent; ++j) {
        means[static_cast<size_t>(first + i) * latent + j] =
            encoded[static_cast<size_t>(i) * 2 * latent + j];
      }
    }
  }
  return means;
}

namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Gram-Schmidt (twice, for orthogonality to rounding): v[0] unit, v[1] unit
// and orthogonal to it. False when a vector vanishes, or all but rounding of
// it lies along the one before (the points span a line).
bool orthonormalize(std::vector<double> v[2]) {
  for (int k = 0; k < 2; ++k) {
    const double before = std::sqrt(dot(v[k], v[k]));
    for (int pass = 0; pass < 2; ++pass) {
      for (int j = 0; j < k; ++j) {
        const double c = dot(v[k], v[j]);
        for (size_t i = 0; i < v[k].size(); ++i) v[k][i] -= c * v[j][i];
      }
    }
    const double norm = std::sqrt(dot(v[k], v[k]));
    if (!(norm > 1e-9 * before) || !std::isfinite(norm)) return false;
    for (double& value : v[k]) value /= norm;
  }
  return true;
}

}  // namespace

void check_latent_size_for_plane(int latent, const std::string& path, const std::string& picture) {
  if (latent < 2) {
    throw Error("--model " + path + ": latent size " + std::to_string(latent) + "; " + picture +
                " needs at least 2 latent dimensions");
  }
  if (latent > kMaxPrincipalDim) {
    throw Error("--model " + path + ": latent size " + std::to_string(latent) + "; " + picture +
                "'s principal directions are computed for up to " + std::to_string(kMaxPrincipalDim));
  }
}

PrincipalPlane principal_plane(const std::vector<double>& points, int n, int dim) {
  if (dim < 2 || dim > kMaxPrincipalDim) {
    throw Error("principal directions: the latent size must be 2 to " +
                std::to_string(kMaxPrincipalDim) + ", got " + std::to_string(dim));
  }
  if (n < 3) {
    throw Error("principal directions: need at least 3 points, got " + std::to_string(n));
  }
  if (points.size() != static_cast<size_t>(n) * dim) {
    throw Error("principal directions: " + std::to_string(points.size()) + " values for " +
                std::to_string(n) + " points of " + std::to_string(dim));
  }
  const size_t d = static_cast<size_t>(dim);
  PrincipalPlane plane;
  plane.mean.assign(d, 0.0);
  for (int i = 0; i < n; ++i) {
    for (size_t j = 0; j < d; ++j) plane.mean[j] += points[i * d + j];
  }
  for (double& m : plane.mean) m /= n;
  // The covariance, upper triangle accumulated then mirrored.
  std::vector<double> cov(d * d, 0.0);
  std::vector<double> centred(d);
  for (int i = 0; i < n; ++i) {
    for (size_t j = 0; j < d; ++j) centred[j] = points[i * d + j] - plane.mean[j];
    for (size_t a = 0; a < d; ++a) {
      const double ca = centred[a];
      for (size_t b = a; b < d; ++b) cov[a * d + b] += ca * centred[b];
    }
  }
  double trace = 0.0;
  for (size_t a = 0; a < d; ++a) {
    for (size_t b = a; b < d; ++b) {
      cov[a * d + b] /= (n - 1);
      cov[b * d + a] = cov[a * d + b];
    }
    trace += cov[a * d + a];
  }
  if (!(trace > 0.0) || !std::isfinite(trace)) {
    throw Error("principal directions: the points do not vary (total variance " +
                std::to_string(trace) + ")");
  }
  // Orthogonal iteration from a fixed pseudo-random start (reproducible).
  std::vector<double> v[2] = {std::vector<double>(d), std::vector<double>(d)};
  std::mt19937_64 rng(20131220);  // Kingma & Welling's arXiv date
  std::normal_distribution<double> normal;
  for (auto& column : v) {
    for (double& value : column) value = normal(rng);
  }
  orthonormalize(v);
  std::vector<double> w[2] = {std::vector<double>(d), std::vector<double>(d)};
  constexpr int kMaxIterations = 20000;
  for (int iteration = 0; iteration < kMaxIterations; ++iteration) {
    for (int k = 0; k < 2; ++k) {
      for (size_t a = 0; a < d; ++a) {
        double s = 0.0;
        for (size_t b = 0; b < d; ++b) s += cov[a * d + b] * v[k][b];
        w[k][a] = s;
      }
    }
    if (!orthonormalize(w)) {
      throw Error("principal directions: the points spread along fewer than two directions");
    }
    const double change = std::max(1.0 - std::fabs(dot(w[0], v[0])), 1.0 - std::fabs(dot(w[1], v[1])));
    v[0].swap(w[0]);
    v[1].swap(w[1]);
    if (change < 1e-15) break;
  }
  double lambda[2];
  for (int k = 0; k < 2; ++k) {
    double s = 0.0;
    for (size_t a = 0; a < d; ++a) {
      double row = 0.0;
      for (size_t b = 0; b < d; ++b) row += cov[a * d + b] * v[k][b];
      s += v[k][a] * row;
    }
    lambda[k] = s;
  }
  if (lambda[1] > lambda[0]) {
    std::swap(lambda[0], lambda[1]);
    v[0].swap(v[1]);
  }
  // A second variance at rounding level (points on a line) is no direction.
  if (!(lambda[1] > 1e-12 * lambda[0]) || !std::isfinite(lambda[0])) {
    throw Error("principal directions: the points spread along fewer than two directions "
                "(second variance " + std::to_string(lambda[1]) + ")");
  }
  for (int k = 0; k < 2; ++k) {
    size_t largest = 0;
    for (size_t a = 1; a < d; ++a) {
      if (std::fabs(v[k][a]) > std::fabs(v[k][largest])) largest = a;
    }
    if (v[k][largest] < 0.0) {
      for (double& value : v[k]) value = -value;
    }
    plane.direction[k] = v[k];
    plane.sd[k] = std::sqrt(lambda[k]);
    plane.variance_share[k] = lambda[k] / trace;
  }
  return plane;
}

void project(const PrincipalPlane& plane, const double* point, double* x, double* y) {
  double sx = 0.0, sy = 0.0;
  for (size_t j = 0; j < plane.mean.size(); ++j) {
    const double c = point[j] - plane.mean[j];
    sx += c * plane.direction[0][j];
    sy += c * plane.direction[1][j];
  }
  *x = sx;
  *y = sy;
}

}  // namespace cuvae
