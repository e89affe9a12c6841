// `vae train`: one run (train_run.h), or a pack of runs when --seeds, --lr or
// --adam-eps list several (train_pack.h).
#include "cuvae/cli/train_command.h"

#include <iostream>

#include "cuvae/error.h"

#include "cuvae/cli/interrupt.h"
#include "cuvae/cli/train_pack.h"
#include "cuvae/cli/train_run.h"

namespace cuvae {

int run_train_command(const TrainOptions& o) {
  install_interrupt_handlers();
  if (is_pack(o)) return run_pack(o);
  if (o.given_seeds || pack_members(o).size() > 1) {  // only --resume of one run gets here
    throw Error("--seeds and lists of --lr or --adam-eps train a pack, but --resume " + o.resume +
                " continues one run (no pack.json there): give neither");
  }
  const std::unique_ptr<PreparedRun> run = prepare_run(o, RunStyle{}, nullptr);
  std::cout.flush();  // a second interrupt exits without flushing
  for (int epoch = run->first_epoch(); epoch <= run->last_epoch(); ++epoch) {
    if (const int status = run->train_epoch(epoch)) return status;
  }
  return run->write_task_images();
}

}  // namespace cuvae
