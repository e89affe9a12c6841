// Several models' work side by side (include/cuvae/model/side_by_side.h).
#include "cuvae/model/side_by_side.h"

#include <omp.h>

#include <algorithm>

namespace cuvae {

int side_by_side_threads(int n, bool cpu) {
  // OpenMP's thread count as the process started, read once: a CPU
  // backend's thread tuner later moves the calling thread's count between 1
  // and it (the benchmark runs the same models alone in between).
  static const int available = omp_get_max_threads();
  return std::max(1, cpu ? std::min(n, available) : n);
}

void side_by_side(int n, bool cpu, const std::function<void(int)>& body) {
  if (side_by_side_threads(n, cpu) == 1) {  // as alone, its own regions on every thread
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
  // Regions inside a model's work run on the thread that runs it.
  omp_set_max_active_levels(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(side_by_side_threads(n, cpu))
  for (int i = 0; i < n; ++i) body(i);
}

}  // namespace cuvae
