// vae-bench's training-step benchmarks from a state with and without
// subnormal Adam moments, FTZ/DAZ on and off (denormal_step.cpp).
#pragma once

#include <benchmark/benchmark.h>

#include "cuvae/backends/backend.h"

// Registers cpu/step_from_state/{normal,subnormal}/{ftz,no_ftz}/200 on `cpu`,
// which must outlive the benchmarks' run.
void register_denormal_step_benchmarks(cuvae::Backend* cpu);
