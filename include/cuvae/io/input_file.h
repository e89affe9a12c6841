// Opening input files (data sets, model files) for reading. open(2) on a
// FIFO with no writer blocks forever, so readers open without blocking and
// refuse anything that is not a regular file before reading a byte.
#pragma once

#include <string>

namespace cuvae {

// Opens `path` read-only (O_CLOEXEC) and returns a blocking descriptor the
// caller closes. Throws cuvae::Error "cannot read PATH: REASON" when it
// cannot be opened (strerror) or is a directory, FIFO, device or socket.
int open_regular_file(const std::string& path);

}  // namespace cuvae
