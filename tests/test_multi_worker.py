"""Two workers under MultiWorkerMirroredStrategy over loopback reach the same step and the
same weights."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def test_two_workers_agree(digit_scenes_dir, tmp_path):
  ports = _free_ports(2)
  cluster = {'worker': [f'localhost:{p}' for p in ports]}
  model_dir, out = tmp_path / 'model', tmp_path / 'out'
  out.mkdir()
  procs = []
  for i in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': cluster,
                                                 'task': {'type': 'worker', 'index': i}}),
               CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'helpers', 'multi_worker_train.py'),
         digit_scenes_dir, str(model_dir), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  reports = [json.load(open(out / f'worker_{i}.json')) for i in range(2)]
  assert reports[0]['step'] == reports[1]['step'] == 4
  assert np.isclose(reports[0]['checksum'], reports[1]['checksum'], rtol=1e-6)
  assert np.isclose(reports[0]['abs_checksum'], reports[1]['abs_checksum'], rtol=1e-6)
  # the chief writes the checkpoints; the other worker's scratch copies are gone
  assert any(name.startswith('ckpt-4') for name in os.listdir(model_dir))
  assert not (model_dir / '.workers').exists()
