#!/usr/bin/env python3
"""Summarises an Nsight Compute raw CSV (ncu --csv --page raw --log-file F):
per kernel name, launches, total and mean time, DRAM bytes and GB/s, and the
share of all profiled kernel time. Used by tools/gpu/gpu_session.sh.

    tools/gpu/ncu_summary.py ncu.csv
"""
import csv
import io
import sys
from collections import OrderedDict

SCALE = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0,
         "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0,
         "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}


def main(path):
    lines = [l for l in open(path, errors="replace") if l.startswith('"')]
    if len(lines) < 3:
        sys.exit("ncu_summary: %s has no profiled kernels" % path)
    rows = list(csv.reader(io.StringIO("".join(lines))))
    header, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}

    def value(row, metric):
        i = col[metric]
        try:
            return float(row[i].replace(",", "")) * SCALE.get(units[i], 1.0)
        except ValueError:
            return 0.0

    per = OrderedDict()
    for row in data:
        name = row[col["Kernel Name"]]
        short = name.split("(")[0].replace("void ", "")[:60]
        k = per.setdefault(short, {"n": 0, "t": 0.0, "bytes": 0.0, "sm": 0.0})
        k["n"] += 1
        k["t"] += value(row, "gpu__time_duration.sum")
        k["bytes"] += value(row, "dram__bytes_read.sum") + value(row, "dram__bytes_write.sum")
        k["sm"] += value(row, "sm__throughput.avg.pct_of_peak_sustained_elapsed")
    total = sum(k["t"] for k in per.values())
    print("%-60s %5s %10s %9s %7s %9s %6s" % ("kernel", "calls", "total us", "mean us", "share", "DRAM GB/s", "SM %"))
    for name, k in sorted(per.items(), key=lambda kv: -kv[1]["t"]):
        print("%-60s %5d %10.1f %9.2f %6.1f%% %9.1f %6.1f" % (
            name, k["n"], k["t"] * 1e6, k["t"] / k["n"] * 1e6, 100 * k["t"] / total,
            k["bytes"] / k["t"] / 1e9 if k["t"] else 0, k["sm"] / k["n"]))
    print("%-60s %5d %10.1f" % ("all profiled kernels", len(data), total * 1e6))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
