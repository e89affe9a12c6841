#include "cuvae/model/schedule.h"

#include <cmath>

#include "cuvae/error.h"

namespace cuvae {

Schedule parse_schedule(const std::string& name, const std::string& what) {
  if (name == "constant") return Schedule::kConstant;
  if (name == "iwae") return Schedule::kIwae;
  throw Error(what + " must be one of constant, iwae, got '" + name + "'");
}

std::string schedule_name(Schedule schedule) {
  return schedule == Schedule::kIwae ? "iwae" : "constant";
}

int schedule_stage(Schedule schedule, int epoch) {
  if (schedule == Schedule::kConstant) return 0;
  int stage = 0;
  for (int end = 1, length = 1; epoch >= end && stage < 7; ++stage) {
    length *= 3;
    end += length;  // stage i ends after 1 + 3 + ... + 3^i epochs
  }
  return stage;
}

double scheduled_learning_rate(Schedule schedule, double lr, int epoch) {
  return lr * std::pow(10.0, -schedule_stage(schedule, epoch) / 7.0);
}

}  // namespace cuvae
