#!/usr/bin/env python3
"""cuvae sweeps: configurations x seeds of `vae train`, as a Slurm array job or
on one machine, each run resumable, and one table and chart of the results.

  sweep.py check   SPEC                  validate the spec; list its runs
  sweep.py write   SPEC [--script PATH]  write the Slurm batch script (default
                                         OUT/sweep.sbatch); then: sbatch it
  sweep.py run     SPEC [--jobs N] [--only RUN,...]
                                         run the sweep here, N tasks at a time
  sweep.py task    SPEC --index I        one array task (what the script runs)
  sweep.py status  SPEC [--pending]      each run's state; --pending prints the
                                         unfinished tasks' indices for sbatch --array
  sweep.py collect SPEC [--csv PATH] [--png PATH]
                                         the table (default OUT/results.csv) and
                                         chart (OUT/results.png)

SPEC is a JSON file (docs/sweeps.md describes every field):

  {"out": "runs/sweep", "data": "data/mnist", "vae": "build/vae", "device": "cpu",
   "threads": 1, "common": {"epochs": 30, "batch-size": 100},
   "configs": {"elbo": {"objective": "elbo"}, "iwae-5": {"objective": "iwae", "samples": 5}},
   "seeds": [0, 1, 2], "eval": {"k": 5000},
   "slurm": {"time": "04:00:00", "partition": "gpu", "signal_seconds": 300}}

Run CONFIG with seed S lives in OUT/CONFIG/seed-S. Keys of common and of each
configuration are `vae train` flags without their dashes (checked against
`vae train --help`); true gives a flag without a value, false leaves it out.
Relative paths are taken from the current directory and frozen, absolute,
into OUT/sweep.json, which the batch script and every task read.

A task is idempotent: a finished run is left alone; a run with a checkpoint
is resumed (vae train --resume, with the spec's flags, so a changed spec is
refused rather than mixed in); any other run is started. Under Slurm the
script is sent SIGUSR1 signal_seconds before the time limit: the task passes
SIGTERM on to vae, which checkpoints and exits 143, and the task requeues
itself (scontrol requeue). A SIGTERM from Slurm itself (scancel, scontrol
requeue, preemption) reaches vae directly; the task does not pass it on
(vae's second SIGTERM would exit without a checkpoint).

With "pack": true (or a number >= the number of seeds) a task trains one
configuration's seeds as one pack, in one vae process (vae train --seeds
S1,S2,... --out OUT/CONFIG; the runs stay OUT/CONFIG/seed-S). Its task is
idempotent too: every run finished, nothing; OUT/CONFIG/pack.json there and
every member with a checkpoint, vae train --resume OUT/CONFIG (the spec's
--lr and --adam-eps checked here against each checkpoint: vae takes neither
with a pack's --resume); otherwise the pack is started, with --overwrite when
a first start left some members with a checkpoint and others without.

Bad input: one line "sweep: error: ..." naming the field, exit 2.
"""

import csv
import glob
import gzip
import json
import math
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time

EXIT_BAD_INPUT = 2
SPEC_FIELDS = ("name", "out", "data", "vae", "device", "threads", "common", "configs", "seeds",
               "eval", "pack", "slurm")
SLURM_FIELDS = ("time", "partition", "signal_seconds", "max_parallel", "cpus_per_task", "mem",
                "job_name", "options")
# Flags the sweep sets itself, per run.
RESERVED_TRAIN = {"out": "the sweep puts each run in OUT/CONFIG/seed-S",
                  "resume": "the sweep resumes a run that has a checkpoint",
                  "overwrite": "the sweep never starts a run over",
                  "seed": "give the spec's 'seeds'", "seeds": "give the spec's 'seeds' (and 'pack')",
                  "data": "give the spec's 'data'",
                  "device": "give the spec's 'device'", "help": "not a training flag"}
RESERVED_EVAL = {"model": "the run's model.safetensors", "data": "give the spec's 'data'",
                 "device": "give the spec's 'device'", "per-image": "not kept by the sweep",
                 "help": "not an evaluation flag"}
TASK_IMAGES = ["task_3_1.png", "task_3_2.png"] + [f"task_3_3_{i}.png" for i in range(5)]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


class BadInput(Exception):
    pass


def fail(message, code=EXIT_BAD_INPUT):
    sys.stderr.write("sweep: error: " + " ".join(str(message).split()) + "\n")
    sys.exit(code)


def say(message):
    print("sweep: " + message, flush=True)


# ---------------------------------------------------------------------------
# The spec

def no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise BadInput(f"duplicate key '{key}' (in one JSON object; each run and field is named once)")
        seen[key] = value
    return seen


def json_type(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def want(value, kind, field):
    ok = {"string": lambda v: isinstance(v, str),
          "object": lambda v: isinstance(v, dict),
          "list": lambda v: isinstance(v, list),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)}[kind]
    if not ok(value):
        raise BadInput(f"{field}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                       f"got {json_type(value)} ({json.dumps(value)[:60]})")
    return value


def positive(value, field, low=1, high=None):
    want(value, "integer", field)
    if value < low or (high is not None and value > high):
        raise BadInput(f"{field}: {value} is out of range ({low}..{high if high else 'any'})")
    return value


def parse_seeds(value):
    if isinstance(value, str):
        seeds = []
        for part in value.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
                raise BadInput(f"seeds: '{part.strip()}' in '{value}' is not a seed or a range A-B")
            seeds += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    else:
        want(value, "list", "seeds")
        seeds = value
    if not seeds:
        raise BadInput("seeds: empty; give at least one seed (a list [0, 1] or a string '0-7')")
    for i, s in enumerate(seeds):
        positive(s, f"seeds[{i}]", 0, 2**64 - 1)
    dup = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if dup:
        raise BadInput(f"seeds: seed {dup[0]} is given twice (the run names seed-{dup[0]} would repeat)")
    return list(seeds)


def help_flags(vae, command):
    """The long flags of `vae COMMAND --help`: name -> takes a value."""
    try:
        out = subprocess.run([vae, command, "--help"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise BadInput(f"vae: cannot run {vae}: {e.strerror}")
    except subprocess.TimeoutExpired:
        raise BadInput(f"vae: {vae} {command} --help did not answer in 60 s")
    if out.returncode != 0:
        raise BadInput(f"vae: {vae} {command} --help exited with {out.returncode}")
    flags = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^\s+(?:-\w,)?(--[a-z0-9-]+(?:,--[a-z0-9-]+)*)(\S*)(.*)$", line)
        if not m:
            continue
        # "--epochs INT:...", "--data TEXT=...": one space, then the value's type.
        takes_value = bool(re.match(r" [A-Z]+\b", m.group(3))) and not m.group(2)
        for name in m.group(1).split(","):
            flags[name[2:]] = takes_value
    if "epochs" not in flags and command == "train":
        raise BadInput(f"vae: {vae} train --help lists no --epochs: not cuvae's vae")
    return flags


def flag_args(values, known, reserved, field, command):
    """`--flag value` arguments of a JSON object of flags, checked against vae's help."""
    args = []
    for key, value in values.items():
        where = f"{field}.{key}"
        if key.startswith("-"):
            raise BadInput(f"{where}: write flags without their dashes ('{key.lstrip('-')}')")
        if key in reserved:
            raise BadInput(f"{where}: --{key} is set by the sweep ({reserved[key]})")
        if key not in known:
            raise BadInput(f"{where}: vae {command} has no flag --{key} (vae {command} --help lists them)")
        if not known[key]:
            if not isinstance(value, bool):
                raise BadInput(f"{where}: --{key} takes no value; give true or false, "
                               f"got {json_type(value)}")
            if value:
                args.append(f"--{key}")
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadInput(f"{where}: expected a string or a number for --{key}, got {json_type(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{where}: {value} is not a finite number")
        text = repr(value) if isinstance(value, float) else str(value)
        if text == "":
            raise BadInput(f"{where}: empty")
        args += [f"--{key}", text]
    return args


class Run:
    def __init__(self, spec, config, seed, flags):
        self.config, self.seed, self.flags = config, seed, flags
        self.name = f"{config}/seed-{seed}"
        self.dir = os.path.join(spec["out"], config, f"seed-{seed}")


def load_spec(path, check_vae=True):
    """The spec as a dict with absolute paths, its runs and tasks; BadInput names the field."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file")
    try:
        raw = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    want(raw, "object", "the spec")
    for key in raw:
        if key not in SPEC_FIELDS:
            raise BadInput(f"{key}: unknown field (the fields: {', '.join(SPEC_FIELDS)})")
    for key in ("out", "configs", "seeds"):
        if key not in raw:
            raise BadInput(f"{key}: missing (required: out, configs, seeds)")
    spec = {}
    stem = os.path.splitext(os.path.basename(path))[0]
    spec["name"] = want(raw.get("name", stem), "string", "name")
    if not NAME_RE.match(spec["name"]):
        raise BadInput(f"name: '{spec['name']}' is not a plain name (letters, digits, . _ + = -)")
    for key, default in (("out", None), ("data", "data/mnist"), ("vae", "build/vae")):
        value = want(raw.get(key, default), "string", key)
        if not value:
            raise BadInput(f"{key}: empty path")
        spec[key] = os.path.abspath(value)
    spec["device"] = want(raw.get("device", "cpu"), "string", "device")
    if spec["device"] not in ("cpu", "cuda"):
        raise BadInput(f"device: '{spec['device']}' is not cpu or cuda")
    spec["threads"] = positive(raw["threads"], "threads", 1, 4096) if "threads" in raw else None
    spec["seeds"] = parse_seeds(raw["seeds"])
    spec["pack"] = raw.get("pack", 1)
    if spec["pack"] is not True:
        positive(spec["pack"], "pack", 1, 1024)
    # pack_size: the runs of one task. A pack is one configuration's seeds in
    # OUT/CONFIG, the pack's folder: a configuration's seeds cannot be split.
    spec["pack_size"] = len(spec["seeds"]) if spec["pack"] is True or spec["pack"] > 1 else 1
    if spec["pack"] is not True and 1 < spec["pack"] < len(spec["seeds"]):
        raise BadInput(f"pack: {spec['pack']} is fewer than the {len(spec['seeds'])} seeds; a pack trains "
                       "all seeds of one configuration in one vae process, in OUT/CONFIG (the pack's "
                       "folder), so a configuration's seeds cannot be split over packs; give 1 (one run "
                       f"per task), or true or a number >= {len(spec['seeds'])} (one pack per configuration)")
    if spec["pack"] is not True and spec["pack"] > 1 and len(spec["seeds"]) == 1:
        spec["pack_size"] = 1  # one seed: the run alone, a pack of one is no gain
    common = want(raw.get("common", {}), "object", "common")
    configs = want(raw["configs"], "object", "configs")
    if not configs:
        raise BadInput("configs: empty; name at least one configuration")
    for name, flags in configs.items():
        if not NAME_RE.match(name):
            raise BadInput(f"configs.{name}: '{name}' cannot name a folder "
                           "(letters, digits, . _ + = -, not first . or -)")
        want(flags, "object", f"configs.{name}")
    ev = raw.get("eval")
    if ev is not None:
        want(ev, "object", "eval")
    slurm = want(raw.get("slurm", {}), "object", "slurm")
    for key in slurm:
        if key not in SLURM_FIELDS:
            raise BadInput(f"slurm.{key}: unknown field (the fields: {', '.join(SLURM_FIELDS)})")
    for key in ("time", "partition", "mem", "job_name"):
        if key in slurm and (not want(slurm[key], "string", f"slurm.{key}") or
                             re.search(r"\s", slurm[key])):
            raise BadInput(f"slurm.{key}: '{slurm[key]}' is empty or has white space")
    if "signal_seconds" in slurm:
        positive(slurm["signal_seconds"], "slurm.signal_seconds", 1, 65535)
    for key in ("max_parallel", "cpus_per_task"):
        if key in slurm:
            positive(slurm[key], f"slurm.{key}", 1, 1000000)
    for i, opt in enumerate(want(slurm.get("options", []), "list", "slurm.options")):
        if not isinstance(opt, str) or not opt.startswith("--") or "\n" in opt:
            raise BadInput(f"slurm.options[{i}]: expected a string '--option=value', got {json.dumps(opt)[:60]}")
    spec["slurm"] = slurm
    spec["common"], spec["configs"], spec["eval"] = common, configs, ev

    if check_vae:
        if not (os.path.isfile(spec["vae"]) and os.access(spec["vae"], os.X_OK)):
            raise BadInput(f"vae: {spec['vae']} is not an executable file (build it, or set 'vae')")
        train_flags = help_flags(spec["vae"], "train")
        common_args = flag_args(common, train_flags, RESERVED_TRAIN, "common", "train")
        runs = []
        for config, flags in configs.items():
            merged = dict(common)
            merged.update(flags)
            flag_args(flags, train_flags, RESERVED_TRAIN, f"configs.{config}", "train")
            args = flag_args(merged, train_flags, RESERVED_TRAIN, f"configs.{config}", "train")
            for key in ("lr", "adam-eps"):
                if "," in str(merged.get(key, "")):
                    where = f"configs.{config}" if key in flags else "common"
                    raise BadInput(f"{where}.{key}: '{merged[key]}' is a list: vae would train a pack of "
                                   "several models in each run's folder; give one value per configuration "
                                   "(one configuration per value)")
            runs += [Run(spec, config, seed, args) for seed in spec["seeds"]]
        del common_args
        spec["eval_args"] = (flag_args(ev, help_flags(spec["vae"], "eval"), RESERVED_EVAL, "eval", "eval")
                             if ev is not None else None)
        if spec["pack_size"] > 1 and "seeds" not in train_flags:
            raise BadInput("pack: packs (several runs in one vae process) are not available in this "
                           "build (vae train --help has no --seeds); give pack 1")
        spec["runs"] = runs
        spec["tasks"] = tasks_of(runs, spec["pack_size"])
    return spec


def tasks_of(runs, pack):
    """The array tasks: one list of runs each. A pack is the seeds of one
    configuration trained in one process (pack is then the number of seeds);
    with pack 1, one run per task."""
    tasks = []
    for run in runs:
        if tasks and pack > 1 and len(tasks[-1]) < pack and tasks[-1][0].config == run.config:
            tasks[-1].append(run)
        else:
            tasks.append([run])
    return tasks


def frozen(spec):
    """What OUT/sweep.json holds: the spec with absolute paths."""
    keys = ("name", "out", "data", "vae", "device", "threads", "common", "configs", "seeds", "eval",
            "pack", "slurm")  # pack as given (a number or true)
    return {k: spec[k] for k in keys if spec.get(k) is not None}


def freeze(spec):
    """Writes OUT/sweep.json; a folder that holds another sweep's spec is refused."""
    path = os.path.join(spec["out"], "sweep.json")
    text = json.dumps(frozen(spec), indent=2, sort_keys=True) + "\n"
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is not None and {k: v for k, v in old.items() if k != "slurm"} != \
                {k: v for k, v in frozen(spec).items() if k != "slurm"}:
            raise BadInput(f"out: {spec['out']} holds another sweep ({path} differs from this spec "
                           "in more than 'slurm'); choose another out, or remove that file if its runs "
                           "should be continued with this spec")
    os.makedirs(os.path.join(spec["out"], "logs"), exist_ok=True)
    write_atomically(path, text)
    return path


def write_atomically(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# A run's state on disk

def checkpoint_metadata(path):
    """The metadata of a safetensors file (a dict of strings), or None if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            n = struct.unpack("<Q", head)[0]
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
        meta = header.get("__metadata__", {})
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def flag_value(flags, name):
    if f"--{name}" in flags:
        return flags[flags.index(f"--{name}") + 1]
    return None


def run_state(spec, run):
    """(state, step, total): state is new, partial, trained (no eval yet) or finished."""
    ckpt = os.path.join(run.dir, "checkpoint.safetensors")
    if not os.path.exists(ckpt):
        return "new", 0, None
    meta = checkpoint_metadata(ckpt)
    try:
        step = int(meta["step"])
        batch = int(meta["batch_size"])
        images = int(re.match(r"(\d+) images", meta["data"]).group(1))
        # The run's length: the spec's --epochs and --max-steps where it gives
        # them (a resume takes them), else the checkpoint's.
        epochs = int(flag_value(run.flags, "epochs") or meta["epochs"])
        max_steps = int(flag_value(run.flags, "max-steps") or meta["max_steps"])
    except (TypeError, KeyError, ValueError, AttributeError):
        return "partial", None, None  # unreadable here: vae train --resume decides
    total = epochs * (images // batch)
    if max_steps > 0:
        total = min(total, max_steps)
    if step < total or not all(os.path.exists(os.path.join(run.dir, p)) for p in TASK_IMAGES):
        return "partial", step, total
    if spec["eval_args"] is not None and not os.path.exists(os.path.join(run.dir, "eval.json")):
        return "trained", step, total
    return "finished", step, total


# ---------------------------------------------------------------------------
# One task

def task_argv(spec, task):
    """The vae train command of a one-run task: resume where a checkpoint is,
    start otherwise. A pack's is pack_argv."""
    assert len(task) == 1 and spec["pack_size"] == 1
    run = task[0]
    base = [spec["vae"], "train", "--data", spec["data"], "--device", spec["device"],
            "--seed", str(run.seed)] + run.flags
    if os.path.exists(os.path.join(run.dir, "checkpoint.safetensors")):
        return base + ["--resume", run.dir]
    # No checkpoint: a first start, or one killed before its first checkpoint
    # (its folder holds at most the lock file and temporaries, which vae clears).
    return base + ["--out", run.dir]


# Flags that `vae train --resume` of a pack refuses: its members keep their own.
PACK_RESUME_REFUSES = ("lr", "adam-eps")


class TaskRefused(Exception):
    """A task that cannot go on without a person (exit 2, one line)."""


def pack_members_file(pack_dir):
    try:
        with open(os.path.join(pack_dir, "pack.json"), encoding="utf-8") as f:
            return [m["name"] for m in json.load(f)["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pack_argv(spec, task):
    """(argv, what) of a pack task (one configuration's seeds, in OUT/CONFIG):
    resume the pack when OUT/CONFIG/pack.json is there and every member has a
    checkpoint; start it otherwise, over the members' checkpoints (--overwrite)
    when its first start was stopped before every member had one."""
    config, flags = task[0].config, task[0].flags
    pack_dir = os.path.join(spec["out"], config)
    names = [f"seed-{r.seed}" for r in task]
    has_pack = os.path.exists(os.path.join(pack_dir, "pack.json"))
    ckpts = [os.path.join(r.dir, "checkpoint.safetensors") for r in task]
    have = [os.path.exists(c) for c in ckpts]
    if has_pack:
        members = pack_members_file(pack_dir)
        if members is None or sorted(members) != sorted(names):
            raise TaskRefused(f"{pack_dir}/pack.json lists the members {members}, not this sweep's "
                              f"{names}: not this configuration's pack; remove {pack_dir} to start it over")
    if has_pack and all(have):
        # vae refuses --lr and --adam-eps with a pack's --resume (each member
        # keeps its own): they are checked here against each checkpoint, so
        # that a changed spec is refused, as vae refuses a single run's.
        for key in PACK_RESUME_REFUSES:
            given = flag_value(flags, key)
            if given is None:
                continue
            for run, ckpt in zip(task, ckpts):
                saved = (checkpoint_metadata(ckpt) or {}).get(key.replace("-", "_"))
                try:
                    same = saved is not None and float(saved) == float(given)
                except ValueError:
                    same = False
                if not same:
                    raise TaskRefused(f"{run.name}: the spec's --{key} {given} disagrees with {saved} in "
                                      f"{ckpt}; a resumed run keeps its {key} (change it back, or use "
                                      "another out)")
        kept = []
        i = 0
        while i < len(flags):
            if flags[i][2:] in PACK_RESUME_REFUSES:
                i += 2
                continue
            kept.append(flags[i])
            i += 1
        steps = ", ".join(str((checkpoint_metadata(c) or {}).get("step", "?")) for c in ckpts)
        return ([spec["vae"], "train", "--resume", pack_dir, "--data", spec["data"],
                 "--device", spec["device"]] + kept, f"resuming at steps {steps}")
    argv = [spec["vae"], "train", "--data", spec["data"], "--device", spec["device"],
            "--seeds", ",".join(str(r.seed) for r in task)] + flags + ["--out", pack_dir]
    if any(have):
        if not has_pack:
            # A pack writes pack.json before any member trains: these
            # checkpoints are of runs trained alone (pack 1), not to be lost.
            run = task[have.index(True)]
            raise TaskRefused(f"{run.dir} holds a checkpoint but {pack_dir} no pack.json: a run trained "
                              "alone (pack 1), which a pack would start over; run it with pack 1, or "
                              "remove it")
        return argv + ["--overwrite"], ("starting over (stopped before every member had a checkpoint: "
                                        f"{sum(have)} of {len(have)} had one)")
    return argv, "starting"


def eval_argv(spec, run):
    return [spec["vae"], "eval", "--model", os.path.join(run.dir, "model.safetensors"),
            "--data", spec["data"], "--device", spec["device"]] + spec["eval_args"]


class TaskSignals:
    """SIGUSR1 (Slurm's warning before the time limit, sent to the batch
    script only) is passed on to the running vae as SIGTERM; SIGTERM and
    SIGINT reach vae by themselves (the process tree or the terminal's
    process group), so here they only stop the task from going on."""

    def __init__(self):
        self.child = None
        self.warned = False
        self.stopped = 0
        signal.signal(signal.SIGUSR1, self.on_usr1)
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)

    def on_usr1(self, signum, frame):
        self.warned = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def on_stop(self, signum, frame):
        self.stopped = signum

    def call(self, argv, env, stdout=None):
        if self.warned or self.stopped:
            return None
        self.child = subprocess.Popen(argv, env=env, stdout=stdout)
        while True:
            try:
                code = self.child.wait()
                break
            except InterruptedError:
                continue
        self.child = None
        return code


def requeue_self():
    """scontrol requeue of this array task (or job); True if it was asked."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return False
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    say(f"scontrol requeue {job}: " + ("done" if out.returncode == 0 else
                                         f"failed ({out.returncode}): {out.stderr.strip()}"))
    return out.returncode == 0


def run_task(spec, index):
    tasks = spec["tasks"]
    if not 0 <= index < len(tasks):
        raise BadInput(f"--index: {index} is not a task of this sweep (0..{len(tasks) - 1})")
    task = tasks[index]
    env = dict(os.environ)
    if spec["threads"] is not None:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    signals = TaskSignals()
    restart = os.environ.get("SLURM_RESTART_COUNT")
    say(f"task {index}: {', '.join(r.name for r in task)} on {os.uname().nodename}"
        + (f", Slurm restart {restart}" if restart else "") + f", {time.strftime('%Y-%m-%d %H:%M:%S')}")
    states = {run.name: run_state(spec, run) for run in task}
    if spec["pack_size"] > 1 and any(states[r.name][0] in ("new", "partial") for r in task):
        # One vae process trains every member: a finished member resumes at
        # its last step, with nothing left to train.
        label = f"{task[0].config} (a pack of {len(task)})"
        try:
            argv, what = pack_argv(spec, task)
        except TaskRefused as e:
            say(f"{label}: refused: {e}")
            return EXIT_BAD_INPUT
        for run in task:
            if states[run.name][0] != "finished":
                remove_stale_eval(run)
        say(f"{label}: {what}: " + " ".join(shlex.quote(a) for a in argv))
        code = signals.call(argv, env)
        if code != 0:
            return stopped_task(signals, label, code)
        states = {run.name: ("trained", None, None) for run in task}
    for run in task:
        state, step, total = states[run.name]
        if state == "finished":
            say(f"{run.name}: finished (step {step} of {total}), nothing to do")
            continue
        if state in ("new", "partial"):
            argv = task_argv(spec, [run])
            remove_stale_eval(run)
            say(f"{run.name}: {'starting' if state == 'new' else f'resuming at step {step}'}: "
                + " ".join(shlex.quote(a) for a in argv))
            code = signals.call(argv, env)
            if code != 0:
                return stopped_task(signals, run.name, code)
        if spec["eval_args"] is not None and not os.path.exists(os.path.join(run.dir, "eval.json")):
            argv = eval_argv(spec, run)
            say(f"{run.name}: evaluating: " + " ".join(shlex.quote(a) for a in argv))
            log = os.path.join(run.dir, "eval.log")
            with open(log, "w", encoding="utf-8") as f:
                code = signals.call(argv, env, stdout=f)
            if code != 0:
                return stopped_task(signals, run.name, code)
            with open(log, encoding="utf-8") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
            try:
                json.loads(lines[-1])
            except (IndexError, ValueError):
                say(f"{run.name}: vae eval's last line is not JSON ({log})")
                return 1
            write_atomically(os.path.join(run.dir, "eval.json"), lines[-1] + "\n")
        say(f"{run.name}: finished")
    return 0


def remove_stale_eval(run):
    """A run trained further (a spec with more steps) had its eval.json of
    the shorter run: it goes, so that the run is evaluated again."""
    try:
        os.remove(os.path.join(run.dir, "eval.json"))
    except FileNotFoundError:
        pass


def stopped_task(signals, name, code):
    if code is None:
        code = 128 + (signals.stopped or signal.SIGUSR1)
        say(f"{name}: not started: the task was stopped")
    elif code < 0:
        say(f"{name}: vae was killed by signal {-code}; the next attempt resumes from its last checkpoint")
        code = 128 - code
    else:
        say(f"{name}: vae exited with {code}")
    if signals.warned:
        # The time limit is near and vae has checkpointed: back into the queue.
        say("the time limit is near: requeueing this task")
        if requeue_self():
            return code
    return code


# ---------------------------------------------------------------------------
# The Slurm script

def batch_script(spec, spec_path):
    slurm = spec["slurm"]
    n = len(spec["tasks"])
    array = f"0-{n - 1}" + (f"%{slurm['max_parallel']}" if "max_parallel" in slurm else "")
    pack = spec["pack_size"]
    if pack > 1 and spec["device"] == "cpu":
        # A pack on the CPU runs one member per thread: up to `threads` (or 2) at once.
        cpus = slurm.get("cpus_per_task", min(pack, spec["threads"] or 2))
    else:
        cpus = slurm.get("cpus_per_task", spec["threads"] or 1)
    per_task = "one per array task" if pack == 1 else \
        f"one pack per array task (a configuration's {pack} seeds in one vae process)"
    lines = ["#!/bin/bash",
             f"# cuvae sweep '{spec['name']}': {len(spec['runs'])} runs "
             f"({len(spec['configs'])} configurations x {len(spec['seeds'])} seeds), {per_task}.",
             "# Written by tools/sweep.py write; the runs are in the spec, " + spec_path + ".",
             "# Each task resumes its run when it has a checkpoint and skips it when finished, so",
             "# the script can be submitted again as it is (or with --array=$(sweep.py status SPEC --pending)).",
             f"#SBATCH --job-name={slurm.get('job_name', spec['name'])}",
             f"#SBATCH --array={array}",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={cpus}"]
    if spec["device"] == "cuda":
        lines.append("#SBATCH --gres=gpu:1")
    for key, opt in (("time", "time"), ("partition", "partition"), ("mem", "mem")):
        if key in slurm:
            lines.append(f"#SBATCH --{opt}={slurm[key]}")
    lines += ["#SBATCH --requeue",
              f"#SBATCH --signal=B:USR1@{slurm.get('signal_seconds', 300)}",
              "#SBATCH --open-mode=append",
              f"#SBATCH --output={os.path.join(spec['out'], 'logs', 'task-%a.log')}"]
    lines += [f"#SBATCH {opt}" for opt in slurm.get("options", [])]
    lines += ["",
              "# USR1 before the time limit: the task has vae checkpoint, then requeues itself.",
              "# exec: the task is the batch shell, which alone receives it (B:).",
              "exec " + " ".join(shlex.quote(a) for a in
                                 ["python3", os.path.abspath(__file__), "task", spec_path])
              + ' --index "$SLURM_ARRAY_TASK_ID"', ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Running here

def run_here(spec, spec_path, jobs, only):
    indices = list(range(len(spec["tasks"])))
    if only is not None:
        names = [n for n in only.split(",") if n]
        known = {r.name: i for i, t in enumerate(spec["tasks"]) for r in t}
        for n in names:
            if n not in known:
                raise BadInput(f"--only: '{n}' is not a run of this sweep (runs are CONFIG/seed-S)")
        indices = sorted({known[n] for n in names})
    stop = {"signal": 0}

    def on_stop(signum, frame):
        stop["signal"] = signum  # the tasks (same process group) get it too

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    running, failed = {}, []
    pending = list(indices)
    say(f"{len(indices)} tasks, {jobs} at a time; logs in {os.path.join(spec['out'], 'logs')}")
    while pending or running:
        while pending and len(running) < jobs and not stop["signal"]:
            i = pending.pop(0)
            log = open(os.path.join(spec["out"], "logs", f"task-{i}.log"), "a", encoding="utf-8")
            argv = [sys.executable, os.path.abspath(__file__), "task", spec_path, "--index", str(i)]
            running[i] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log)
        if stop["signal"] and not running:
            break
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        for i, (proc, log) in list(running.items()):
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                log.close()
                del running[i]
                names = ", ".join(r.name for r in spec["tasks"][i])
                say(f"task {i} ({names}): " + ("done" if proc.returncode == 0 else
                                               f"exit {proc.returncode}, log {log.name}"))
                if proc.returncode != 0:
                    failed.append(i)
    if stop["signal"]:
        say("stopped; run the same command again to go on")
        return 128 + stop["signal"]
    if failed:
        say(f"{len(failed)} tasks failed: {','.join(map(str, sorted(failed)))}")
        return 1
    return 0


def print_status(spec, pending_only):
    pending = []
    for i, task in enumerate(spec["tasks"]):
        for run in task:
            state, step, total = run_state(spec, run)
            if state != "finished":
                pending.append(i)
            if not pending_only:
                progress = f"step {step} of {total}" if step is not None and total is not None else ""
                print(f"{i}\t{run.name}\t{state}\t{progress}".rstrip())
    pending = sorted(set(pending))
    if pending_only:
        print(",".join(map(str, pending)))
    return 0


# ---------------------------------------------------------------------------
# The collector

def last_metrics_row(path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f)]
    except OSError:
        return None
    if not rows:
        return None
    row = rows[-1]
    try:
        return {"epoch": int(row["epoch"]), "objective": row.get("objective", ""),
                "bound": float(row.get("bound") or row.get("elbo"))}
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{path}: its last row is not epoch,objective,bound,...")


def mean_se(values):
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def collect(spec, csv_path, png_path):
    rows = []
    for run in spec["runs"]:
        state, step, total = run_state(spec, run)
        metrics = last_metrics_row(os.path.join(run.dir, "metrics.csv"))
        ev = None
        if os.path.exists(os.path.join(run.dir, "eval.json")):
            try:
                with open(os.path.join(run.dir, "eval.json"), encoding="utf-8") as f:
                    ev = json.load(f)
            except (OSError, ValueError):
                raise BadInput(f"{os.path.join(run.dir, 'eval.json')}: not JSON")
        rows.append({"config": run.config, "seed": run.seed, "state": state,
                     "step": step, "total": total, "metrics": metrics, "eval": ev})
    fmt = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    header = ["config", "seed", "runs", "state", "step", "epoch", "objective", "train_bound",
              "train_bound_se", "test_elbo", "test_elbo_se", "test_nll", "test_nll_se", "eval_k"]
    out_rows = []
    summary = []
    for config in spec["configs"]:
        mine = [r for r in rows if r["config"] == config]
        train = [r["metrics"]["bound"] for r in mine if r["metrics"]]
        elbo = [r["eval"]["elbo"] for r in mine if r["eval"] and "elbo" in r["eval"]]
        nll = [r["eval"]["nll"] for r in mine if r["eval"] and "nll" in r["eval"]]
        tm, ts = mean_se(train)
        em, es = mean_se(elbo)
        nm, ns = mean_se(nll)
        ks = sorted({r["eval"].get("k") for r in mine if r["eval"]})
        objective = next((r["metrics"]["objective"] for r in mine if r["metrics"]), "")
        done = sum(r["state"] == "finished" for r in mine)
        out_rows.append([config, "mean", f"{len(train)}", f"{done} of {len(mine)} finished", "", "",
                         objective, fmt(tm), fmt(ts), fmt(em), fmt(es), fmt(nm), fmt(ns),
                         "/".join(map(str, ks))])
        summary.append((config, tm, ts, nm, ns, train, nll))
        for r in mine:
            m, e = r["metrics"], r["eval"]
            out_rows.append([config, str(r["seed"]), "1", r["state"], fmt(r["step"]),
                             fmt(m["epoch"]) if m else "", m["objective"] if m else "",
                             fmt(m["bound"]) if m else "", "", fmt(e.get("elbo")) if e else "", "",
                             fmt(e.get("nll")) if e else "", "", fmt(e.get("k")) if e else ""])
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    tmp = f"{csv_path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(out_rows)
    os.replace(tmp, csv_path)
    say(f"wrote {csv_path} ({len(rows)} runs, {len(spec['configs'])} configurations)")
    if png_path:
        draw(spec, summary, png_path)


def draw(spec, summary, png_path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"note: no {png_path}: matplotlib is not installed for {sys.executable} "
            "(Debian: apt-get install python3-matplotlib)")
        return
    has_nll = any(s[3] is not None for s in summary)
    panels = [("final training bound (nats, higher is better)", 1, 2, 5)]
    if has_nll:
        panels.append(("test NLL (nats, lower is better)", 3, 4, 6))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 + 2.6 * len(panels) + 0.35 * len(summary), 4.4),
                             dpi=100, squeeze=False)
    names = [s[0] for s in summary]
    for ax, (label, mi, si, vi) in zip(axes[0], panels):
        for x, s in enumerate(summary):
            values = s[vi]
            ax.scatter([x] * len(values), values, s=14, color="0.6", zorder=2,
                       label="each seed" if x == 0 else None)
            if s[mi] is not None:
                ax.errorbar([x], [s[mi]], yerr=[s[si] or 0.0], fmt="o", color="tab:blue",
                            capsize=4, markersize=6, zorder=3,
                            label="mean ± standard error" if x == 0 else None)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                           fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.6)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sweep {spec['name']}: {len(spec['seeds'])} seeds per configuration", fontsize=10)
    fig.tight_layout()
    tmp = f"{png_path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        fig.savefig(f, format="png")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, png_path)
    say(f"wrote {png_path}")


# ---------------------------------------------------------------------------

USAGE = """usage: sweep.py check SPEC
       sweep.py write SPEC [--script PATH]
       sweep.py run SPEC [--jobs N] [--only RUN,...]
       sweep.py task SPEC --index I
       sweep.py status SPEC [--pending]
       sweep.py collect SPEC [--csv PATH] [--png PATH]"""


def parse_options(command, rest, allowed, switches=()):
    options = {}
    while rest:
        flag = rest.pop(0)
        if flag in switches:
            options[flag] = True
        elif flag in allowed and rest:
            options[flag] = rest.pop(0)
        else:
            raise BadInput(f"unexpected argument '{flag}' for sweep.py {command}\n{USAGE}")
    return options


SYSTEM_PYTHON = "/usr/bin/python3"


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else EXIT_BAD_INPUT
    if len(argv) < 2:
        fail(f"expected a command and a spec\n{USAGE}")
    command, spec_path, rest = argv[0], argv[1], argv[2:]
    try:
        if command not in ("check", "write", "run", "task", "status", "collect"):
            raise BadInput(f"unknown command '{command}'\n{USAGE}")
        opts = parse_options(command, rest, {"write": ("--script",), "run": ("--jobs", "--only"),
                                             "task": ("--index",), "collect": ("--csv", "--png")}
                             .get(command, ()), ("--pending",) if command == "status" else ())
        spec = load_spec(spec_path)
        if command == "check":
            say(f"{spec_path}: {len(spec['runs'])} runs in {len(spec['tasks'])} tasks, out {spec['out']}")
            for i, task in enumerate(spec["tasks"]):
                for run in task:
                    print(f"{i}\t{run.name}\t" + " ".join(shlex.quote(a) for a in run.flags))
            return 0
        if command == "task":
            index = opts.get("--index")
            if index is None or not re.fullmatch(r"\d+", index):
                raise BadInput(f"--index: expected a task number, got '{index}'")
            return run_task(spec, int(index))
        if command == "status":
            return print_status(spec, opts.get("--pending", False))
        if command == "collect":
            if opts.get("--png", "x") and not has_matplotlib() and \
                    os.path.exists(SYSTEM_PYTHON) and not os.environ.get("CUVAE_SWEEP_REEXEC") and \
                    os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON):
                # As vae's charts do: a python3 first on PATH without matplotlib
                # (a pyenv one, say), then the system's, which Debian's package serves.
                os.environ["CUVAE_SWEEP_REEXEC"] = "1"
                os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + argv)
            csv_path = opts.get("--csv", os.path.join(spec["out"], "results.csv"))
            png_path = opts.get("--png", os.path.join(spec["out"], "results.png"))
            collect(spec, csv_path, png_path)
            return 0
        frozen_path = freeze(spec)
        if command == "write":
            script = os.path.abspath(opts.get("--script", os.path.join(spec["out"], "sweep.sbatch")))
            write_atomically(script, batch_script(spec, frozen_path))
            os.chmod(script, 0o755)
            say(f"wrote {script} ({len(spec['tasks'])} array tasks); submit it with: sbatch {script}")
            return 0
        jobs = opts.get("--jobs", "1")
        if not re.fullmatch(r"[1-9]\d*", jobs):
            raise BadInput(f"--jobs: expected a positive integer, got '{jobs}'")
        return run_here(spec, frozen_path, int(jobs), opts.get("--only"))
    except BadInput as e:
        fail(e)


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # A reader that stopped reading (status | head): no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
