// Tests of the output-file helpers in src/io/atomic_file.cpp that the commands
// call before writing: the path check, stale temporaries, OutputDirectory.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using cuvae::testing::dead_pid;

class AtomicFileHelpers : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return (dir_.path() / name).string(); }
  void touch(const std::string& name) const { std::ofstream(path(name)) << "x"; }

  cuvae::testing::TempDir dir_;
};

// The message of the cuvae::Error that `f` throws, or "" if it throws none.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const cuvae::Error& e) {
    return e.what();
  }
  return "";
}

TEST_F(AtomicFileHelpers, RemovesOnlyDeadWritersTemporaries) {
  const std::string dead = std::to_string(dead_pid());
  const std::string alive = std::to_string(::getpid());
  touch("checkpoint.safetensors.tmp." + dead);  // the one to go
  touch("model.safetensors.tmp." + alive);      // its writer runs
  touch("notes.tmp." + dead + "x");             // not the pattern
  touch("notes.tmp.0" + dead);                  // to_string writes no leading zero
  touch(".tmp." + dead);                        // no target name
  touch("thesis.tex.tmp." + dead);              // not a file vae writes
  touch("notes.tmp.99999999999");               // no such PID can exist
  fs::create_directory(path("metrics.csv.tmp." + dead));  // not a regular file
  fs::create_symlink(path("notes.tmp.0" + dead), path("task_3_1.png.tmp." + dead));  // never followed

  EXPECT_EQ(cuvae::remove_stale_temporaries(dir_.path().string()), 1);
  EXPECT_FALSE(fs::exists(path("checkpoint.safetensors.tmp." + dead)));
  for (const std::string& kept :
       {"model.safetensors.tmp." + alive, "notes.tmp." + dead + "x", "notes.tmp.0" + dead,
        ".tmp." + dead, "thesis.tex.tmp." + dead, std::string("notes.tmp.99999999999"), "metrics.csv.tmp." + dead}) {
    EXPECT_TRUE(fs::exists(path(kept))) << kept;
  }
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(path("task_3_1.png.tmp." + dead))));
  EXPECT_EQ(cuvae::remove_stale_temporaries(path("missing")), 0);
}

TEST_F(AtomicFileHelpers, WritablePathCheck) {
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("new.json")); }), "");
  touch("old.json");
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("old.json")); }), "");
  fs::create_directory(path("sub"));
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("sub")); }),
            "cannot write " + path("sub") + ": is a directory");
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("nope/x.json")); }),
            "cannot write " + path("nope/x.json") + ": directory " + path("nope") +
                ": No such file or directory");
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("old.json/x")); }),
            "cannot write " + path("old.json/x") + ": Not a directory");
  // A name of 250 bytes is legal; its temporary is kept within 255.
  const std::string long_name = path(std::string(250, 'n'));
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(long_name); }), "");
  const std::string text = "written";
  EXPECT_NO_THROW(cuvae::write_file_atomically(long_name, text.data(), text.size()));
  std::ifstream in(long_name);
  EXPECT_TRUE(in.good());
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path(std::string(256, 'n'))); }),
            "cannot write " + path(std::string(256, 'n')) + ": File name too long");
  // access() says yes to root everywhere; creating a file says no.
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path("/proc/version"); }).rfind("cannot write /proc/version: ", 0), 0u);
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path("/dev/full"); }),
            "cannot write /dev/full: exists and is not a regular file");
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  EXPECT_EQ(error_of([&] { cuvae::check_writable_file_path(path("fifo")); }),
            "cannot write " + path("fifo") + ": exists and is not a regular file");
}

TEST_F(AtomicFileHelpers, OutputDirectoryRemovesWhatItMadeUnlessKept) {
  {
    cuvae::OutputDirectory out(path("a/b/c"), "--out", "vae test");
    EXPECT_TRUE(fs::is_directory(path("a/b/c")));
  }
  EXPECT_FALSE(fs::exists(path("a")));
  {
    cuvae::OutputDirectory out(path("a/b"), "--out", "vae test");
    out.keep();
  }
  EXPECT_TRUE(fs::is_directory(path("a/b")));
  {
    cuvae::OutputDirectory out(path("a/b/c/d"), "--out", "vae test");
  }
  EXPECT_FALSE(fs::exists(path("a/b/c")));
  EXPECT_TRUE(fs::is_directory(path("a/b")));  // was there before
  {
    cuvae::OutputDirectory out(path("x/y"), "--out", "vae test");
    touch("x/y/written");
  }
  EXPECT_TRUE(fs::exists(path("x/y/written")));  // not empty: kept
}

// Two commands into one directory mix their files: the second is refused
// while the first holds it (flock: separate opens conflict even within one
// process), and gets it once the first is gone.
TEST_F(AtomicFileHelpers, OutputDirectoryIsLockedForItsLifetime) {
  {
    cuvae::OutputDirectory first(path("run"), "--out", "vae train");
    EXPECT_TRUE(fs::exists(path("run/.vae.lock")));
    EXPECT_EQ(error_of([&] { cuvae::OutputDirectory second(path("run"), "--out", "vae sample"); }),
              "--out " + path("run") + " is in use by process " + std::to_string(::getpid()) +
                  ", vae train: one command at a time writes an output directory; wait for it to end or "
                  "choose another --out");
    EXPECT_TRUE(fs::is_directory(path("run"))) << "the refused command removed the holder's directory";
    touch("run/model.safetensors");
  }
  cuvae::OutputDirectory third(path("run"), "--out", "vae train");
  EXPECT_TRUE(fs::exists(path("run/model.safetensors")));
  EXPECT_TRUE(fs::exists(path("run/.vae.lock"))) << "a directory that stays keeps its lock file";
}

TEST_F(AtomicFileHelpers, OutputDirectoryClearsStaleTemporaries) {
  fs::create_directory(path("out"));
  const std::string stale = "out/task_3_1.png.tmp." + std::to_string(dead_pid());
  touch(stale);
  cuvae::OutputDirectory out(path("out"), "--out", "vae test");
  EXPECT_FALSE(fs::exists(path(stale)));
}

}  // namespace
