// Scratch: replay recorded step times through ThreadTuner.
#include <cstdio>
#include <fstream>
#include <vector>
#include "cuvae/backends/cpu/thread_tuner.h"

std::vector<double> load(const char* p) { std::vector<double> v; std::ifstream f(p); double x; while (f >> x) v.push_back(x); return v; }

int main(int argc, char** argv) {
  const std::vector<double> one = load(argv[1]), two = load(argv[2]);
  const int steps = argc > 3 ? std::atoi(argv[3]) : 4000;
  for (int start = 0; start < 4; ++start) {
    cuvae::ThreadTuner tuner(2);
    size_t i1 = start * 97, i2 = start * 131;
    double total = 0; int on_one = 0;
    for (int s = 0; s < steps; ++s) {
      double t;
      if (tuner.threads() == 1) { t = one[i1++ % one.size()]; ++on_one; } else { t = two[i2++ % two.size()]; }
      total += t;
      tuner.record(t);
    }
    double s1 = 0, s2 = 0;
    for (int s = 0; s < steps; ++s) { s1 += one[(start * 97 + s) % one.size()]; s2 += two[(start * 131 + s) % two.size()]; }
    std::printf("start %d: tuner %.3f ms/step (%.0f%% on 1 thread); fixed 1: %.3f; fixed 2: %.3f; tuner keeps %.0f%% of fixed-1's speed\n",
                start, 1e3 * total / steps, 100.0 * on_one / steps, 1e3 * s1 / steps, 1e3 * s2 / steps, 100.0 * s1 / total);
  }
}
