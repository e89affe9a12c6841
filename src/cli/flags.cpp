// The driver's flag checks (include/cuvae/cli/flags.h).
#include "cuvae/cli/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cuvae/io/checkpoint.h"

namespace cuvae {

namespace {

// Number checks. CLI11's Range says "Value abc not in range 1 to 1048576" for
// text that is no number, PositiveNumber spells DBL_MAX out in full, and an
// unsigned option takes "-1" as 2^64 - 1; these say what is wrong instead.
// Integers are decimal, every flag alike (--hidden's lists too): CLI11
// converts with base 0, which read "020" as octal 16 and "0x10" as hex. So
// the text must be an optional '-' and digits, is parsed base 10 (refusing
// text beyond 64 bits, which strtoll clamps), and is rewritten to its
// canonical decimal spelling ("020" -> "20") for CLI11's conversion.
enum class Parsed { kOk, kNotANumber, kOutOfRange };

template <typename T, typename Convert>
Parsed parse_integer(const std::string& input, Convert convert, T* value) {
  const size_t digits_from = !input.empty() && input[0] == '-' ? 1 : 0;
  if (input.size() == digits_from) return Parsed::kNotANumber;
  for (size_t i = digits_from; i < input.size(); ++i) {
    if (input[i] < '0' || input[i] > '9') return Parsed::kNotANumber;
  }
  char* end = nullptr;
  errno = 0;
  *value = convert(input.c_str(), &end, 10);
  if (end != input.c_str() + input.size()) return Parsed::kNotANumber;
  return errno == ERANGE ? Parsed::kOutOfRange : Parsed::kOk;
}

}  // namespace

CLI::Validator integer_in(int64_t lo, int64_t hi, const std::string& description) {
  return CLI::Validator(
      [lo, hi](std::string& input) -> std::string {
        long long value = 0;
        const Parsed parsed = parse_integer(input, std::strtoll, &value);
        if (parsed == Parsed::kNotANumber) return "'" + input + "' is not an integer (decimal digits only)";
        if (parsed == Parsed::kOutOfRange || value < lo || value > hi) {
          return "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                 ", got " + input;
        }
        input = std::to_string(value);
        return std::string();
      },
      description);
}

CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return integer_in(lo, hi, "INT in [" + std::to_string(lo) + " - " + std::to_string(hi) + "]");
}

CLI::Validator non_negative_integer() { return integer_in(0, std::numeric_limits<int>::max(), "NONNEGATIVE"); }

// The learning rate is applied as a float: below FLT_MIN it is subnormal or
// zero there (1e-320 ran as 9.99989e-321 and trained nothing).
CLI::Validator learning_rate() {
  return CLI::Validator(
    [](std::string& input) -> std::string {
      double value = 0;
      if (!CLI::detail::lexical_cast(input, value)) return "'" + input + "' is not a number";
      if (!(value > 0.0) || !std::isfinite(value)) return "must be a positive number, got " + input;
      if (value < std::numeric_limits<float>::min() || value > std::numeric_limits<float>::max()) {
        return "must be a normal single-precision number (about 1.2e-38 to 3.4e38), got " + input;
      }
      return std::string();
    },
    "POSITIVE");
}

CLI::Validator list_of(const CLI::Validator& item, const std::string& description, bool ranges) {
  return CLI::Validator(
      [item, ranges](std::string& input) -> std::string {
        std::vector<std::string> items;
        size_t from = 0;
        while (true) {
          const size_t comma = input.find(',', from);
          items.push_back(input.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
          if (comma == std::string::npos) break;
          from = comma + 1;
        }
        std::string canonical;
        for (size_t i = 0; i < items.size(); ++i) {
          const std::string where = items.size() > 1 ? "item " + std::to_string(i + 1) + " of '" + input + "': " : "";
          std::string text = items[i];
          if (text.empty()) return where.empty() ? "must not be empty" : where + "is empty";
          const size_t dash = ranges ? text.find('-', 1) : std::string::npos;
          std::string first = text.substr(0, dash), last;
          std::string problem = CLI::Validator(item)(first);
          if (problem.empty() && dash != std::string::npos) {
            last = text.substr(dash + 1);
            problem = CLI::Validator(item)(last);
            if (problem.empty() && std::stoull(last) < std::stoull(first)) {
              problem = "the range " + text + " runs backwards";
            }
          }
          if (!problem.empty()) return where + problem;
          canonical += (i ? "," : "") + first + (last.empty() ? "" : "-" + last);
        }
        input = canonical;
        return std::string();
      },
      description);
}

CLI::Validator unit_interval() {
  return CLI::Validator(
    [](std::string& input) -> std::string {
      double value = 0;
      if (!CLI::detail::lexical_cast(input, value)) return "'" + input + "' is not a number";
      if (!(value >= 0.0 && value <= 1.0)) return "must be in [0, 1], got " + input;
      return std::string();
    },
    "IN [0, 1]");
}

CLI::Validator unsigned_integer() {
  return CLI::Validator(
    [](std::string& input) -> std::string {
      unsigned long long value = 0;
      if (input.find('-') != std::string::npos ||
          parse_integer(input, std::strtoull, &value) != Parsed::kOk) {
        return "must be a non-negative integer below 2^64, got " + input;
      }
      input = std::to_string(value);
      return std::string();
    },
    "");
}

// Paths: an empty one would surface later as "cannot create directory :" or
// ": MNIST directory not found", or (--resume) start a fresh run.
CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& input) -> std::string { return input.empty() ? "must not be empty" : std::string(); }, "");
}

void add_device(CLI::App* app, std::string* device) {
  app->add_option("--device", *device, "auto (CUDA if compiled in and present, else CPU), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
}

CLI::Option* add_image_scale(CLI::App* app, int* scale) {
  return app->add_option("--image-scale", *scale, "Scale each digit of the PNGs up by this integer factor")
      ->transform(integer_in(1, kMaxImageScale))
      ->capture_default_str();
}

void add_model(CLI::App* app, std::string* model) {
  app->add_option("--model", *model, "Model file written by vae train")->required()->check(non_empty());
}

}  // namespace cuvae
