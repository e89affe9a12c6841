#!/usr/bin/env python3
"""cuvae's charts, drawn with matplotlib (Agg backend, no display needed).

  plot.py curve METRICS_CSV OUT_PNG [--title TEXT]
      The training curve of a run: the training bound per epoch from vae
      train's metrics.csv, the test bound where it was evaluated, and the
      epochs where the learning rate changes (a schedule's stages) as
      vertical lines.
  plot.py latents CSV OUT_PNG [--title TEXT] [--label-names A,B,...]
      A scatter of 2-D points coloured by label (10 colours, a legend). CSV:
      a header "label,X,Y" whose X and Y name the axes, then one row per
      point: an integer label 0..9 and two numbers.

metrics.csv columns (src/cli/train_command.cpp writes them): epoch (required);
the training bound in `bound` or, in files written before it existed,
`elbo` (nats per image, mean over the epoch's steps); optional: objective
(the bound's name, e.g. elbo or iwae), lr, test_bound (empty where the test
set was not evaluated). Other columns are ignored.

The PNG is written atomically: to OUT_PNG.tmp.<pid> in the same directory,
flushed to disk, then renamed over OUT_PNG, so a reader sees the old chart or
the new one. Bad input: one line "plot.py: error: ..." on stderr, exit 1;
exit 3 when matplotlib is not installed (vae then skips the chart with a
note); exit 2 on a wrong command line.
"""

import csv
import math
import os
import sys

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_NO_MATPLOTLIB = 3


class BadInput(Exception):
    pass


def fail(message, code=EXIT_BAD_INPUT):
    sys.stderr.write("plot.py: error: " + " ".join(str(message).split()) + "\n")
    sys.exit(code)


def import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("matplotlib is not installed (Debian: apt-get install python3-matplotlib)",
             EXIT_NO_MATPLOTLIB)
    return plt


def read_csv(path):
    """Header and rows (lists of strings) of a CSV file; BadInput names the file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (bytes that are not UTF-8)")
    except csv.Error as e:
        raise BadInput(f"{path}: not a CSV file ({e})")
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise BadInput(f"{path}: empty, expected a header line")
    return [h.strip() for h in rows[0]], rows[1:]


def number(path, line, column, text, optional=False):
    text = text.strip()
    if text == "" and optional:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{path}, line {line}: {column} is '{text}', not a number")
    if not math.isfinite(value):
        raise BadInput(f"{path}, line {line}: {column} is {text}, not a finite number")
    return value


def save_atomically(fig, out_png):
    directory = os.path.dirname(os.path.abspath(out_png))
    if not os.path.isdir(directory):
        raise BadInput(f"cannot write {out_png}: directory {directory} does not exist")
    if os.path.isdir(out_png):
        raise BadInput(f"cannot write {out_png}: it is a directory")
    tmp = f"{out_png}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_png)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise BadInput(f"cannot write {out_png}: {e.strerror}")
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # the rename is done; a directory that cannot be synced is no error


# ---------------------------------------------------------------------------
# plot.py curve

def read_metrics(path):
    header, rows = read_csv(path)
    col = {name: i for i, name in enumerate(header)}
    if "epoch" not in col:
        raise BadInput(f"{path}: no 'epoch' column in the header ({','.join(header)})")
    bound_col = "bound" if "bound" in col else "elbo" if "elbo" in col else None
    if bound_col is None:
        raise BadInput(f"{path}: no 'bound' or 'elbo' column in the header ({','.join(header)})")
    if not rows:
        raise BadInput(f"{path}: no epochs yet (only the header)")

    def cell(row, name):
        i = col.get(name)
        return row[i] if i is not None and i < len(row) else ""

    m = {"epoch": [], "bound": [], "test_bound": [], "lr": [], "objective": ""}
    for line, row in enumerate(rows, start=2):
        if len(row) > len(header):
            raise BadInput(f"{path}, line {line}: {len(row)} cells, the header has {len(header)}")
        epoch = number(path, line, "epoch", cell(row, "epoch"))
        if m["epoch"] and epoch <= m["epoch"][-1]:
            raise BadInput(f"{path}, line {line}: epoch {cell(row, 'epoch')} does not follow "
                           f"epoch {m['epoch'][-1]:g}")
        m["epoch"].append(epoch)
        m["bound"].append(number(path, line, bound_col, cell(row, bound_col)))
        m["test_bound"].append(number(path, line, "test_bound", cell(row, "test_bound"), True))
        m["lr"].append(number(path, line, "lr", cell(row, "lr"), True))
        if cell(row, "objective").strip():
            m["objective"] = cell(row, "objective").strip()
    return m


def plot_curve(metrics_csv, out_png, title=None):
    m = read_metrics(metrics_csv)
    plt = import_pyplot()
    epochs = m["epoch"]
    objective = {"elbo": "ELBO", "iwae": "IWAE bound", "iwae-dreg": "IWAE bound (DReG)"}.get(
        m["objective"].lower() or "elbo", m["objective"])
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=100)
    marker = "o" if len(epochs) <= 60 else None
    ax.plot(epochs, m["bound"], marker=marker, markersize=3.5, linewidth=1.6, color="tab:blue",
            label=f"training {objective} (mean over the epoch's steps)")
    tested = [(e, t) for e, t in zip(epochs, m["test_bound"]) if t is not None]
    if tested:
        ax.plot([e for e, _ in tested], [t for _, t in tested], marker="s", markersize=4,
                linewidth=1.2, color="tab:orange", label=f"test {objective}")
    # Learning-rate stages: a line before the first epoch of each new rate.
    changes = [(epochs[i], m["lr"][i]) for i in range(1, len(epochs))
               if m["lr"][i] is not None and m["lr"][i - 1] is not None
               and m["lr"][i] != m["lr"][i - 1]]
    for n, (epoch, lr) in enumerate(changes):
        x = epoch - 0.5
        ax.axvline(x, color="0.55", linestyle="--", linewidth=0.9,
                   label="learning-rate change" if n == 0 else None)
        ax.annotate(f"lr {lr:.1e}", xy=(x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", ha="left", va="top",
                    fontsize=7, color="0.35", rotation=90)
    if m["lr"][0] is not None and changes:
        ax.annotate(f"lr {m['lr'][0]:.1e}", xy=(epochs[0], 1.0),
                    xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", ha="left", va="top", fontsize=7,
                    color="0.35", rotation=90)
    # A schedule's stages grow geometrically (the IWAE paper's: 3^i epochs):
    # on a log axis they are evenly spaced and their labels readable.
    if epochs[0] > 0 and (epochs[-1] > 500 or (changes and epochs[-1] > 60)):
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("epoch (log scale)")
    else:
        ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image (higher is better)")
    run = title or os.path.basename(os.path.dirname(os.path.abspath(metrics_csv)))
    ax.set_title(f"Training curve: {run} ({len(epochs)} epochs, last {objective} "
                 f"{m['bound'][-1]:.2f})", fontsize=10)
    ax.grid(True, linewidth=0.4, alpha=0.6)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_atomically(fig, out_png)


# ---------------------------------------------------------------------------
# plot.py latents

def plot_latents(points_csv, out_png, title, label_names):
    header, rows = read_csv(points_csv)
    if len(header) != 3 or header[0] != "label" or not header[1] or not header[2]:
        raise BadInput(f"{points_csv}: the header must be 'label,X,Y' (X and Y name the axes), "
                       f"got '{','.join(header)}'")
    if not rows:
        raise BadInput(f"{points_csv}: no points (only the header)")
    labels, xs, ys = [], [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != 3:
            raise BadInput(f"{points_csv}, line {line}: {len(row)} cells, expected 3")
        label = row[0].strip()
        if not label.isdigit() or int(label) > 9:
            raise BadInput(f"{points_csv}, line {line}: label '{label}' is not an integer 0..9")
        labels.append(int(label))
        xs.append(number(points_csv, line, header[1], row[1]))
        ys.append(number(points_csv, line, header[2], row[2]))
    names = [str(i) for i in range(10)]
    if label_names is not None:
        given = label_names.split(",")
        if len(given) != 10 or not all(n.strip() for n in given):
            raise BadInput(f"--label-names: expected 10 comma-separated names, got '{label_names}'")
        names = [n.strip() for n in given]
    plt = import_pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 6.4), dpi=100)
    colours = plt.get_cmap("tab10")
    # Points in file order, each label's own colour; a legend entry per label present.
    for label in range(10):
        px = [x for x, lab in zip(xs, labels) if lab == label]
        py = [y for y, lab in zip(ys, labels) if lab == label]
        if px:
            ax.scatter(px, py, s=3, alpha=0.6, color=colours(label), linewidths=0,
                       label=f"{names[label]} ({len(px)})", rasterized=True)
    ax.set_xlabel(header[1])
    ax.set_ylabel(header[2])
    ax.set_title(title or f"{len(xs)} points, coloured by label", fontsize=10)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    legend = ax.legend(fontsize=8, markerscale=4, loc="center left", bbox_to_anchor=(1.01, 0.5),
                       title="label (count)", title_fontsize=8, frameon=False)
    for handle in legend.legend_handles if hasattr(legend, "legend_handles") else legend.legendHandles:
        handle.set_alpha(1.0)
    fig.tight_layout()
    save_atomically(fig, out_png)


USAGE = """usage: plot.py curve METRICS_CSV OUT_PNG [--title TEXT]
       plot.py latents CSV OUT_PNG [--title TEXT] [--label-names A,B,...]"""


def main(argv):
    if len(argv) >= 1 and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if len(argv) < 3:
        fail("expected a command and two files\n" + USAGE, EXIT_USAGE)
    command, source, out_png = argv[0], argv[1], argv[2]
    rest = argv[3:]
    options = {}
    while rest:
        flag = rest.pop(0)
        allowed = ("--title", "--label-names") if command == "latents" else ("--title",)
        if flag not in allowed or not rest:
            fail(f"unexpected argument '{flag}' for plot.py {command}", EXIT_USAGE)
        options[flag] = rest.pop(0)
    try:
        if command == "curve":
            plot_curve(source, out_png, options.get("--title"))
        elif command == "latents":
            plot_latents(source, out_png, options.get("--title"), options.get("--label-names"))
        else:
            fail(f"unknown command '{command}'; expected curve or latents", EXIT_USAGE)
    except BadInput as e:
        fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
