// Where the running executable is: files built beside it (tools/plot.py's
// copy, the CUDA backend's module) are looked up there.
#pragma once

#include <string>

namespace cuvae {

// The directory of /proc/self/exe, or "" when it cannot be read.
std::string executable_dir();

}  // namespace cuvae
