// A pack of runs side by side (include/cuvae/cli/train_pack.h).
//
// Each member is a whole run (train_run.h) with its own backend, trainer,
// randomness and folder; the pack trains them an epoch at a time, all
// members' epoch e before any member's e + 1. On the CPU the members' epochs
// run in one parallel region, one member per thread, each member's own loops
// and GEMMs on that thread: nested OpenMP regions run on one thread, and the
// CPU backend computes the same bits on any thread count (thread_tuner.h).
// On CUDA each member drives its own stream from its own host thread, so that
// the GPU overlaps the members' kernels. A member that fails (a diverged
// model) stops alone: its error goes to stderr and OUT/NAME/error.txt, and
// the others go on.
#include "cuvae/cli/train_pack.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cuvae/backends/lockstep.h"
#include "cuvae/cli/interrupt.h"
#include "cuvae/cli/train_run.h"
#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/model/side_by_side.h"

namespace cuvae {

namespace {

constexpr const char* kPackFile = "pack.json";

// The items of a comma-separated list ("" is one empty item).
std::vector<std::string> split_commas(const std::string& text) {
  if (text.empty()) return {""};
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) items.push_back(item);
  if (!text.empty() && text.back() == ',') items.push_back("");
  return items;
}

uint64_t parse_seed(const std::string& text) {
  if (text.empty() || text.size() > 20 || text.find_first_not_of("0123456789") != std::string::npos) {
    throw Error("--seeds must list seeds (non-negative integers below 2^64) or ranges like 0-7, got '" +
                printable_excerpt(text) + "'");
  }
  errno = 0;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno == ERANGE) throw Error("--seeds: " + text + " is not below 2^64");
  return value;
}

// A value as a member's name shows it: the shortest %g text that reads back
// as the value (3e-4 as 0.0003, 1e-5 as 1e-05).
std::string name_value(double value) {
  char text[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  return text;
}

bool pack_folder(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path(dir) / kPackFile, ec);
}

// A member's flags: the pack's, with its own seed, lr, eps and folder.
TrainOptions member_options(const TrainOptions& o, const PackMember& m, const std::string& root) {
  TrainOptions mo = o;
  mo.seed = m.seed;
  mo.lr = m.lr;
  mo.adam_eps = m.adam_eps;
  mo.out = root + "/" + m.name;
  mo.given_seeds = false;
  return mo;
}

// A resumed pack's member: its folder's checkpoint says what it is.
TrainOptions resumed_member_options(const TrainOptions& o, const std::string& name) {
  TrainOptions mo = o;
  mo.resume = o.resume + "/" + name;
  mo.out = (o.given_out ? o.out : o.resume) + "/" + name;
  return mo;
}

// OUT/pack.json: the members, so that --resume OUT finds them.
void write_pack_file(const std::string& root, const std::vector<PackMember>& members) {
  nlohmann::json list = nlohmann::json::array();
  for (const PackMember& m : members) {
    list.push_back({{"name", m.name}, {"seed", m.seed}, {"lr", m.lr}, {"adam_eps", m.adam_eps}});
  }
  const std::string text = nlohmann::json{{"members", list}}.dump(1) + "\n";
  write_file_atomically(root + "/" + kPackFile, text.data(), text.size());
}

// Each member's epoch `epoch` (those that have it and have not failed), side
// by side; in lock step, each on its own host thread, leaving the pack's
// rounds when it stops. Returns the first interrupt status (every member
// that ran has checkpointed), or 0.
int train_pack_epoch(std::vector<std::unique_ptr<PreparedRun>>& runs, std::vector<std::string>& failures,
                     int epoch, bool cpu, LockstepPack* lockstep) {
  std::vector<int> chosen;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (failures[i].empty() && runs[i]->first_epoch() <= epoch && epoch <= runs[i]->last_epoch()) {
      chosen.push_back(static_cast<int>(i));
    }
  }
  std::vector<int> status(runs.size(), 0);
  const auto train_member = [&](int c) {
    const int i = chosen[c];
    try {
      status[i] = runs[i]->train_epoch(epoch);
    } catch (const std::bad_alloc&) {
      failures[i] = "out of memory";
    } catch (const std::exception& e) {
      failures[i] = e.what();
    }
    if (lockstep != nullptr) lockstep->leave(i);
  };
  if (lockstep != nullptr) {
    // Every member at once, whatever OpenMP would give: each waits for the others' steps.
    lockstep->enter(chosen);
    std::vector<std::thread> threads;
    for (size_t c = 0; c < chosen.size(); ++c) threads.emplace_back(train_member, static_cast<int>(c));
    for (std::thread& t : threads) t.join();
  } else {
    side_by_side(static_cast<int>(chosen.size()), cpu, train_member);
  }
  for (int s : status) {
    if (s != 0) return s;
  }
  return 0;
}

// A failed member's error, on stderr and in its folder.
void report_failure(const PreparedRun& run, const std::string& name, const std::string& what) {
  std::cout.flush();
  std::cerr << "vae: error: " + name + ": " + what + " (the pack's other models go on)\n";
  const std::string text = what + "\n";
  try {
    write_file_atomically(run.out() + "/error.txt", text.data(), text.size());
  } catch (const std::exception& e) {
    std::cerr << "vae: error: " + name + ": " + e.what() + "\n";
  }
}

}  // namespace

std::vector<uint64_t> parse_seed_list(const std::string& text) {
  std::vector<uint64_t> seeds;
  std::set<uint64_t> seen;
  for (const std::string& item : split_commas(text)) {
    const size_t dash = item.find('-', 1);
    const uint64_t first = parse_seed(item.substr(0, dash));
    const uint64_t last = dash == std::string::npos ? first : parse_seed(item.substr(dash + 1));
    if (last < first) throw Error("--seeds: the range " + item + " runs backwards");
    if (last - first >= static_cast<uint64_t>(kMaxPackModels)) {
      throw Error("--seeds " + printable_excerpt(text) + " lists more than " + std::to_string(kMaxPackModels) +
                  " models, the most one pack trains");
    }
    for (uint64_t s = first;; ++s) {
      if (!seen.insert(s).second) throw Error("--seeds " + printable_excerpt(text) + " lists seed " + std::to_string(s) + " twice");
      seeds.push_back(s);
      if (seeds.size() > static_cast<size_t>(kMaxPackModels)) {
        throw Error("--seeds " + printable_excerpt(text) + " lists more than " + std::to_string(kMaxPackModels) +
                    " models, the most one pack trains");
      }
      if (s == last) break;
    }
  }
  return seeds;
}

std::vector<double> parse_rate_list(const std::string& text, const std::string& flag) {
  std::vector<double> values;
  for (const std::string& item : split_commas(text)) {
    char* end = nullptr;
    const double value = std::strtod(item.c_str(), &end);
    if (item.empty() || end != item.c_str() + item.size() || !(value > 0.0) || !std::isfinite(value)) {
      throw Error(flag + " must be positive numbers, comma-separated, got '" + printable_excerpt(text) + "'");
    }
    if (std::find(values.begin(), values.end(), value) != values.end()) {
      throw Error(flag + " " + printable_excerpt(text) + " lists " + shortest(value) + " twice");
    }
    values.push_back(value);
  }
  return values;
}

std::vector<PackMember> pack_members(const TrainOptions& o) {
  const std::vector<double> lrs = parse_rate_list(o.lr_list, "--lr");
  const std::vector<double> epss = parse_rate_list(o.adam_eps_list, "--adam-eps");
  const std::vector<uint64_t> seeds = o.given_seeds ? parse_seed_list(o.seeds) : std::vector<uint64_t>{o.seed};
  if (lrs.size() * epss.size() * seeds.size() > static_cast<size_t>(kMaxPackModels)) {
    throw Error("--lr, --adam-eps and --seeds make " + std::to_string(lrs.size() * epss.size() * seeds.size()) +
                " models, more than the " + std::to_string(kMaxPackModels) + " one pack trains");
  }
  std::vector<PackMember> members;
  for (double lr : lrs) {
    for (double eps : epss) {
      for (uint64_t seed : seeds) {
        PackMember m{"", seed, lr, eps};
        std::vector<std::string> parts;
        if (lrs.size() > 1) parts.push_back("lr-" + name_value(lr));
        if (epss.size() > 1) parts.push_back("adam-eps-" + name_value(eps));
        if (o.given_seeds) parts.push_back("seed-" + std::to_string(seed));
        for (const std::string& part : parts) m.name += (m.name.empty() ? "" : "_") + part;
        members.push_back(m);
      }
    }
  }
  return members;
}

bool is_pack(const TrainOptions& o) {
  if (!o.resume.empty()) return pack_folder(o.resume);
  return o.given_seeds || pack_members(o).size() > 1;
}

std::vector<std::string> read_pack_members(const std::string& pack_dir) {
  const std::string path = pack_dir + "/" + kPackFile;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) throw Error("cannot read " + path);
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("members") || !j["members"].is_array() ||
      j["members"].empty()) {
    throw Error(path + " is not a pack's member list (a JSON object with a non-empty 'members' array)");
  }
  std::vector<std::string> names;
  for (const auto& m : j["members"]) {
    if (!m.is_object() || !m.contains("name") || !m["name"].is_string()) {
      throw Error(path + ": a member without a 'name'");
    }
    const std::string name = m["name"].get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
        std::find(names.begin(), names.end(), name) != names.end()) {
      throw Error(path + ": member name '" + printable_excerpt(name) + "' is not a distinct folder name");
    }
    names.push_back(name);
  }
  if (names.size() > static_cast<size_t>(kMaxPackModels)) throw Error(path + ": more than " + std::to_string(kMaxPackModels) + " members");
  return names;
}

int run_pack(const TrainOptions& o) {
  const bool resuming = !o.resume.empty();
  if (o.given_seed && o.given_seeds) throw Error("--seed and --seeds: give one (--seeds trains a pack, one model per seed)");
  std::vector<std::string> names;
  std::vector<TrainOptions> options;
  std::vector<PackMember> members;
  const std::string root = resuming && !o.given_out ? o.resume : o.out;
  if (resuming) {
    if (o.given_seeds || parse_rate_list(o.lr_list, "--lr").size() > 1 ||
        parse_rate_list(o.adam_eps_list, "--adam-eps").size() > 1) {
      throw Error("--resume " + o.resume + " continues a pack with its own members (" + o.resume +
                  "/pack.json): give no --seeds and no lists of --lr or --adam-eps");
    }
    if (o.given_seed || o.given_lr || o.given_adam_eps) {
      throw Error("--resume " + o.resume + " continues a pack: its members keep their own --seed, --lr and --adam-eps");
    }
    for (const std::string& name : read_pack_members(o.resume)) {
      names.push_back(name);
      options.push_back(resumed_member_options(o, name));
    }
  } else {
    members = pack_members(o);
    for (const PackMember& m : members) {
      names.push_back(m.name);
      options.push_back(member_options(o, m, root));
    }
  }
  // The pack's folder: locked for the pack's life, its member list first.
  const OutputDirectory out_dir(root, resuming && !o.given_out ? "--resume" : "--out", "vae train (a pack)");
  std::error_code ec;
  const bool own_folder = resuming && std::filesystem::equivalent(root, o.resume, ec);
  if (!own_folder && !o.overwrite) {
    if (pack_folder(root)) {
      throw Error("--out " + root + " holds a pack (" + root + "/pack.json): continue it with --resume " + root +
                  ", or give --overwrite to start over there");
    }
    if (std::filesystem::exists(root + "/checkpoint.safetensors", ec)) {
      throw Error("--out " + root + " holds a run (" + root + "/checkpoint.safetensors): a pack's folder holds "
                  "one folder per model; choose another --out");
    }
  }
  set_interrupted_pack(root);
  // Every member set up (its flags and checkpoint checked, its folder locked)
  // before the member list is written: a pack refused here leaves nothing.
  side_by_side_threads(1, true);  // reads OpenMP's count before any member runs
  // In lock step (on CUDA by default) the members share one backend; it
  // outlives them (declared before `runs`).
  std::unique_ptr<LockstepPack> lockstep;
  if (o.pack_mode != "threads") {
    std::ostringstream quiet;  // the first member prints the device
    std::unique_ptr<Backend> shared = open_backend(options[0].device, quiet);
    if (o.pack_mode == "lockstep" || shared->name() == "cuda") {
      lockstep = std::make_unique<LockstepPack>(std::move(shared), static_cast<int>(options.size()), o.cuda_graph);
    }
  }
  std::vector<std::unique_ptr<PreparedRun>> runs;
  std::shared_ptr<const TrainData> data;
  for (size_t i = 0; i < options.size(); ++i) {
    const bool adaptive = !lockstep && side_by_side_threads(static_cast<int>(options.size()), true) == 1;
    RunStyle style{names[i] + ": ", true, i > 0, adaptive};
    runs.push_back(prepare_run(options[i], style, data,
                               lockstep ? lockstep->member_backend(static_cast<int>(i)) : nullptr));
    if (i == 0) data = runs[0]->data();
  }
  if (resuming && !own_folder) {
    std::ifstream in(o.resume + "/" + kPackFile, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_file_atomically(root + "/" + kPackFile, text.data(), text.size());
  } else if (!resuming) {
    write_pack_file(root, members);
  }
  const bool cpu = runs[0]->backend_name() == "cpu";
  std::cout << "pack: " << runs.size() << " models in " << root << ", "
            << (lockstep && lockstep->batched()
                    ? std::string("in lock step, each call of every model's step run together (batched GEMMs and kernels")
                          + (o.cuda_graph ? ", the pack's step one CUDA Graph)" : ")")
                : lockstep ? std::string("in lock step, the models' steps interleaved call by call on one backend")
                : cpu      ? "side by side on " + std::to_string(side_by_side_threads(static_cast<int>(runs.size()), true)) +
                          " CPU threads (each model's own work on one)"
                           : std::string("one stream and host thread each")) << ": " << [&] {
                 std::string list;
                 for (size_t i = 0; i < names.size() && i < 8; ++i) list += (i ? ", " : "") + names[i];
                 if (names.size() > 8) list += ", ... " + names.back();
                 return list;
               }() << "\n";
  std::cout.flush();  // a second interrupt exits without flushing
  std::vector<std::string> failures(runs.size());
  int first = runs[0]->first_epoch(), last = runs[0]->last_epoch();
  for (const auto& run : runs) {
    first = std::min(first, run->first_epoch());
    last = std::max(last, run->last_epoch());
  }
  for (int epoch = first; epoch <= last; ++epoch) {
    std::vector<std::string> before = failures;
    const int status = train_pack_epoch(runs, failures, epoch, cpu, lockstep.get());
    for (size_t i = 0; i < runs.size(); ++i) {
      if (failures[i] != before[i]) report_failure(*runs[i], names[i], failures[i]);
    }
    if (status != 0) {
      std::cerr << "vae: every model of the pack in " + root +
                       " holds its checkpoint in its folder; resume with: vae train --resume " + root + " --data " +
                       o.data + "\n";
      return status;
    }
  }
  int failed = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (!failures[i].empty()) {
      ++failed;
      continue;
    }
    if (const int status = runs[i]->write_task_images()) return status;
  }
  std::cout << "pack: " << runs.size() - failed << " of " << runs.size() << " models trained in " << root
            << (failed ? ", " + std::to_string(failed) + " failed (their error.txt says why)" : std::string()) << "\n";
  return failed ? 1 : 0;
}

}  // namespace cuvae
