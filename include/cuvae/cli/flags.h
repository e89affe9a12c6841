// The driver's flag checks, shared by every subcommand: numbers that say what
// is wrong with them, paths that must not be empty, and the flags several
// commands take (--device, --image-scale, --model).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace cuvae {

// An integer in [lo, hi]; `description` is what --help shows (default
// "INT in [lo - hi]").
CLI::Validator integer_in(int64_t lo, int64_t hi, const std::string& description);
CLI::Validator integer_in(int64_t lo, int64_t hi);
// An integer from 0 to INT_MAX.
CLI::Validator non_negative_integer();
// Any integer from 0 to 2^64 - 1 (a seed).
CLI::Validator unsigned_integer();
// A positive number that is a normal float (Adam's lr and eps).
CLI::Validator learning_rate();
// A path or name that is not empty.
CLI::Validator non_empty();
// A comma-separated list whose items `item` accepts, each once (--lr 1e-3,3e-4);
// with `ranges`, an item may be a range A-B of integers (--seeds 0-7).
CLI::Validator list_of(const CLI::Validator& item, const std::string& description, bool ranges = false);
// A number in [0, 1] (ciwae's beta).
CLI::Validator unit_interval();

void add_device(CLI::App* app, std::string* device);
CLI::Option* add_image_scale(CLI::App* app, int* scale);
// --model FILE, required.
void add_model(CLI::App* app, std::string* model);

}  // namespace cuvae
