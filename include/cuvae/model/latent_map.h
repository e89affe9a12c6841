// The latent space in two dimensions, for vae manifold and vae latents:
// the prior's quantiles, the test images' posterior means, and the plane of
// their first two principal directions (in double, on the host).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuvae/io/idx.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

// The standard normal's quantile function, Phi^-1(p), for p in (0, 1)
// (Wichura's algorithm AS 241, PPND16: about 1e-16 relative error). Throws
// cuvae::Error outside (0, 1).
double normal_quantile(double p);

// The posterior means E_q[z|x] (the encoder's first L outputs) of every image
// in `images`, each under the fixed binarization of vae eval and the task
// images (binarize_fixed, stream kEvalBinarize, `seed`): images.count x L,
// row-major, in double.
std::vector<double> posterior_means(VaeModel& model, const IdxImages& images, uint64_t seed);

// The first two principal directions of n points in `dim` dimensions.
struct PrincipalPlane {
  std::vector<double> mean;          // dim: the points' mean
  std::vector<double> direction[2];  // dim each: orthonormal, largest variance first;
                                     // sign: the largest-magnitude component is positive
  double sd[2] = {0, 0};             // the points' standard deviation along each (n - 1)
  double variance_share[2] = {0, 0}; // each direction's share of the total variance
};

// Largest dimension principal_plane takes (it forms the dim x dim covariance).
constexpr int kMaxPrincipalDim = 1024;

// Throws cuvae::Error naming --model `path` unless its latent size is from 2
// to kMaxPrincipalDim; `picture` names what needs it ("the latent map").
void check_latent_size_for_plane(int latent, const std::string& path, const std::string& picture);

// Orthogonal (subspace) iteration on the covariance matrix, in double.
// Throws cuvae::Error when n < 3, dim < 2 or dim > kMaxPrincipalDim, or when
// the points do not spread along two directions (a variance that is zero
// or not finite).
PrincipalPlane principal_plane(const std::vector<double>& points, int n, int dim);

// Coordinates of `point` (dim values) in the plane: (point - mean) . direction[i].
void project(const PrincipalPlane& plane, const double* point, double* x, double* y);

}  // namespace cuvae
