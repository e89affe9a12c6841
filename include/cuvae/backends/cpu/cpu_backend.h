// The CPU backend: OpenBLAS for the GEMMs, OpenMP loops over the shared
// per-element math (vae_math.h) for everything else. It is the reference the
// CUDA backend is tested against, and runs wherever the project builds.
#pragma once

#include <memory>

#include "cuvae/backends/backend.h"

namespace cuvae {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace cuvae
