// Test-set evaluation: the ELBO, the importance-sampled log-likelihood (the
// IWAE paper's protocol: K = 5000 samples per image), the K-sample bounds,
// and the number of active latent units.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "cuvae/io/idx.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

struct EvalRequest {
  int limit = 0;          // the first `limit` images; all when <= 0
  int k = 100;            // importance samples per image
  uint64_t seed = 0;      // of the fixed binarization and the samples
  // K-sample IWAE bounds L_k to estimate from the same K samples (each k
  // divides into K / k disjoint groups of k consecutive samples; the bound is
  // the mean over groups and images of their log-mean-exp); every k <= K.
  std::vector<int> bounds;
  bool per_image = false;  // keep each image's estimated log p(x)
  // Called after each chunk of images with (images done, images in all).
  std::function<void(int, int)> progress;
  // Asked before each chunk (one image per chunk at the largest K): when it
  // says true, evaluate() stops there and returns with `stopped` set (a
  // Ctrl-C is honoured within a chunk, not at the end of the evaluation).
  std::function<bool()> stop;
};

struct EvalResult {
  int images = 0;
  int k = 0;
  // nats per image: mean over images and the K samples of log p(x|z) - KL
  // (one stochastic layer), of log w (more)
  double elbo = 0.0;
  double nll = 0.0;   // nats per image: -log p(x) estimated with K importance samples
  std::vector<std::pair<int, double>> bounds;  // (k, L_k), as requested
  // Units u whose posterior mean E_q[z_u|x] varies over the images by more
  // than 0.01 (Burda et al. 2016, section 5.2: "active units").
  // Of the first stochastic layer; active_units_per_layer has every
  // layer's, bottom first (for a layer above the first, the unit's mean
  // under q(h_s|x) is the average over the image's K samples).
  int active_units = 0;
  std::vector<int> active_units_per_layer;
  std::vector<float> log_likelihood;  // per image, if requested
  bool stopped = false;  // request.stop said so: the rest is not filled in
};

// Evaluates the first `limit` images. Each image is binarized once, with the
// fixed stream (seed, kEvalBinarize): pixel j of image i uses uniform i*D + j,
// so the binarization does not depend on the limit or on batching. The
// encoder runs once per image; its K samples z_k ~ q(z|x) (stream kEvalEps,
// element (i K + s) L + j, independent of the batching) go through the
// decoder together, and
//   log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
//   NLL     = -log (1/K) sum_k exp(log w_k)   (max-shifted, the sum in double),
// which bounds -log p(x) from above and tightens as K grows; K = 1 gives the
// ELBO's sampled form. The model must hold at least 1 image of k samples
// (max_samples >= k); it evaluates max_rows images at a time.
EvalResult evaluate(VaeModel& model, const IdxImages& images, const EvalRequest& request);

// How many images of k samples evaluate takes at a time (about 8192 decoder
// rows, at least one image): the max_rows of a model made for it.
int eval_images_per_chunk(int k);

// "1,5,50" -> {1, 5, 50}: each between 1 and k; throws cuvae::Error naming
// --bounds otherwise.
std::vector<int> parse_bounds(const std::string& text, int k);

// The fixed binarization of images first..first+rows-1, into backend memory x.
void binarize_fixed(Backend& backend, const IdxImages& images, int first, int rows, uint64_t seed,
                    float* x);

}  // namespace cuvae
