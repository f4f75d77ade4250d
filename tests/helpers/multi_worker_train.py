"""One worker of the two-worker MultiWorkerMirroredStrategy test (run as a subprocess with
TF_CONFIG set): trains the tiny digits teacher a few steps, then writes its global step and a
checksum of its weights to <out>/worker_<index>.json."""
import json
import os
import sys

import rethink_st  # noqa: F401
import numpy as np
import tensorflow as tf

from rethink_st import cli, config_io
from rethink_st.training import run, strategy, trainer as trainer_lib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import test_training  # noqa: E402  pylint: disable=g-import-not-at-top


class ReportingTrainer(trainer_lib.Trainer):

  def train_loop_end(self):
    logs = super().train_loop_end()
    weights = [np.asarray(v.numpy(), np.float64) for v in self.model.weights]
    report = {'step': int(self.global_step.numpy()),
              'checksum': float(sum(np.sum(w) for w in weights)),
              'abs_checksum': float(sum(np.sum(np.abs(w)) for w in weights))}
    with open(os.path.join(OUT, f'worker_{config_io.worker_index()}.json'), 'w') as f:
      json.dump(report, f)
    return logs


if __name__ == '__main__':
  data_dir, model_dir, OUT = sys.argv[1:4]
  cli.register_configurables()
  config_io.parse_gin([test_training.TEACHER_GIN], test_training.tiny_bindings(data_dir, steps=4) + [
      "rethink_st.training.strategy.build_strategy.kind = 'multi_worker_mirrored'",
      'rethink_st.training.tasks.DetectionTask.eval_source = None',
  ])
  strategy.build_strategy()  # as cli.run_binary does: before any TensorFlow op
  run.run_train(model_dir, trainer_cls=ReportingTrainer)
