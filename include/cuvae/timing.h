// Wall-clock helpers shared by the driver's commands.
#pragma once

#include <chrono>
#include <ctime>
#include <string>

namespace cuvae {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The current UTC time in strftime's `format`.
inline std::string utc_now(const char* format = "%Y-%m-%dT%H:%M:%SZ") {
  const std::time_t now = std::time(nullptr);
  char buffer[64];
  std::strftime(buffer, sizeof buffer, format, std::gmtime(&now));
  return buffer;
}

}  // namespace cuvae
