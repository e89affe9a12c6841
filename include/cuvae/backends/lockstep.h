// A pack's models trained in lock step on one backend (packs on a GPU:
// docs/packs.md).
//
// Each member trains as it would alone: its own Trainer on its own member
// backend, on its own host thread, with its own randomness, folder and epoch
// loop. What the members share is the device. Every member's training step
// (Backend::run_step) is collected, not run; when every member still training
// has collected its step, the last to arrive runs them all together through
// the backend's StepBatch: on the CUDA backend call j of every member is one
// batched GEMM or one kernel launch over all members, and the pack's whole
// step one CUDA Graph. Everything else a member does on the backend (its
// set-up, the end of its epochs, checkpoints) runs at once, one member at a
// time.
//
// A backend without a StepBatch (the CPU) runs the collected steps call by
// call, interleaved (call j of every member, then call j + 1): the same lock
// step, which the tests drive there.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae {

class LockstepPack {
 public:
  // `graph`: the pack's step as one CUDA Graph (where the backend has them).
  LockstepPack(std::unique_ptr<Backend> shared, int members, bool graph);
  ~LockstepPack();
  LockstepPack(const LockstepPack&) = delete;
  LockstepPack& operator=(const LockstepPack&) = delete;

  // Member i's backend, a view of the shared one; the pack outlives it.
  std::unique_ptr<Backend> member_backend(int member);
  int members() const { return static_cast<int>(calls_.size()); }
  // Whether call j of the members runs as one batched call (the backend has
  // a StepBatch), rather than interleaved.
  bool batched() const { return batch_ != nullptr; }
  Backend& shared() { return *shared_; }
  // The backend's batched and lone calls so far (zero where it interleaves).
  StepBatch::Counts batch_counts() const { return batch_ ? batch_->counts_so_far() : StepBatch::Counts{}; }

  // Before `members` start training side by side, each on its own thread;
  // each calls leave(i) when it stops training (the end of its epoch, an
  // error, an interrupt), so that the others do not wait for it.
  void enter(const std::vector<int>& members);
  void leave(int member);

 private:
  friend class MemberBackend;
  // Member i collected its step: waits until every present member has, then
  // the round runs (on the last to arrive); rethrows the round's error.
  void arrive(int member);
  // Runs the arrived members' steps; round_mutex_ held.
  void run_round();

  std::unique_ptr<Backend> shared_;
  const bool graph_;
  std::unique_ptr<StepBatch> batch_;
  // The shared backend, one member at a time (recursive: a member's
  // collected step calls its backend from inside run_step).
  std::recursive_mutex device_;
  // Interleaved rounds: each member's step as calls on the backend.
  std::vector<std::vector<std::function<void(Backend&)>>> calls_;
  std::mutex round_mutex_;
  std::condition_variable round_done_;
  std::set<int> present_;
  std::vector<int> arrived_;
  std::vector<std::exception_ptr> errors_;
  unsigned long long rounds_ = 0;
};

}  // namespace cuvae
