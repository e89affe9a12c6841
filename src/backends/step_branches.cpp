#include "cuvae/backends/step_branches.h"

#include "cuvae/error.h"

namespace cuvae {

namespace {

const char* kind_name(StepBranches::Kind kind) {
  switch (kind) {
    case StepBranches::Kind::kCall: return "a call";
    case StepBranches::Kind::kFork: return "a fork to the side branch";
    case StepBranches::Kind::kEnd: return "the end of a side branch";
    case StepBranches::Kind::kJoin: return "a join of the side branch";
  }
  return "?";
}

std::string describe(const StepBranches::Entry& e) {
  std::string text = kind_name(e.kind);
  if (e.kind == StepBranches::Kind::kCall) {
    text += " (" + e.what + ") on the " +
            (e.branch == StepBranches::Branch::kSide ? "side" : "main") + " branch";
  }
  return text;
}

[[noreturn]] void structure_error(const std::string& what) {
  throw Error("CUDA Graph step branches: " + what + " (an internal error; --no-cuda-graph or no --two-branch-graph avoids it)");
}

}  // namespace

void StepBranches::begin_recording() {
  entries_.clear();
  recording_ = true;
  checking_ = false;
  on_side_ = side_pending_ = false;
}

void StepBranches::begin_checking() {
  next_ = 0;
  recording_ = false;
  checking_ = true;
  on_side_ = side_pending_ = false;
}

void StepBranches::add(Kind kind, Branch where, const std::string& what) {
  const Entry entry{kind, where, what};
  if (recording_) entries_.push_back(entry);
  if (!checking_) return;
  if (next_ >= entries_.size()) {
    structure_error("the step made " + describe(entry) + " after the recorded step's " +
                    std::to_string(entries_.size()) + " events");
  }
  const Entry& recorded = entries_[next_];
  if (!(recorded == entry)) {
    structure_error("event " + std::to_string(next_ + 1) + " is " + describe(entry) +
                    ", the recorded step's " + describe(recorded));
  }
  ++next_;
}

void StepBranches::fork() {
  if (on_side_) structure_error("a fork while already on the side branch");
  add(Kind::kFork, Branch::kMain, "");
  on_side_ = true;
}

void StepBranches::end_branch() {
  if (!on_side_) structure_error("the end of a side branch while on the main branch");
  add(Kind::kEnd, Branch::kMain, "");
  on_side_ = false;
  side_pending_ = true;
}

bool StepBranches::join() {
  if (on_side_) structure_error("a join while on the side branch (end it first)");
  if (!side_pending_) return false;
  add(Kind::kJoin, Branch::kMain, "");
  side_pending_ = false;
  return true;
}

void StepBranches::call(const std::string& what) { add(Kind::kCall, branch(), what); }

void StepBranches::end_step() {
  if (on_side_) structure_error("the step ended on the side branch");
  if (side_pending_) structure_error("the step ended with its side branch not joined");
  if (checking_ && next_ != entries_.size()) {
    structure_error("the step made " + std::to_string(next_) + " events, the recorded step " +
                    std::to_string(entries_.size()));
  }
  recording_ = checking_ = false;
}

}  // namespace cuvae
