#include "cuvae/io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
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

// "<path>.tmp.<pid>", its file name cut to NAME_MAX (255) bytes: a legal
// 250-byte name would otherwise fail as "File name too long" at the end of a
// long run. (remove_stale_temporaries only knows vae's own short names.)
std::string temporary_path(const std::string& path) {
  const std::string suffix = ".tmp." + std::to_string(::getpid());
  const size_t slash = path.rfind('/');
  const size_t name_from = slash == std::string::npos ? 0 : slash + 1;
  const size_t name_size = path.size() - name_from;
  constexpr size_t kNameMax = 255;
  if (name_size + suffix.size() <= kNameMax) return path + suffix;
  return path.substr(0, name_from + (kNameMax - suffix.size())) + suffix;
}

}  // namespace

namespace {

// Writes and fsyncs "<path>.tmp.<pid>"; returns its name. On failure it is
// removed and cuvae::Error names `path`.
std::string write_temporary(const std::string& path, const void* data, size_t size) {
  const std::string tmp = temporary_path(path);
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
  if (saved_errno != 0) {
    ::unlink(tmp.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(saved_errno));
  }
  return tmp;
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved_errno = errno;
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

}  // namespace

void write_file_atomically(const std::string& path, const void* data, size_t size) {
  rename_into_place(write_temporary(path, data, size), path);
}

AtomicFileSet::~AtomicFileSet() {
  for (const auto& [tmp, path] : pending_) ::unlink(tmp.c_str());
}

void AtomicFileSet::add(const std::string& path, const void* data, size_t size) {
  const std::string tmp = write_temporary(path, data, size);
  pending_.emplace_back(tmp, path);
}

void AtomicFileSet::commit() {
  while (!pending_.empty()) {
    const auto [tmp, path] = pending_.front();
    pending_.erase(pending_.begin());
    rename_into_place(tmp, path);
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

void check_writable_file_path(const std::string& path) {
  auto refuse = [&](const std::string& why) { throw Error("cannot write " + path + ": " + why); };
  if (path.empty()) refuse("empty file name");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) refuse("is a directory");
    // Renaming over a device or FIFO would replace it, not write into it.
    if (!S_ISREG(st.st_mode)) refuse("exists and is not a regular file");
  } else if (errno != ENOENT) {
    refuse(std::strerror(errno));
  }
  const std::string dir = parent_directory(path);
  if (::stat(dir.c_str(), &st) != 0) refuse("directory " + dir + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) refuse(dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) refuse("directory " + dir + ": " + std::strerror(errno));
  // What access() cannot tell (root passes it everywhere; /proc, a read-only
  // file system, a name too long): create the temporary and remove it.
  const std::string tmp = temporary_path(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) return;  // ours from an earlier call: creatable
    refuse("cannot create a file in " + dir + ": " + std::strerror(errno));
  }
  ::close(fd);
  ::unlink(tmp.c_str());
}

void check_output_is_not_an_input(const std::string& flag, const std::string& output,
                                  const std::vector<std::pair<std::string, std::string>>& inputs) {
  struct stat out {};
  if (::stat(output.c_str(), &out) != 0) return;
  for (const auto& [input_flag, input] : inputs) {
    struct stat in {};
    if (::stat(input.c_str(), &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino) {
      throw Error(flag + " " + output + " is the file of " + input_flag + " (" + input +
                  "): writing it would replace an input of this command; choose another " + flag);
    }
  }
}

std::vector<std::pair<std::string, std::string>> data_set_inputs(const std::string& flag, const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> inputs;
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                           "t10k-labels-idx1-ubyte"}) {
    for (const char* suffix : {"", ".gz"}) {
      inputs.emplace_back(flag, (std::filesystem::path(dir) / (std::string(name) + suffix)).string());
    }
  }
  return inputs;
}

namespace {

// The files vae writes into an output directory: only their temporaries are
// ours to remove (a user's "thesis.tex.tmp.123" in --out . is not).
bool written_by_vae(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return name == "model.safetensors" || name == "checkpoint.safetensors" || name == "metrics.csv" ||
         (name.rfind("task_3_", 0) == 0 && ends_with(".png")) || name == "training_curve.png" ||
         name == "manifold.png" || name == "latents.png" || name == "latents.csv";
}

// The writer's PID if `name` is exactly "<file>.tmp.<pid>" as
// write_file_atomically names it (std::to_string: no sign, no leading zero)
// and <file> is one vae writes.
bool temporary_pid(const std::string& name, pid_t* pid) {
  const std::string marker = ".tmp.";
  const size_t at = name.rfind(marker);
  if (at == std::string::npos || at == 0 || !written_by_vae(name.substr(0, at))) return false;
  const std::string digits = name.substr(at + marker.size());
  if (digits.empty() || digits.size() > 10 || digits[0] == '0') return false;
  long long value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  if (value > INT_MAX) return false;
  *pid = static_cast<pid_t>(value);
  return true;
}

}  // namespace

int remove_stale_temporaries(const std::string& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return 0;  // nothing to clean; the caller reports a bad directory
  int removed = 0;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    pid_t pid = 0;
    if (!temporary_pid(it->path().filename().string(), &pid)) continue;
    // symlink_status: never follow a link out of the directory.
    if (!std::filesystem::is_regular_file(it->symlink_status(ec)) || ec) continue;
    // Only ESRCH proves the writer gone; EPERM means it is alive.
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;
    if (std::filesystem::remove(it->path(), ec)) ++removed;
  }
  return removed;
}

namespace {

// What the lock file says of its holder ("process 1234, vae train"), or a
// fallback while the holder has not written it yet.
std::string lock_holder(int fd) {
  char text[256];
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  std::string holder;
  for (ssize_t i = 0; i < n && text[i] != '\n'; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    holder += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  return holder.empty() ? std::string("another vae process") : holder;
}

}  // namespace

OutputDirectory::OutputDirectory(const std::string& dir, const std::string& flag, const std::string& command)
    : lock_path_((std::filesystem::path(dir) / kOutputLockName).string()) {
  std::error_code ec;
  for (std::filesystem::path p(dir); !p.empty(); p = p.parent_path()) {
    if (std::filesystem::exists(std::filesystem::symlink_status(p, ec)) || p == p.parent_path()) break;
    created_.push_back(p.string());
  }
  try {
    make_directories(dir);
    lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (lock_fd_ < 0) {
      throw Error(flag + " " + dir + ": cannot open the lock file " + lock_path_ + ": " + std::strerror(errno));
    }
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      const int saved = errno;
      if (saved == EWOULDBLOCK) {
        created_.clear();  // the holder's directory, even if it appeared just now: not ours to remove
        throw Error(flag + " " + dir + " is in use by " + lock_holder(lock_fd_) +
                    ": one command at a time writes an output directory; wait for it to end or choose another " +
                    flag);
      }
      throw Error(flag + " " + dir + ": cannot lock " + lock_path_ + ": " + std::strerror(saved));
    }
    const std::string holder = "process " + std::to_string(::getpid()) + ", " + command + "\n";
    if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, holder.data(), holder.size(), 0) < 0) {
      // The lock holds without the note; the holder is then "another vae process".
    }
  } catch (...) {
    if (lock_fd_ >= 0) ::close(lock_fd_);
    lock_fd_ = -1;
    remove_created();
    throw;
  }
  remove_stale_temporaries(dir);
}

OutputDirectory::~OutputDirectory() {
  remove_created();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

void OutputDirectory::remove_created() {
  std::error_code ec;
  if (created_.empty()) return;
  // The lock file of a directory this command made, if it holds nothing
  // else (a lock file of a directory that stays must stay: another command
  // may have it open), then the directories: remove() takes a directory only
  // when it is empty.
  bool only_the_lock = true;
  std::filesystem::directory_iterator it(created_.front(), ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (it->path().filename() != kOutputLockName) only_the_lock = false;
  }
  if (ec || !only_the_lock) return;
  std::filesystem::remove(lock_path_, ec);
  for (const std::string& p : created_) {
    if (!std::filesystem::is_directory(std::filesystem::symlink_status(p, ec))) break;
    if (!std::filesystem::remove(p, ec)) break;
  }
}

}  // namespace cuvae
