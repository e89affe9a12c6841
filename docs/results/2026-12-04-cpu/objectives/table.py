import json, sys, re, os
out = sys.argv[1]
times = dict((l.split()[0], l.split()[1:]) for l in open(os.path.join(out, "times.txt")))
print("| objective | trained bound, epoch 3 | test NLL (k=1000) | L_1 | L_8 | L_64 | active units | train s | images/s (epoch 3) |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["iwae-64", "miwae-8x8", "piwae-8x8", "ciwae-0.05"]:
    if name not in times:
        print("| %s | not run | | | | | | | |" % name); continue
    e = json.loads(open(os.path.join(out, name + ".eval.log")).read().strip().splitlines()[-1])
    last = [l for l in open(os.path.join(out, name + ".train.log")) if l.startswith("epoch")][-1].split()
    b = e["bounds"]
    print("| %s | %s %s | %.2f | %.2f | %.2f | %.2f | %d | %s | %s |" % (
        name, last[2], last[3], e["nll"], b["1"], b["8"], b["64"], e["active_units"],
        times[name][0].split("=")[1], last[6]))
