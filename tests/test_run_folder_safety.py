"""A run folder has one writer, and the mistakes that used to pass silently are loud: a second
teacher, pseudo-labeler or export on a held folder stops at once naming the holder; stale
locks are taken over; an interrupted save's ckpt-N_temp is removed on start; a failed start
leaves no folder; an empty pseudo set is reported at student start and in TensorBoard; a
mistyped digit-scenes folder is an error, not a new dataset."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from rethink_st import cli
from rethink_st import config_io
from rethink_st import export
from rethink_st import run_lock
from rethink_st.data import digit_scenes
from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.data import tfexample
from rethink_st.errors import UserError
from rethink_st.pseudo_label import run as pl_run
from rethink_st.pseudo_label import shards
from rethink_st.training import run
from rethink_st.training import student

import test_training  # pylint: disable=g-bad-import-order
from helpers import one_error_line

REPO = test_training.REPO
HOST = socket.gethostname()

_HOLDER = ('import sys\n'
           'from rethink_st import run_lock\n'
           'with run_lock.hold(sys.argv[1], sys.argv[1], sys.argv[2]):\n'
           '  print("held", flush=True)\n'
           '  sys.stdin.read()\n')


@contextlib.contextmanager
def held_by_another_process(folder, name=run_lock.LOCK_NAME):
  """A live process on this host holding `folder`'s lock `name` until the block ends."""
  proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(folder), name], cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'held'
    yield proc
  finally:
    proc.stdin.close()
    proc.wait(timeout=30)


def _parse(data_dir, *extra, steps=2):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([test_training.TEACHER_GIN],
                      test_training.tiny_bindings(data_dir, steps=steps) + list(extra))


def _write_lock(folder, **holder):
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, run_lock.LOCK_NAME)
  with open(path, 'w') as f:
    json.dump(dict({'started': '2026-01-01 00:00:00', 'command': 'python bin/x.py'}, **holder),
              f)
  return path


# ------------------------------------------------------------------------- one writer
def test_a_second_teacher_on_a_held_folder_stops_in_seconds_naming_the_holder(
    digit_scenes_dir, tmp_path):
  """The issue's probe: bin/train_teacher.py on a --model_dir another run holds."""
  model_dir = tmp_path / 'teacher'
  params = [f'--gin_param={b}' for b in test_training.tiny_bindings(digit_scenes_dir, steps=2)]
  with held_by_another_process(model_dir) as holder:
    start = time.time()
    result = subprocess.run(
        [sys.executable, 'bin/train_teacher.py', f'--gin_file={test_training.TEACHER_GIN}',
         f'--model_dir={model_dir}'] + params, cwd=REPO, capture_output=True, text=True,
        timeout=300)
    seconds = time.time() - start
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and f'host {HOST}, pid {holder.pid}' in errors[0], errors
    assert 'is in use by another run' in errors[0] and f'kill {holder.pid}' in errors[0]
    assert sorted(os.listdir(model_dir)) == [run_lock.LOCK_NAME]  # no config.gin written
    assert seconds < 60, seconds  # importing TensorFlow, then stop: no model is built
  assert not os.listdir(model_dir)  # the holder released its lock on leaving


def test_run_train_refuses_a_held_folder_before_touching_it(digit_scenes_dir, tmp_path):
  _parse(digit_scenes_dir)
  model_dir = tmp_path / 'teacher'
  with held_by_another_process(model_dir) as holder:
    with pytest.raises(run_lock.FolderInUse, match=f'host {HOST}, pid {holder.pid}'):
      run.run_train(str(model_dir))
    assert sorted(os.listdir(model_dir)) == [run_lock.LOCK_NAME]


class _PastTheLock(Exception):
  pass


def test_pseudo_label_hosts_share_a_folder_but_not_a_shard(digit_scenes_dir, tmp_path,
                                                           monkeypatch):
  """While another process holds shard 0, shard 1 of the same folder gets past its lock (to
  the first step after it, stopped there: labeling itself, by two hosts, is
  test_pseudo_label's) and shard 0 is refused, naming the holder."""
  _parse(digit_scenes_dir,
         f"unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
         'rethink_st.pseudo_label.run.run_pseudo_label.unlabeled_source = '
         '@unlabeled/rethink_st.data.sources.digit_scenes_source()',
         "unlabeled/rethink_st.data.sources.digit_scenes_source.split = 'unlabeled'",
         'rethink_st.pseudo_label.run.run_pseudo_label.task = '
         '@rethink_st.training.tasks.DetectionTask()')
  teacher = tmp_path / 'teacher' / 'ckpt-1'
  teacher.parent.mkdir()
  (tmp_path / 'teacher' / 'ckpt-1.index').write_bytes(b'')  # passes the checks before the lock

  def past_the_lock():
    raise _PastTheLock()
  monkeypatch.setattr(pl_run.strategy_lib, 'set_mixed_precision', past_the_lock)
  out = tmp_path / 'pseudo'
  with held_by_another_process(out, run_lock.shard_lock_name(0, 2)) as holder:
    with pytest.raises(_PastTheLock):
      pl_run.run_pseudo_label(str(out), teacher_checkpoint=str(teacher), num_shards=2,
                              shard_index=1)
    assert sorted(os.listdir(out)) == [run_lock.shard_lock_name(0, 2)]  # shard 1's released
    with pytest.raises(run_lock.FolderInUse,
                       match=rf'--output_dir={out} \(shard 0 of 2\) is in use.*pid {holder.pid}'):
      pl_run.run_pseudo_label(str(out), teacher_checkpoint=str(teacher), num_shards=2,
                              shard_index=0)


def test_export_refuses_a_held_run_folder(tmp_path):
  model_dir = tmp_path / 'teacher'
  with held_by_another_process(model_dir) as holder:
    with pytest.raises(run_lock.FolderInUse, match=f'--model_dir={model_dir} is in use.*'
                       f'pid {holder.pid}'):
      export.run_export(str(model_dir), task=None)
  assert not (model_dir / 'saved_model').exists()


def test_stale_lock_of_a_gone_process_is_taken_over(tmp_path, capsys):
  gone = subprocess.Popen(['true'])
  gone.wait()
  path = _write_lock(tmp_path / 'a', host=HOST, pid=gone.pid)
  with run_lock.hold(str(tmp_path / 'a'), 'a'):
    assert json.load(open(path))['pid'] == os.getpid()
  assert 'took over the stale lock of pid' in capsys.readouterr().out
  assert not os.path.exists(path)
  # A live pid that now belongs to a process started at another time (pid reuse) is stale
  # too; with its own start time it is the holder.
  with held_by_another_process(tmp_path / 'unused') as live:
    _write_lock(tmp_path / 'b', host=HOST, pid=live.pid, pid_start='1')
    with run_lock.hold(str(tmp_path / 'b'), 'b'):
      pass
    _write_lock(tmp_path / 'c', host=HOST, pid=live.pid,
                pid_start=run_lock._process_start(live.pid))
    with pytest.raises(run_lock.FolderInUse, match=f'pid {live.pid}'):
      run_lock.acquire(str(tmp_path / 'c'), 'c')


def test_another_hosts_lock_is_refused_saying_how_to_remove_it(tmp_path):
  path = _write_lock(tmp_path / 'run', host='tpu-host-7', pid=1234)
  line = one_error_line(lambda: config_io.call_with_user_errors(
      run_lock.acquire, str(tmp_path / 'run'), '--model_dir=run'))
  assert line == ('error: --model_dir=run is in use by another run (host tpu-host-7, pid '
                  '1234, since 2026-01-01 00:00:00, command: python bin/x.py); if that run '
                  f'is gone, delete {path}')


def test_lock_is_reentrant_and_released_on_an_exception(tmp_path):
  folder = str(tmp_path / 'run')
  path = os.path.join(folder, run_lock.LOCK_NAME)
  with pytest.raises(KeyError):
    with run_lock.hold(folder, 'run'):
      with run_lock.hold(folder, 'run'):  # the run function inside bin/*.py's hold
        pass
      assert os.path.exists(path)
      raise KeyError('boom')
  assert not os.path.exists(path)


# ------------------------------------------------------------------ clean starts
def test_a_failed_start_leaves_no_new_folder(digit_scenes_dir, tmp_path):
  model_dir = tmp_path / 'new' / 'teacher'
  bindings = test_training.tiny_bindings(digit_scenes_dir) + [
      'rethink_st.training.run.run_train.train_steps = -1']
  line = one_error_line(lambda: cli.run_binary(
      run.run_train, gin_files=[test_training.TEACHER_GIN], gin_params=bindings,
      model_dir=str(model_dir)))
  assert 'run_train.train_steps=-1 must be positive' in line
  assert not (tmp_path / 'new').exists()
  # A folder that was there before stays, even empty.
  (tmp_path / 'old').mkdir()
  one_error_line(lambda: cli.run_binary(
      run.run_train, gin_files=[test_training.TEACHER_GIN], gin_params=bindings,
      model_dir=str(tmp_path / 'old')))
  assert os.listdir(tmp_path / 'old') == ['config.gin']


def test_a_mistyped_digit_scenes_folder_is_an_error_not_a_new_dataset(
    digit_scenes_dir, tmp_path, monkeypatch):
  made = []
  monkeypatch.setattr(digit_scenes, 'make_digit_scenes',
                      lambda data_dir, overwrite=False: made.append(data_dir))
  typo = str(tmp_path / 'digit_scenez')
  with pytest.raises(UserError, match=r'digit_scenes_source.data_dir=.*digit_scenez holds no '
                     r'digit-scenes dataset.*digit_scenes_source.generate = True'):
    sources.digit_scenes_source('train', data_dir=typo)
  assert not made and not os.path.exists(typo)
  with pytest.raises(UserError):  # with the flag, generation is asked for (recorded here,
    sources.digit_scenes_source('train', data_dir=typo, generate=True)  # so no meta.json)
  assert made == [typo]
  assert sources.digit_scenes_source('train', data_dir=digit_scenes_dir).num_examples == 48


# ------------------------------------------------------------------ empty pseudo set
def _write_pseudo_folder(data_dir, out, boxes_per_image=0, n=8):
  """A finished one-host pseudo-label folder of n tiny unlabeled scenes, each with
  `boxes_per_image` copies of its first true box."""
  shards.write_meta(out, {'kind': 'detection', 'num_classes': 10, 'num_shards': 1})
  writer = shards.ChunkWriter(shards.chunk_prefix(out, 0, 1, 0))
  counters = shards.Counters(10, 'detection')
  for ex in digit_scenes.read_examples(data_dir, 'unlabeled', n):
    k = boxes_per_image
    labels = {F.BOXES: np.repeat(ex[F.BOXES][:1], k, 0), F.CLASSES: ex[F.CLASSES][:1].repeat(k),
              F.SCORES: np.ones(k, np.float32), F.IS_CROWD: np.zeros(k, np.int64)}
    writer.write(tfexample.encode_example(
        {F.SOURCE_ID: ex[F.SOURCE_ID], F.IMAGE: ex[F.IMAGE], **labels}))
    counters.add_detection(labels[F.CLASSES], labels[F.SCORES])
  writer.close(None, counters.to_dict())
  shards.mark_host_done(out, 0, 1, {})
  shards.merge_outputs(out, merge_coco=False)
  return out


def _train_events(model_dir):
  """(scalar tag -> values, text tag -> strings) of a run's train/ event files."""
  scalars, texts = {}, {}
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
        value = tf.make_ndarray(v.tensor) if v.HasField('tensor') else v.simple_value
        if v.metadata.plugin_data.plugin_name == 'text':
          texts.setdefault(v.tag, []).append(np.asarray(value).reshape(-1)[0].decode())
        else:
          scalars.setdefault(v.tag, []).append(float(np.asarray(value)))
  return scalars, texts


def test_student_start_reports_an_empty_pseudo_set_and_removes_an_interrupted_save(
    digit_scenes_dir, tmp_path, capsys):
  """Two start-up checks of run_train, on one short run (training is the slow part): the
  empty pseudo set is warned about before the first step and is in TensorBoard (scalar and
  text); the ckpt-N_temp folder a killed save left is removed, another *_temp is not."""
  pseudo = _write_pseudo_folder(digit_scenes_dir, str(tmp_path / 'pseudo'))
  _parse(digit_scenes_dir, 'rethink_st.training.tasks.DetectionTask.eval_source = None',
         'rethink_st.training.run.run_train.trainer_cls = '
         '@rethink_st.training.student.StudentTrainer',
         'rethink_st.training.student.StudentTrainer.pseudo_source = '
         '@rethink_st.pseudo_label.source.pseudo_label_source()',
         f"rethink_st.pseudo_label.source.pseudo_label_source.directory = '{pseudo}'",
         steps=1)
  model_dir = tmp_path / 'student'
  leftover = model_dir / 'ckpt-7_temp'
  leftover.mkdir(parents=True)
  (leftover / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'\0' * (3 << 20))
  (model_dir / 'notes_temp').mkdir()
  run.run_train(str(model_dir))
  out = capsys.readouterr().out.splitlines()
  assert f'[train] removed {leftover}, left by an interrupted checkpoint save (3.0 MB)' in out
  assert not leftover.exists() and (model_dir / 'notes_temp').exists()
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-1')
  warning = (f'[student] WARNING: the pseudo-label set {pseudo} has 0 boxes per image over 8 '
             'images, below StudentTrainer.min_pseudo_boxes_per_image=0.1')
  assert any(l.startswith(warning) for l in out), out
  assert out.index(next(l for l in out if l.startswith(warning))) < min(
      i for i, l in enumerate(out) if l.startswith('[train] step'))  # at start
  assert 'pseudo_set_boxes_per_image=0 ' in next(l for l in out if l.startswith('[train] step'))
  scalars, texts = _train_events(str(model_dir))
  assert scalars['pseudo_set_boxes_per_image'] == [0.0]
  assert texts['pseudo_set/warning'][0].startswith(warning[len('[student] WARNING: '):])


def test_pseudo_set_floors(digit_scenes_dir, tmp_path, capsys):
  """Above the floor: no warning; no image at all: an error; segmentation: labeled pixels."""
  from rethink_st.pseudo_label import source as pl_source  # pylint: disable=g-import-not-at-top
  dense = pl_source.pseudo_label_source(
      _write_pseudo_folder(digit_scenes_dir, str(tmp_path / 'dense'), boxes_per_image=1))
  assert dense.pseudo_set['boxes_per_image'] == 1.0
  floors = {'boxes_per_image': ('min_pseudo_boxes_per_image', 0.1),
            'labeled_pixel_fraction': ('min_pseudo_labeled_pixel_fraction', 0.01)}
  assert student.check_pseudo_set(dense.pseudo_set, floors) is None
  assert 'WARNING' not in capsys.readouterr().out
  with pytest.raises(UserError, match='holds no pseudo-labeled image'):
    student.check_pseudo_set({'images': 0, 'boxes_per_image': 0.0, 'directory': 'p'}, floors)
  seg = pl_source.pseudo_set_density({'kind': 'segmentation', 'images': 2, 'pixels': 1000,
                                      'ignored_pixels': 995})
  assert seg == {'images': 2, 'labeled_pixel_fraction': pytest.approx(0.005)}
  assert 'of its pixels labeled' in student.check_pseudo_set(seg, floors)
