#include "cuvae/io/executable_dir.h"

#include <limits.h>
#include <unistd.h>

#include <filesystem>

namespace cuvae {

std::string executable_dir() {
  char buffer[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  if (n <= 0) return std::string();
  buffer[n] = '\0';
  return std::filesystem::path(buffer).parent_path().string();
}

}  // namespace cuvae
