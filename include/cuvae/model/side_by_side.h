// Several models' work side by side in one process (a pack, train_pack.h,
// and its benchmark): body(i) for i in [0, n), each on its own thread. On
// the CPU at most as many threads as OpenMP has, one model at a time per
// thread, the model's own parallel loops and GEMMs nested on that thread
// (so a thread's work is what it would be alone, and its bits too: the CPU
// backend computes the same bits on any thread count). On a GPU one host
// thread per model, each driving its model's own stream, so that the device
// overlaps their kernels. body must not throw.
#pragma once

#include <functional>

namespace cuvae {

void side_by_side(int n, bool cpu, const std::function<void(int)>& body);

// The threads side_by_side(n, cpu, ...) runs on: on the CPU at most
// OpenMP's thread count as first read (call it before any CPU backend's
// thread tuner runs: the tuner moves the calling thread's count).
int side_by_side_threads(int n, bool cpu);

}  // namespace cuvae
