// The seed's task images, from a trained model.
//   task_3_1.png        25 samples from the prior: z ~ N(0, I), sigmoid(decoder(z))
//   task_3_2.png        the first 10 test images (gray levels) above their 10
//                       reconstructions sigmoid(decoder(z)), z ~ q(z|x), x the
//                       test image's fixed binarization
//   task_3_3_<i>.png    i = 0..4: 25 steps between test images 2i and 2i+1:
//                       z = s z1 + (1-s) z2, s from 1 to 0, z1, z2 the encoder
//                       means
#pragma once

#include <cstdint>
#include <string>

#include "cuvae/io/idx.h"
#include "cuvae/io/png_grid.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

// Images need batches of 25 rows: the model's max_rows must be >= 25.
constexpr int kTaskImageRows = 25;

// Throws cuvae::Error, naming `what` (e.g. "the test images in DIR"), when
// the images below cannot be made from `test` for a model of `input_dim`
// pixels: too few test images, another image size, a size not square.
// Training checks this before its first step.
void check_task_image_inputs(const IdxImages& test, int input_dim, const std::string& what);

// Each writes its PNG(s) atomically into out_dir and returns the paths.
std::vector<std::string> write_prior_samples(VaeModel& model, const std::string& out_dir,
                                             uint64_t seed, const GridOptions& grid);
std::vector<std::string> write_reconstructions(VaeModel& model, const IdxImages& test,
                                               const std::string& out_dir, uint64_t seed,
                                               const GridOptions& grid);
std::vector<std::string> write_interpolations(VaeModel& model, const IdxImages& test,
                                              const std::string& out_dir, uint64_t seed,
                                              const GridOptions& grid);

}  // namespace cuvae
