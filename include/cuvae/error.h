// cuvae::Error: the one exception type of the library.
//
// Library code never calls exit(): it throws an Error whose message is one
// complete line naming the file, flag or call at fault and what is wrong.
// The driver (src/cli/main.cpp) catches it, prints "vae: error: <message>" and
// exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace cuvae {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace cuvae
