#include "cuvae/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "cuvae/error.h"

namespace cuvae {

namespace {

std::string parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

}  // namespace

void write_file_atomically(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw Error("cannot write " + path + ": " + std::strerror(errno));
  }
  const char* bytes = static_cast<const char*>(data);
  size_t written = 0;
  int saved_errno = 0;
  while (written < size) {
    const ssize_t n = ::write(fd, bytes + written, size - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      saved_errno = errno;
      break;
    }
    written += static_cast<size_t>(n);
  }
  if (saved_errno == 0 && ::fsync(fd) != 0) saved_errno = errno;
  if (::close(fd) != 0 && saved_errno == 0) saved_errno = errno;
  if (saved_errno == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) saved_errno = errno;
  if (saved_errno != 0) {
    ::unlink(tmp.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(saved_errno));
  }
  // Make the rename itself durable; failure here does not tear the file.
  const int dir_fd = ::open(parent_directory(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void make_directories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    throw Error("cannot create directory " + dir + ": " + ec.message());
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    throw Error("cannot create directory " + dir + ": exists and is not a directory");
  }
}

}  // namespace cuvae
