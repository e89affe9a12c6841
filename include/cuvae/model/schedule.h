// Learning-rate schedules, as functions of the epoch (so a resumed run, which
// knows its step, continues a schedule exactly where it stopped).
//
//   constant  lr in every epoch (the seed's)
//   iwae      the IWAE paper's (Burda et al. 2016, section 5): 8 stages,
//             stage i = 0..7 runs 3^i epochs at lr 10^(-i/7) (lr = 1e-3 in
//             the paper), 3280 epochs in all
#pragma once

#include <string>

namespace cuvae {

enum class Schedule { kConstant, kIwae };

Schedule parse_schedule(const std::string& name, const std::string& what);
std::string schedule_name(Schedule schedule);

// The iwae schedule's 8 stages hold 1 + 3 + ... + 3^7 = 3280 epochs.
constexpr int kIwaeScheduleEpochs = 3280;

// The stage of 0-based epoch `epoch` (0 for constant; the iwae schedule's
// last stage continues past epoch 3280).
int schedule_stage(Schedule schedule, int epoch);
// The learning rate of 0-based epoch `epoch` for base rate `lr`.
double scheduled_learning_rate(Schedule schedule, double lr, int epoch);

}  // namespace cuvae
