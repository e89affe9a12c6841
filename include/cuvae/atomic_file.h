// Atomic file writes: a reader (or a crash) sees the old file or the new
// one, whole, never a torn one.
#pragma once

#include <string>

namespace cuvae {

// Writes `size` bytes to "<path>.tmp.<pid>", fsyncs it, renames it over
// `path`, then fsyncs the directory. On any failure the temporary is removed,
// `path` is left as it was, and cuvae::Error names the path and the reason
// (strerror).
void write_file_atomically(const std::string& path, const void* data, size_t size);

// Creates `dir` and its parents if missing; throws cuvae::Error naming the
// directory when it cannot be created or exists as something else.
void make_directories(const std::string& dir);

}  // namespace cuvae
