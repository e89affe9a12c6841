// Shared by the libFuzzer targets in this directory (built by tools/fuzz/fuzz.sh,
// not by CMake): the readers take paths, so each input is written to a file
// in a per-process temporary directory and read back from there.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace cuvae_fuzz {

// A directory of our own, made once per process under $CUVAE_FUZZ_TMPDIR
// if set (tools/fuzz/fuzz.sh sets it, and removes it, so that runs that crash
// leave nothing behind), else under /dev/shm (a RAM disk, so the writes cost
// little), else /tmp; removed at a normal exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    struct stat st {};
    std::string base = "/tmp";
    const char* env = std::getenv("CUVAE_FUZZ_TMPDIR");
    if (env != nullptr && *env != '\0') {
      base = env;
    } else if (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) {
      base = "/dev/shm";
    }
    std::string templ = base + "/cuvae-fuzz-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      std::fprintf(stderr, "fuzz: mkdtemp %s: %s\n", templ.c_str(), std::strerror(errno));
      std::abort();
    }
    static std::string to_remove;
    to_remove = templ;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    return templ;
  }();
  return dir;
}

inline std::string scratch_path(const char* name) { return scratch_dir() + "/" + name; }

// Replaces the file at `path` with exactly `size` bytes of `data`. Any
// failure here is the harness's, not the reader's: abort loudly.
inline void write_input(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "fuzz: open %s: %s\n", path.c_str(), std::strerror(errno));
    std::abort();
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "fuzz: write %s: %s\n", path.c_str(), std::strerror(errno));
      std::abort();
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

// A broken invariant of a reader's successful result: a finding.
#define CUVAE_FUZZ_CHECK(cond)                                                     \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "fuzz: invariant broken at %s:%d: %s\n", __FILE__,      \
                   __LINE__, #cond);                                               \
      std::abort();                                                                \
    }                                                                              \
  } while (0)

}  // namespace cuvae_fuzz
