// Atomic file writes: a reader (or a crash) sees the old file or the new
// one, whole, never a torn one.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace cuvae {

// Writes `size` bytes to "<path>.tmp.<pid>", fsyncs it, renames it over
// `path`, then fsyncs the directory. On any failure the temporary is removed,
// `path` is left as it was, and cuvae::Error names the path and the reason
// (strerror).
void write_file_atomically(const std::string& path, const void* data, size_t size);

// Files that change together (a run's checkpoint, model and metrics.csv):
// add() writes each to "<path>.tmp.<pid>" and fsyncs it; commit() renames
// them all into place, in the order added. A failing add() (a full disk)
// throws with every target as it was; temporaries not committed are removed
// when the set dies. Only a kill between two renames (microseconds) can
// leave some renamed and not others, the first added first.
class AtomicFileSet {
 public:
  AtomicFileSet() = default;
  ~AtomicFileSet();
  AtomicFileSet(const AtomicFileSet&) = delete;
  AtomicFileSet& operator=(const AtomicFileSet&) = delete;
  void add(const std::string& path, const void* data, size_t size);
  void add(const std::string& path, const std::vector<char>& bytes) { add(path, bytes.data(), bytes.size()); }
  void commit();

 private:
  std::vector<std::pair<std::string, std::string>> pending_;  // {temporary, path}
};

// Creates `dir` and its parents if missing; throws cuvae::Error naming the
// directory when it cannot be created or exists as something else.
void make_directories(const std::string& dir);

// Throws cuvae::Error "cannot write PATH: REASON" when write_file_atomically
// would certainly fail: PATH exists but is not a regular file (a directory,
// a device such as /dev/full), or its directory is missing or not writable.
// For commands that write a file at the end of a long run, to fail first.
void check_writable_file_path(const std::string& path);

// Throws cuvae::Error "FLAG OUTPUT is the file of INPUT_FLAG (INPUT): ..."
// when `output` names the same file (device and inode, so through links and
// other spellings) as one of `inputs` ({flag, path}): writing it would
// replace an input of the same command. Inputs that do not exist, and an
// output that does not, are no conflict.
void check_output_is_not_an_input(const std::string& flag, const std::string& output,
                                  const std::vector<std::pair<std::string, std::string>>& inputs);

// The files of an MNIST-format directory (DIR/{train,t10k}-{images-idx3,
// labels-idx1}-ubyte[.gz]), as --data inputs for check_output_is_not_an_input.
std::vector<std::pair<std::string, std::string>> data_set_inputs(const std::string& flag, const std::string& dir);

// Removes the temporaries of write_file_atomically in `dir` whose writer is
// dead ("<name>.tmp.<pid>" where <name> is a file vae writes there: the
// model, checkpoint, metrics.csv, task_3_*.png, training_curve.png,
// manifold.png, latents.png, latents.csv; a regular file; kill(pid, 0)
// says ESRCH): a run killed mid-write leaves one, and the next run's PID
// differs. Files of live processes and every other name are left. Returns
// how many went.
int remove_stale_temporaries(const std::string& dir);

// The name of the lock file OutputDirectory holds in a directory.
inline constexpr const char* kOutputLockName = ".vae.lock";

// The output directory of a command: made (with its parents), locked, and
// cleared of stale temporaries on construction. The lock is an advisory
// flock() on DIR/.vae.lock, held for the object's life and released by the
// kernel when the process ends however it ends (kill -9 included): a second
// command given the same directory while the first runs is refused with
// cuvae::Error naming `flag`, the directory and the holder (its process id
// and command, written into the lock file), so two runs never mix their
// files. The lock file stays in the directory. Unless keep() is called, the
// directories it had to make are removed again when it dies, if they hold
// nothing but the lock file, so a command that fails leaves no empty
// directory behind.
class OutputDirectory {
 public:
  // `flag` names the directory in errors ("--out"), `command` the holder in
  // the lock file ("vae train").
  OutputDirectory(const std::string& dir, const std::string& flag, const std::string& command);
  ~OutputDirectory();
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;
  void keep() { created_.clear(); }

 private:
  void remove_created();

  std::vector<std::string> created_;  // deepest first
  std::string lock_path_;
  int lock_fd_ = -1;
};

}  // namespace cuvae
