#include "cuvae/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/input_file.h"

// Tensor data is copied between the file and std::vector<float> with memcpy,
// which is only correct when the host stores floats little-endian like the
// format does. Every platform we target (x86-64, aarch64 Linux) is.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cuvae's safetensors code assumes a little-endian host"
#endif
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559,
              "safetensors F32 is IEEE 754 binary32");

namespace cuvae {

namespace {

using json = nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, which
// also bounds what a hostile length field can make us allocate.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr uint64_t kBytesPerElement = sizeof(float);

// Quotes a name for an error message. Names come from the file, so they may
// hold newlines or be megabytes long; JSON-escaping keeps the message on one
// line and the cut keeps it readable.
std::string quote(const std::string& name) { return "\"" + printable_excerpt(name, 64) + "\""; }

// Shows a JSON value from the header in an error message. Scalars are
// dumped (cut to one short, escaped line); arrays and objects are named by
// type only: dump() recurses once per level of nesting, so a hostile value
// nested 100,000 deep would overflow the stack (parsing and destroying such
// a value are iterative in nlohmann and safe).
std::string describe(const json& value) {
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return printable_excerpt(value.dump(-1, ' ', false, json::error_handler_t::replace));
}

// Why the header is not JSON, in our words: where, and an escaped excerpt
// of the bytes there (nlohmann's own message quotes the raw bytes it read,
// which in a damaged file are binary, behind its internal exception name).
std::string json_error(const std::string& text, const json::exception& e) {
  const auto* parse = dynamic_cast<const json::parse_error*>(&e);
  if (parse == nullptr) return "a number out of range";  // out_of_range.406: 1e999
  const size_t at = parse->byte == 0 ? 0 : std::min<size_t>(parse->byte - 1, text.size());
  const size_t from = at > 20 ? at - 20 : 0;
  return "error at byte " + std::to_string(parse->byte) + " of " + std::to_string(text.size()) + ", near '" +
         printable_excerpt(text.substr(from, at + 1 - from)) + "'";
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// Number of elements of `shape`, or false if a dimension is negative or the
// byte count would not fit in uint64. A zero dimension makes the tensor
// empty however large the others are, so it is checked before multiplying.
bool element_count(const std::vector<int64_t>& shape, uint64_t* count) {
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    if (dim == 0) {
      *count = 0;
      return true;
    }
  }
  uint64_t n = 1;
  const uint64_t limit = std::numeric_limits<uint64_t>::max() / kBytesPerElement;
  for (int64_t dim : shape) {
    const uint64_t d = static_cast<uint64_t>(dim);
    if (n > limit / d) return false;
    n *= d;
  }
  *count = n;
  return true;
}

// ---------------------------------------------------------------------------
// Reading

// Owns a file descriptor so every error path closes it.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// The first key that appears twice in one object, by a SAX pass over the
// header. (nlohmann's parser callback could see keys too, but its callback
// parser scans the enclosing object at every object's end: quadratic in the
// tensors, 21 s to read a model of 80,004 here.)
class DuplicateKeyFinder final : public json::json_sax_t {
 public:
  bool found = false;
  std::string duplicate;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& name) override {
    if (!keys_.back().insert(name).second && !found) {
      found = true;
      duplicate = name;
    }
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    keys_.emplace_back();  // an array's objects push their own
    return true;
  }
  bool end_array() override {
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // the header parsed once already; not reached
  }

 private:
  std::vector<std::set<std::string>> keys_;  // per open object (or array)
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("cannot read " + path_ + ": " + what);
  }

  // Reads exactly `size` bytes at `offset`. The file was measured with
  // fstat, so a short read means it shrank under us.
  void read_at(int fd, uint64_t offset, void* out, size_t size) const {
    char* bytes = static_cast<char*>(out);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pread(fd, bytes + done, size - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(std::strerror(errno));
      }
      if (n == 0) fail("unexpected end of file (was it modified while being read?)");
      done += static_cast<size_t>(n);
    }
  }

  // Parses the header, rejecting duplicate keys: nlohmann keeps the last of
  // them silently, but two tensors with one name make the file ambiguous.
  json parse_header(const std::string& text) const {
    json header;
    try {
      header = json::parse(text);
    } catch (const json::exception& e) {
      fail("header is not valid JSON: " + json_error(text, e));
    }
    DuplicateKeyFinder finder;
    json::sax_parse(text, &finder);
    if (finder.found) fail("header has the key " + quote(finder.duplicate) + " more than once");
    return header;
  }

  // A JSON integer in [0, max]; nlohmann stores non-negative literals as
  // unsigned and negative ones as signed, and anything with a fraction or
  // exponent as a float, which we refuse.
  static bool get_uint(const json& value, uint64_t max, uint64_t* out) {
    if (!value.is_number_unsigned()) return false;
    const uint64_t v = value.get<uint64_t>();
    if (v > max) return false;
    *out = v;
    return true;
  }

  struct Entry {
    Tensor tensor;
    uint64_t begin = 0;
    uint64_t end = 0;
  };

  Entry parse_entry(const std::string& name, const json& value, uint64_t data_size) const {
    const std::string where = "tensor " + quote(name);
    if (!value.is_object()) fail(where + " is not a JSON object");
    for (const auto& item : value.items()) {
      const std::string& key = item.key();
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        fail(where + " has unknown field " + quote(key));
      }
    }
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(field)) fail(where + " has no \"" + field + "\"");
    }

    const json& dtype = value.at("dtype");
    if (!dtype.is_string()) fail(where + " has a dtype that is not a string");
    if (dtype.get<std::string>() != "F32") {
      fail(where + " has dtype " + quote(dtype.get<std::string>()) + "; only \"F32\" is supported");
    }

    Entry entry;
    entry.tensor.name = name;
    const json& shape = value.at("shape");
    if (!shape.is_array()) fail(where + " has a shape that is not an array");
    for (const json& dim : shape) {
      uint64_t d = 0;
      if (!get_uint(dim, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), &d)) {
        fail(where + " has a shape entry " + describe(dim) +
             " that is not a non-negative 64-bit integer");
      }
      entry.tensor.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t count = 0;
    if (!element_count(entry.tensor.shape, &count)) {
      fail(where + " has shape " + format_shape(entry.tensor.shape) + " whose size overflows");
    }

    const json& offsets = value.at("data_offsets");
    const uint64_t max = std::numeric_limits<uint64_t>::max();
    if (!offsets.is_array() || offsets.size() != 2 || !get_uint(offsets[0], max, &entry.begin) ||
        !get_uint(offsets[1], max, &entry.end)) {
      fail(where + " has data_offsets that are not two non-negative integers");
    }
    const std::string span =
        "[" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
    if (entry.begin > entry.end)
      fail(where + " has data_offsets " + span + " that end before they begin");
    if (entry.end > data_size) {
      fail(where + " has data_offsets " + span + " past the end of the " +
           std::to_string(data_size) + "-byte data section (file truncated?)");
    }
    if (entry.end - entry.begin != count * kBytesPerElement) {
      fail(where + " has shape " + format_shape(entry.tensor.shape) + " (" +
           std::to_string(count * kBytesPerElement) + " bytes) but data_offsets " + span +
           " span " + std::to_string(entry.end - entry.begin) + " bytes");
    }
    return entry;
  }

  std::map<std::string, std::string> parse_metadata(const json& value) const {
    if (!value.is_object()) fail("\"__metadata__\" is not a JSON object");
    std::map<std::string, std::string> metadata;
    for (const auto& item : value.items()) {
      if (!item.value().is_string()) {
        fail("\"__metadata__\" value for " + quote(item.key()) + " is not a string");
      }
      metadata.emplace(item.key(), item.value().get<std::string>());
    }
    return metadata;
  }

  SafetensorsFile read() const {
    const Fd fd(open_regular_file(path_));  // never blocks on a FIFO
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail(std::strerror(errno));
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);

    if (file_size < 8) {
      fail("file is " + std::to_string(file_size) +
           " bytes, shorter than the 8-byte header length");
    }
    unsigned char length_bytes[8];
    read_at(fd.get(), 0, length_bytes, sizeof length_bytes);
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
    if (header_size > file_size - 8) {
      fail("header length " + std::to_string(header_size) + " runs past the end of the " +
           std::to_string(file_size) + "-byte file");
    }
    if (header_size > kMaxHeaderBytes) {
      fail("header length " + std::to_string(header_size) + " exceeds the " +
           std::to_string(kMaxHeaderBytes) + "-byte limit");
    }

    std::string text(static_cast<size_t>(header_size), '\0');
    read_at(fd.get(), 8, text.data(), text.size());
    const json header = parse_header(text);
    if (!header.is_object()) fail("header is not a JSON object");

    const uint64_t data_start = 8 + header_size;
    const uint64_t data_size = file_size - data_start;
    SafetensorsFile result;
    std::vector<Entry> entries;
    for (const auto& item : header.items()) {
      if (item.key() == kMetadataKey) {
        result.metadata = parse_metadata(item.value());
      } else {
        entries.push_back(parse_entry(item.key(), item.value(), data_size));
      }
    }

    // Each data byte must belong to exactly one tensor. Sorting by (begin,
    // end) puts empty tensors before a non-empty one starting at the same
    // offset, so they do not count as overlaps; stable for a fixed order
    // among equal spans (nlohmann iterates keys sorted by name).
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return std::make_pair(a.begin, a.end) < std::make_pair(b.begin, b.end);
    });
    uint64_t covered = 0;
    const Entry* previous = nullptr;
    for (const Entry& entry : entries) {
      if (entry.begin < covered) {
        fail("tensors " + quote(previous->tensor.name) + " and " + quote(entry.tensor.name) +
             " overlap in the data section");
      }
      if (entry.begin > covered) {
        fail("data bytes " + std::to_string(covered) + " to " + std::to_string(entry.begin) +
             " belong to no tensor");
      }
      covered = entry.end;
      previous = &entry;
    }
    if (covered != data_size) {
      fail(std::to_string(data_size - covered) + " trailing bytes after the last tensor");
    }

    // Allocation is bounded by the file size: the offsets were checked
    // against it above.
    for (Entry& entry : entries) {
      Tensor& tensor = entry.tensor;
      tensor.data.resize(static_cast<size_t>((entry.end - entry.begin) / kBytesPerElement));
      read_at(fd.get(), data_start + entry.begin, tensor.data.data(),
              tensor.data.size() * sizeof(float));
      result.tensors.push_back(std::move(tensor));
    }
    return result;
  }

 private:
  const std::string& path_;
};

}  // namespace

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (const Tensor& tensor : tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

SafetensorsFile read_safetensors(const std::string& path) { return Reader(path).read(); }

// ---------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  const std::vector<char> buffer = safetensors_bytes(path, file);
  write_file_atomically(path, buffer.data(), buffer.size());
}

std::vector<char> safetensors_bytes(const std::string& path, const SafetensorsFile& file) {
  const auto fail = [&path](const std::string& what) {
    throw Error("cannot write " + path + ": " + what);
  };

  // Refuse to write what read_safetensors (or another tool) would refuse.
  json header = json::object();
  std::set<std::string> names;
  uint64_t data_size = 0;
  for (const Tensor& tensor : file.tensors) {
    const std::string where = "tensor " + quote(tensor.name);
    if (tensor.name == kMetadataKey) fail(where + " uses the reserved name");
    if (!names.insert(tensor.name).second) fail(where + " appears more than once");
    uint64_t count = 0;
    if (!element_count(tensor.shape, &count)) {
      fail(where + " has invalid shape " + format_shape(tensor.shape));
    }
    if (count != tensor.data.size()) {
      fail(where + " has shape " + format_shape(tensor.shape) + " (" + std::to_string(count) +
           " values) but " + std::to_string(tensor.data.size()) + " values");
    }
    const uint64_t bytes = count * kBytesPerElement;
    header[tensor.name] = {{"dtype", "F32"},
                           {"shape", tensor.shape},
                           {"data_offsets", {data_size, data_size + bytes}}};
    data_size += bytes;
  }
  if (!file.metadata.empty()) header[kMetadataKey] = file.metadata;

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception&) {
    // dump() throws on strings that are not valid UTF-8; JSON requires it.
    fail("a tensor name or metadata string is not valid UTF-8");
  }
  // Pad so the data section starts 8-byte aligned, as the reference
  // implementation does, letting readers map the floats in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    fail("header of " + std::to_string(text.size()) + " bytes exceeds the " +
         std::to_string(kMaxHeaderBytes) + "-byte limit");
  }

  std::vector<char> buffer(8 + text.size() + static_cast<size_t>(data_size));
  uint64_t header_size = text.size();
  for (size_t i = 0; i < 8; ++i) {
    buffer[i] = static_cast<char>(header_size & 0xff);
    header_size >>= 8;
  }
  std::memcpy(buffer.data() + 8, text.data(), text.size());
  char* out = buffer.data() + 8 + text.size();
  for (const Tensor& tensor : file.tensors) {
    const size_t bytes = tensor.data.size() * sizeof(float);
    if (bytes > 0) std::memcpy(out, tensor.data.data(), bytes);
    out += bytes;
  }
  return buffer;
}

}  // namespace cuvae
