// Charts: drawn by matplotlib through tools/plot.py, which the binary runs
// when Python 3 with matplotlib is there and skips (with one note) when it
// is not. Digit grids do not come here: they are stb's (png_grid.h).
//
// Why matplotlib and not a plotting library linked in: it is what VAE users
// plot with (the seed's save_images is matplotlib), Debian ships it
// (python3-matplotlib), and an optional Python step keeps the C++ build's
// dependencies as they were.
#pragma once

#include <string>
#include <vector>

namespace cuvae {

// Where tools/plot.py is, in this order: $CUVAE_PLOT_SCRIPT; tools/plot.py
// beside or one directory above the running executable (build/vae in the
// source tree); the source tree the binary was built from. Empty when none
// exists.
std::string find_plot_script();

// Runs `python3 tools/plot.py ARGS...` and waits for it. Python is
// $CUVAE_PYTHON if set, else python3 from PATH and, when that one has no
// matplotlib, /usr/bin/python3 (where Debian's python3-matplotlib lives).
// Returns true when the chart was written. Otherwise false with *note set to
// one line saying why: python3 or matplotlib missing, plot.py not found, or
// plot.py's own one-line error (bad input). *missing_library (if not null)
// is set when the reason is a missing python3, matplotlib or plot.py, i.e. a
// chart to skip, not an error in the input.
bool run_plot_script(const std::vector<std::string>& args, std::string* note,
                     bool* missing_library = nullptr);

// The training curve of a run: `plot.py curve metrics_csv out_png` (the
// training bound per epoch, the test bound where evaluated, learning-rate
// changes as vertical lines; nats and epochs). out_png is written
// atomically. False with one note line when it could not be drawn.
// Each call starts Python and imports matplotlib: about 0.8 s of wall time
// on the 2-core development machine (2026-12-01), so a caller that draws
// after every epoch of a long run should also draw at most every few
// seconds (and at the end), not block each short epoch on it.
bool draw_training_curve(const std::string& metrics_csv, const std::string& out_png,
                         std::string* note);

}  // namespace cuvae
