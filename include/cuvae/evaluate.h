// Test-set evaluation: the ELBO and the importance-sampled log-likelihood.
#pragma once

#include <cstdint>

#include "cuvae/idx.h"
#include "cuvae/vae_model.h"

namespace cuvae {

struct EvalResult {
  int images = 0;
  int k = 0;
  double elbo = 0.0;  // nats per image: mean over images and the K samples of log p(x|z) - KL
  double nll = 0.0;   // nats per image: -log p(x) estimated with K importance samples
};

// Evaluates the first `limit` images (all when limit <= 0 or larger than the
// set). Each image is binarized once, with the fixed stream
// (seed, kEvalBinarize): pixel j of image i uses uniform i*D + j, so the
// binarization does not depend on the limit or on batching. For each image K
// samples z_k ~ q(z|x) (stream kEvalEps) give
//   log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
//   NLL     = -log (1/K) sum_k exp(log w_k)   (log-mean-exp, in double),
// which bounds -log p(x) from above and tightens as K grows (Burda et al.,
// "Importance Weighted Autoencoders", 2016); K = 1 gives the ELBO itself.
// The model's max_rows must be at least k.
EvalResult evaluate(VaeModel& model, const IdxImages& images, int limit, int k, uint64_t seed);

// The fixed binarization of images first..first+rows-1, into backend memory x.
void binarize_fixed(Backend& backend, const IdxImages& images, int first, int rows, uint64_t seed,
                    float* x);

}  // namespace cuvae
