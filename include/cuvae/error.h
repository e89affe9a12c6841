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

// A short excerpt of untrusted text (from a damaged file) fit for an error
// line: at most `max_chars` characters of it, bytes outside printable ASCII
// as \xNN, backslashes doubled, "..." where it was cut.
inline std::string printable_excerpt(const std::string& text, size_t max_chars = 60) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max_chars) return out + "...";
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace cuvae
