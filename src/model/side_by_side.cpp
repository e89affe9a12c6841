// Several models' work side by side (include/cuvae/model/side_by_side.h).
#include "cuvae/model/side_by_side.h"

#include <omp.h>

#include <algorithm>

namespace cuvae {

int side_by_side_threads(int n, bool cpu) {
  return std::max(1, cpu ? std::min(n, omp_get_max_threads()) : n);
}

void side_by_side(int n, bool cpu, const std::function<void(int)>& body) {
  // Regions inside a model's work run on the thread that runs it.
  omp_set_max_active_levels(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(side_by_side_threads(n, cpu))
  for (int i = 0; i < n; ++i) body(i);
}

}  // namespace cuvae
