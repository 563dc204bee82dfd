"""Child process for test_checkpoint.py: saves a good checkpoint at step 1,
then starts saving step 2 and stops at a chosen point inside `save`, printing
'mid-save' so the test can SIGKILL it exactly there.

kill points:  pickle - while torch.save is serialising (temp file just opened)
              fsync  - temp file fully written, not yet renamed
              marker - step 2 renamed into place, `latest` not yet rewritten
"""

import os
import sys
import time

import torch

from bioscale.training.checkpoint import CheckpointManager


def stop_here():
    print("mid-save", flush=True)
    time.sleep(60)


class StopWhilePickled:
    def __reduce__(self):
        stop_here()
        return (int, (0,))


run_dir, point = sys.argv[1], sys.argv[2]
ckpt = CheckpointManager(run_dir, keep=3)
ckpt.save({"step": 1, "w": torch.full((1000,), 1.0)}, step=1)
state = {"step": 2, "w": torch.full((1000,), 2.0)}
if point == "pickle":
    state["stop"] = StopWhilePickled()
elif point == "fsync":
    real_fsync = os.fsync
    os.fsync = lambda fd: (stop_here() if os.fstat(fd).st_size > 1000 else None, real_fsync(fd))[1]
elif point == "marker":
    real_replace = os.replace
    os.replace = lambda src, dst: (stop_here() if str(dst).endswith("latest") else None, real_replace(src, dst))[1]
ckpt.save(state, step=2)
print("finished", flush=True)
