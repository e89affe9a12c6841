// Training: batches in dataset order (or reshuffled each epoch), dynamic
// binarization, K samples of eps per example, the objective's gradient, Adam
// over the flat buffer at the schedule's learning rate.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/io/idx.h"
#include "cuvae/model/schedule.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

struct TrainConfig {
  // The largest --batch-size and --epochs (and their checkpoint fields).
  static constexpr int kMaxBatchSize = 1 << 20;
  static constexpr int kMaxEpochs = 1000000;
  Architecture arch;
  int batch_size = 200;
  uint64_t seed = 0;
  bool shuffle = false;
  AdamConfig adam;  // adam.lr is the schedule's base rate
  ObjectiveConfig objective;
  InitScheme init = InitScheme::kSmallNormal;
  Schedule schedule = Schedule::kConstant;
};

// How a step runs; none of this changes the numbers a run computes (the
// tests check that each combination gives the same bits).
struct TrainerOptions {
  // The training images in backend memory, copied once (`kAuto`: if they fit;
  // else streamed batch by batch through upload_and_binarize). A backend
  // whose memory is host memory reads them in place, with no copy.
  enum class DataPlacement { kAuto, kResident, kStreamed };
  DataPlacement data = DataPlacement::kAuto;
  // Record the step once and replay it (the CUDA backend's CUDA Graph);
  // needs the data resident.
  bool step_graph = true;
};

class Trainer {
 public:
  // `images` must outlive the trainer. The model is initialized from the seed.
  // Throws cuvae::Error if the batch size is not in 1..images.count or the
  // images' size differs from the architecture's input, and if the images
  // must be resident but do not fit.
  Trainer(Backend& backend, const TrainConfig& config, const IdxImages& images,
          const TrainerOptions& options = {});

  // One line: where the data comes from and whether the step is replayed.
  std::string describe_step() const;
  bool data_resident() const { return resident_images_ != nullptr; }
  bool step_recorded() const { return recording_ != nullptr; }

  // Full batches per epoch; a last partial batch is dropped (the seed's 60000
  // images in batches of 200 divide exactly).
  int steps_per_epoch() const { return steps_per_epoch_; }
  uint64_t steps_done() const { return step_; }

  // One training step on the next batch: binarize it afresh, draw eps, compute
  // the objective and its gradient, take an Adam step. The batch's bound sum
  // is added to an accumulator that stays on the device.
  void step();
  // The learning rate of the next step (the schedule's, for its epoch).
  double learning_rate() const;

  // The mean bound (ELBO or IWAE bound, as trained) per example over the
  // steps since the last take (reads the device accumulator once), then
  // resets it.
  double take_mean_elbo();
  // The same without resetting (for a progress line).
  double peek_mean_elbo() const;
  // The accumulator's raw state: the ELBO sum and the rows it covers.
  double elbo_sum() const;
  uint64_t rows_since_take() const { return rows_since_take_; }

  // Continues a run: parameters, Adam's moments, the steps done and the
  // ELBO accumulator's state (from a checkpoint). The next step() is then
  // exactly the one the interrupted run would have taken.
  void restore(const std::vector<float>& params, const std::vector<float>& adam_m,
               const std::vector<float>& adam_v, uint64_t steps_done, double elbo_sum,
               uint64_t rows);

  VaeModel& model() { return model_; }

 private:
  const uint8_t* batch_pixels(int index_in_epoch);
  // This epoch's image order (shuffled runs), recomputed at the epoch's first
  // batch or after a restore; true when it was.
  bool update_epoch_order(int index_in_epoch);
  void step_body(uint64_t t);

  Backend& backend_;
  TrainConfig config_;
  const IdxImages& images_;
  VaeModel model_;
  int steps_per_epoch_;
  uint64_t step_ = 0;
  uint64_t rows_since_take_ = 0;
  std::vector<uint32_t> order_;        // this epoch's image order when shuffling
  std::vector<uint8_t> gather_;        // a shuffled batch's pixels, contiguous
  DeviceArray<float> x_, eps_;
  DeviceArray<double> elbo_sum_;
  // Resident: the images the step reads, in backend memory: the copy
  // images_on_backend_, or images_.pixels itself where backend memory is
  // host memory. Likewise the order: order_on_backend_ or order_.
  const uint8_t* resident_images_ = nullptr;
  DeviceArray<uint8_t> images_on_backend_;
  DeviceArray<uint32_t> order_on_backend_;
  std::string data_note_;                   // why not resident, for describe_step
  std::unique_ptr<StepRecording> recording_;
};

// The mean of each pixel over the images, in [0, 1] (--init glorot's
// decoder output bias).
std::vector<double> pixel_means(const IdxImages& images);

// The bytes a model for `images` images of `samples` samples needs (the
// parameters, Adam's moments and every activation and gradient buffer), and
// a check that it fits the backend's memory: where it does not, an error
// that leads with what dominates, the parameters (with their gradients and
// Adam's moments) or the activations, naming what sets it as the command's
// flags do (`causes`; empty fields: train's --hidden and --latent-dim,
// --batch-size and --samples, with the values).
size_t model_bytes(const Architecture& arch, int images, int samples);
struct MemoryCauses {
  std::string parameters;  // e.g. "--hidden 65536,65536 and --latent-dim 50"
  std::string images;      // e.g. "--batch-size 20"
  std::string samples;     // e.g. "--samples 1"
};
void check_model_fits(const Backend& backend, const Architecture& arch, int images, int samples,
                      const MemoryCauses& causes = {});

// A random permutation of 0..n-1 for epoch `epoch` (Fisher-Yates driven by
// the kShuffle stream): a function of (seed, epoch) alone.
std::vector<uint32_t> epoch_permutation(uint64_t seed, uint64_t epoch, uint32_t n);

}  // namespace cuvae
