#!/usr/bin/env python3
"""table.md from run.sh's *.eval.json: test NLL per row and seed, and the mean.
Usage: summarize.py DIR (where run.sh wrote; default: this folder)"""
import glob, json, os, re, statistics, sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
paper = {"1l-elbo-1": 86.76, "1l-elbo-5": 86.47, "1l-elbo-50": 86.35, "1l-iwae-5": 85.54, "1l-iwae-50": 84.78,
         "2l-elbo-1": 85.33, "2l-elbo-5": 85.01, "2l-elbo-50": 84.78, "2l-iwae-5": 83.89, "2l-iwae-50": 82.90}
runs = {}
for path in sorted(glob.glob(os.path.join(here, "*-s*.eval.json"))):
    name, seed = re.match(r"(.*)-s(\d+)\.eval\.json", os.path.basename(path)).groups()
    with open(path) as f:
        e = json.load(f)
    runs.setdefault(name, {})[int(seed)] = e
seeds = sorted({s for r in runs.values() for s in r})
print("| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | active units (seed " + str(seeds[0]) +
      ") | paper, full schedule |")
print("|---|" + "---|" * len(seeds) + "---|---|---|")
for name in paper:
    if name not in runs:
        continue
    r = runs[name]
    cells = [f"{r[s]['nll']:.2f}" if s in r else "–" for s in seeds]
    mean = statistics.mean(e["nll"] for e in r.values())
    first = r[min(r)]
    active = first.get("active_units_per_layer", first.get("active_units"))
    active = "/".join(map(str, active)) if isinstance(active, list) else active
    print(f"| {name} | " + " | ".join(cells) + f" | {mean:.2f} | {active} | {paper[name]:.2f} |")
