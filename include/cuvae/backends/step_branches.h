// The branch structure of a training step: which calls run on the main
// branch (forward, the input-gradient chain, Adam: the critical path) and
// which on the side branch (the weight-gradient GEMMs and the bias-gradient
// sums, which nothing on the main branch reads until the join), with the
// forks and joins between them, in call order.
//
// The CUDA backend records a step's structure while capturing it as a CUDA
// Graph (the side branch is a second stream, forked and joined with events,
// so the graph keeps the dependencies) and checks each replayed step against
// it, as StepGraph checks the calls themselves: a step whose calls move
// between branches, or that forks or joins elsewhere, is a programming error
// and throws rather than replaying a graph with other dependencies.
//
// Plain C++, no CUDA: tests/backends/test_step_branches.cpp checks it on any machine.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace cuvae {

class StepBranches {
 public:
  enum class Branch { kMain, kSide };
  enum class Kind { kCall, kFork, kEnd, kJoin };
  struct Entry {
    Kind kind;
    Branch branch;     // where a call ran; kMain for fork, end and join
    std::string what;  // a call's name; empty otherwise
    bool operator==(const Entry& other) const {
      return kind == other.kind && branch == other.branch && what == other.what;
    }
  };

  // Recording: begin_recording, the step's events, end_step. Checking a
  // replay: begin_checking, the same events (each compared as it comes),
  // end_step. Outside both (calls outside a recorded step), the transitions
  // are still checked but nothing is kept.
  void begin_recording();
  void begin_checking();
  // Fork: later calls go to the side branch (which starts after everything
  // issued so far on the main branch). Not while already on it.
  void fork();
  // Later calls go back to the main branch; the side branch's work stays
  // pending until join. Only on the side branch.
  void end_branch();
  // The main branch waits for the pending side work. False when there was
  // none (nothing is recorded then); not while on the side branch.
  bool join();
  // A call on the current branch.
  void call(const std::string& what);
  // The step is over: it must be back on the main branch with nothing
  // pending (a CUDA Graph capture must end joined), and a replay must have
  // made all the recorded events.
  void end_step();

  Branch branch() const { return on_side_ ? Branch::kSide : Branch::kMain; }
  bool side_pending() const { return side_pending_; }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  void add(Kind kind, Branch branch, const std::string& what);

  std::vector<Entry> entries_;
  size_t next_ = 0;  // checking: the next recorded entry
  bool recording_ = false, checking_ = false;
  bool on_side_ = false, side_pending_ = false;
};

}  // namespace cuvae
