"""run_self_training: teacher -> pseudo-label -> student -> evaluate, for N rounds.

Each stage is the same run function its own binary calls, under a gin scope, so one gin file
configures all of them and a stage differs from another only by scoped bindings:

    teacher/run_train.train_steps = 1500
    student/run_train.train_steps = 3000
    pseudo/run_pseudo_label.score_threshold = 0.5

Layout of `root_dir`:  teacher/  round_1/pseudo/  round_1/pseudo_report/  round_1/student/
round_2/...  results.json. round_k/pseudo_report/ is the pseudo-label report
(rethink_st/pseudo_label_report.py): pseudo_labels.png, a grid of pseudo-labeled images, and,
with `report_reference` (the unlabeled images' held-back labels), pseudo-label precision and
recall per score threshold. With rounds > 1 the student of round k is the teacher of round
k+1. Every stage resumes where it stopped (checkpoints, complete pseudo-label chunks, a written
report), so rerunning a killed demo continues it.
"""
import copy
import functools
import inspect
import json
import os
import time
from typing import Any, Dict, List, Optional

import gin
import tensorflow as tf

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import pseudo_label_report
from rethink_st.errors import UserError
from rethink_st.pseudo_label import run as pseudo_run
from rethink_st.pseudo_label import shards
from rethink_st.pseudo_label import source as pseudo_source_lib
from rethink_st.training import run as run_lib
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import student as student_lib

_STUDENT_INITS = ('teacher', 'random', 'checkpoint')


def _done(model_dir: str, steps: Optional[int] = None) -> Optional[Dict[str, float]]:
  """The eval metrics of a finished stage (so a rerun skips it), else None."""
  path = os.path.join(model_dir, 'eval_metrics.json')
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    metrics = json.load(f)
  if steps is not None and metrics.get('step') != steps:
    return None
  return metrics


def _train(scope: str, model_dir: str, **kwargs) -> Dict[str, float]:
  with gin.config_scope(scope):
    steps = gin.query_parameter(f'{scope}/run_train.train_steps') if _bound(
        f'{scope}/run_train.train_steps') else None
    done = _done(model_dir, steps)
    if done is not None:
      print(f'[self_training] {model_dir} is finished; skipping', flush=True)
      return done
    return run_lib.run_train(model_dir, **kwargs)


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


def _resolved(value):
  """A binding's value as the configurable will receive it: gin's references marked for
  evaluation (`@source()`, `%MACRO`) evaluated, in the active scope. The one-binding form of
  what gin.get_bindings(resolve_references=True) does for all of a configurable's bindings
  (gin resolves them with copy.deepcopy), so that the stage's other bindings (a model, a
  pseudo-label folder that does not exist yet) are not evaluated."""
  return copy.deepcopy(value)


def _check_pseudo_inputs() -> None:
  """Builds the pseudo stage's unlabeled source now, so a wrong path stops before the
  teacher trains for hours."""
  with gin.config_scope('pseudo'):
    bindings = gin.get_bindings(pseudo_run.run_pseudo_label, resolve_references=False)
    if 'unlabeled_source' not in bindings:
      raise UserError('run_pseudo_label.unlabeled_source is not bound')
    _resolved(bindings['unlabeled_source'])


def _binding(configurable, name: str):
  """`name`'s value for `configurable` in the active gin scope (scoped, else unscoped
  binding, else the signature's default), macros evaluated; None when it has none."""
  value = _resolved(gin.get_bindings(configurable, resolve_references=False).get(name))
  if value is None:
    init = configurable.__init__ if inspect.isclass(configurable) else configurable
    value = inspect.signature(init).parameters[name].default
  return None if value is inspect.Parameter.empty or value is gin.REQUIRED else value


def _check_student_batch() -> None:
  """The student's human/pseudo split, checked now by the StudentTrainer's own rule
  (student_lib.split_batch), so a ratio that leaves a replica without human examples stops
  before the teacher trains and the teacher pseudo-labels, not after."""
  with gin.config_scope('student'):
    batch = _binding(run_lib.run_train, 'global_batch_size')
    fraction = _binding(student_lib.StudentTrainer, 'pseudo_fraction')
    if batch is None or fraction is None:
      return  # run_train / StudentTrainer report the missing binding themselves
    replicas = strategy_lib.build_strategy().num_replicas_in_sync
  student_lib.split_batch(batch, fraction, replicas)


def _report_reference(reference):
  """report_reference as a Source: a Source, 'digit_scenes:<split>' or a TFRecord glob."""
  where = 'run_self_training.report_reference'
  if reference is None or hasattr(reference, 'dataset'):
    return reference
  if isinstance(reference, str):
    return pseudo_label_report.parse_reference(reference, where=where)
  raise UserError(f"{where}={reference!r} is not a Source, 'digit_scenes:<split>' or a "
                  'TFRecord glob')


def _pseudo_report(pseudo_dir: str, report_dir: str, reference) -> Dict[str, Any]:
  """Writes (or, when already written, reads) the round's pseudo-label report; returns the
  row entries: the grid's path and, with a reference, pseudo-label quality."""
  path = os.path.join(report_dir, pseudo_label_report.JSON_FILE)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      report = json.load(f)
  else:
    with gin.config_scope('pseudo'):
      report = pseudo_label_report.write_report(pseudo_dir, report_dir,
                                                reference_source=reference)
  out: Dict[str, Any] = {}
  if 'grid' in report.get('files', {}):
    out['pseudo_report'] = os.path.join(report_dir, report['files']['grid'])
  per_class = (report.get('detection') or {}).get('per_class_at_labeler_threshold')
  if per_class:  # detection with a reference: at the threshold the labeler used
    tp = sum(c['tp'] for c in per_class)
    fp = sum(c['fp'] for c in per_class)
    fn = sum(c['fn'] for c in per_class)
    out['pseudo_precision'] = tp / (tp + fp) if tp + fp else None
    out['pseudo_recall'] = tp / (tp + fn) if tp + fn else None
  miou = (report.get('segmentation') or {}).get('mIoU')
  if miou is not None:
    out['pseudo_mIoU'] = miou
  return out


def _format_quality(entries: Dict[str, Any]) -> str:
  bits = [f'{k[len("pseudo_"):]} {v:.3f}' for k, v in entries.items()
          if k != 'pseudo_report' and v is not None]
  return ', '.join(bits)


@gin.configurable(denylist=['root_dir'])
def run_self_training(root_dir: str,
                      rounds: int = 1,
                      student_init: str = 'teacher',
                      student_init_checkpoint: Optional[str] = None,
                      teacher_dir: Optional[str] = None,
                      metric: str = 'AP',
                      pseudo_report: bool = True,
                      report_reference=None) -> Dict[str, Any]:
  """Runs the pipeline and returns (and writes to root_dir/results.json) each model's metrics:
  the evaluators' raw values (COCO AP in 0-1) and the headline metric x 100 (add_x100), which
  the printed table shows.

  student_init: 'teacher' (the paper's default: the student starts from the teacher's
    weights), 'random', or 'checkpoint' (student_init_checkpoint, e.g. an ImageNet model;
    its backbone is restored).
  teacher_dir: an already trained teacher to start from instead of training one.
  metric: the headline metric for the printed table ('AP' detection, 'mIoU' segmentation).
  pseudo_report: after each round's pseudo-labeling, write round_k/pseudo_report/ (a grid of
    write_report.num_images pseudo-labeled images, default 16, and statistics).
  report_reference: the unlabeled images' held-back labels, for pseudo-label precision and
    recall in the report: a Source (e.g. @unlabeled/digit_scenes_source()),
    'digit_scenes:<split>' or a TFRecord glob; None: pictures and statistics only.
  """
  if not root_dir:
    raise UserError('--model_dir is required')
  if rounds < 1:
    raise UserError(f'run_self_training.rounds={rounds} must be >= 1')
  if student_init not in _STUDENT_INITS:
    raise UserError(f'run_self_training.student_init={student_init!r} is not one of '
                    f'{", ".join(_STUDENT_INITS)}')
  if student_init == 'checkpoint':
    checkpoint_lib.resolve(student_init_checkpoint, 'run_self_training.student_init_checkpoint')
  _check_pseudo_inputs()
  _check_student_batch()
  reference = _report_reference(report_reference) if pseudo_report else None
  start = time.time()
  rows: List[Dict[str, Any]] = []

  if teacher_dir:
    teacher = teacher_dir
    checkpoint_lib.latest_in(teacher, 'run_self_training.teacher_dir')
    metrics = _done(teacher) or {}
  else:
    teacher = os.path.join(root_dir, 'teacher')
    print('[self_training] stage 1: teacher', flush=True)
    metrics = _train('teacher', teacher)
  rows.append({'model': 'teacher', 'dir': teacher, **metrics})

  for k in range(1, rounds + 1):
    round_dir = os.path.join(root_dir, f'round_{k}')
    pseudo_dir = os.path.join(round_dir, 'pseudo')
    student_dir = os.path.join(round_dir, 'student')
    if not (tf.io.gfile.exists(os.path.join(pseudo_dir, 'stats.json'))):
      print(f'[self_training] round {k}: pseudo-labeling with {teacher}', flush=True)
      with gin.config_scope('pseudo'):
        pseudo_run.run_pseudo_label(pseudo_dir, teacher_checkpoint=teacher)
    with tf.io.gfile.GFile(os.path.join(pseudo_dir, 'stats.json')) as f:
      pseudo_stats = json.load(f)
    report = {}
    if pseudo_report:
      report = _pseudo_report(pseudo_dir, os.path.join(round_dir, 'pseudo_report'), reference)
      quality = _format_quality(report)
      print(f'[self_training] round {k}: pseudo-label report in '
            f'{os.path.join(round_dir, "pseudo_report")}'
            + (f' (against held-back labels: {quality})' if quality else ''), flush=True)
    print(f'[self_training] round {k}: student', flush=True)
    trainer_cls = functools.partial(
        student_lib.StudentTrainer,
        pseudo_source=pseudo_source_lib.pseudo_label_source(pseudo_dir))
    init = {'teacher': dict(init_checkpoint=teacher, init_modules=('all',)),
            'random': dict(init_checkpoint=None),
            'checkpoint': dict(init_checkpoint=student_init_checkpoint)}[student_init]
    metrics = _train('student', student_dir, trainer_cls=trainer_cls, **init)
    rows.append({'model': f'student_round_{k}', 'dir': student_dir,
                 'pseudo_boxes_per_image': pseudo_stats.get('boxes_per_image'), **report,
                 **metrics})
    teacher = student_dir

  results = {'rows': rows, 'metric': metric, 'student_init': student_init,
             'seconds': time.time() - start}
  add_x100(results)
  with tf.io.gfile.GFile(os.path.join(root_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(format_table(results), flush=True)
  pictures = [r['pseudo_report'] for r in rows if r.get('pseudo_report')]
  if pictures:
    print(f'[self_training] pseudo-label pictures: {", ".join(pictures)}', flush=True)
  print(f'[self_training] results: {os.path.join(root_dir, "results.json")}; TensorBoard: '
        f'tensorboard --logdir {root_dir}', flush=True)
  return results


def add_x100(results: Dict[str, Any]) -> Dict[str, Any]:
  """Adds the headline metric x 100 (as people read AP and mIoU) beside the raw 0-1 values,
  which stay as the evaluators wrote them: `<metric>_x100` in each row, and at the top
  `teacher_<metric>_x100`, `student_<metric>_x100` (the last round's student) and
  `gain_<metric>_x100` (their difference, from the raw values). None where a row has no
  metric."""
  metric, rows = results['metric'], results['rows']
  for row in rows:
    row[f'{metric}_x100'] = run_lib.x100(row.get(metric))
  teacher = rows[0].get(metric)
  student = rows[-1].get(metric) if len(rows) > 1 else None
  results[f'teacher_{metric}_x100'] = run_lib.x100(teacher)
  results[f'student_{metric}_x100'] = run_lib.x100(student)
  results[f'gain_{metric}_x100'] = (None if teacher is None or student is None
                                    else run_lib.x100(student - teacher))
  return results


def format_table(results: Dict[str, Any]) -> str:
  """A Markdown table of each model's headline metric x 100 (2 decimals) and its gain over
  the teacher x 100; results.json holds the raw 0-1 values."""
  metric = results['metric']
  rows = results['rows']
  base = rows[0].get(metric)
  lines = [f'| model | {metric} x 100 | gain over teacher (x 100) |', '| --- | --- | --- |']
  for row in rows:
    value = row.get(metric)
    gain = ('' if value is None or base is None or row is rows[0] or value < 0 or base < 0
            else f'{100.0 * (value - base):+.2f}')
    lines.append(f'| {row["model"]} | {run_lib.format_x100(value)} | {gain} |')
  return '\n'.join(lines)
