"""One writer per run folder: a lock file in the folder that names its holder.

Two runs writing into one folder interleave their checkpoints, event files and results
without any error (probed: two teachers on one --model_dir both finished with rc 0, every
checkpoint written twice 240 ms apart, the eval_metrics.json of one beside a checkpoint of
the other). So every stage that writes a folder holds its lock for the whole run: training
and export hold `<folder>/writer.lock`; each pseudo-labeling host holds its own shard's
`<folder>/writer-shard-<i>-of-<n>.lock`, so n hosts share one output folder but two
processes never label the same shard. A second writer stops at once with one UserError line
naming the holder (host, pid, start time, command).

The file is created exclusively (os.O_EXCL: of two processes starting together, one wins)
and holds JSON {host, pid, started, command}; it is removed when the holder's block ends,
by an exception too. A holder killed without clean-up (SIGKILL, a power cut) leaves it
behind: on the same host a lock whose pid no longer runs (or now belongs to a process
started at another time, read from /proc) is stale, and is taken over with a printed line.
A lock of another host cannot be checked from here: it is refused, and the message says
which file to delete if that host's run is gone.

In one process the lock is re-entrant (bin/*.py takes it before writing config.gin, and the
run function it calls takes it again), counted per lock file.

Paths that are not local (gs://, s3://, ...) are best effort: tf.io.gfile has no exclusive
create, so two writers starting within the same moment can both pass; a run that started
earlier is still found, and its host and pid named.
"""
import contextlib
import json
import os
import shlex
import socket
import sys
import time
import uuid
from typing import Any, Dict, Iterator, Optional

from rethink_st.errors import UserError

LOCK_NAME = 'writer.lock'

# Lock files this process holds: path -> [token, depth] (re-entrant per path).
_HELD: Dict[str, list] = {}


class FolderInUse(UserError):
  """Another run holds the folder's lock; the message names it (host, pid, command)."""


def shard_lock_name(shard_index: int, num_shards: int) -> str:
  """The lock of one pseudo-labeling host: other shards of the same folder do not share it."""
  return f'writer-shard-{shard_index:05d}-of-{num_shards:05d}.lock'


def _is_local(path: str) -> bool:
  return '://' not in path


def _process_start(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22), which
  tells a live holder from a later process that got the same pid; None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return None
  return stat.rsplit(')', 1)[-1].split()[19]  # fields after "(comm)" start at field 3


def _pid_alive(pid: int, started_ticks: Optional[str]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  now = _process_start(pid)
  return not (started_ticks and now and now != started_ticks)


def _command() -> str:
  return ' '.join(shlex.quote(a) for a in sys.argv).replace('\n', ' ')[:300]


def _record(token: str) -> Dict[str, Any]:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'pid_start': _process_start(os.getpid()),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %z'), 'command': _command(),
          'token': token}


def _read(path: str) -> Optional[Dict[str, Any]]:
  """The lock's JSON; None if the file is gone. A file being written (empty, cut short) is
  read again for up to a second before it counts as a holder that cannot be named."""
  for _ in range(10):
    try:
      text = _read_text(path)
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except ValueError:
      time.sleep(0.1)
  return {}


def _read_text(path: str) -> str:
  if _is_local(path):
    with open(path) as f:
      return f.read()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(path)
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def _create(path: str, record: Dict[str, Any]) -> bool:
  """Writes the lock if no file is there; False if one is (another writer won)."""
  text = json.dumps(record, indent=1)
  if not _is_local(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.io.gfile.exists(path):
      return False
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(text)
    return True
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return True


def _remove(path: str) -> None:
  if _is_local(path):
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with contextlib.suppress(tf.errors.NotFoundError):
    tf.io.gfile.remove(path)


def _describe(holder: Dict[str, Any]) -> str:
  if not holder:
    return 'a run that left an unreadable lock file'
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}, "
          f"command: {holder.get('command')}")


def _is_stale(holder: Dict[str, Any]) -> bool:
  """Only a lock of this host can be judged: its pid no longer runs the holder."""
  if holder.get('host') != socket.gethostname() or not isinstance(holder.get('pid'), int):
    return False
  return not _pid_alive(holder['pid'], holder.get('pid_start'))


def _refusal(what: str, path: str, holder: Dict[str, Any]) -> FolderInUse:
  if holder and holder.get('host') == socket.gethostname():
    advice = f'wait for it to finish or stop it (kill {holder.get("pid")}); lock file {path}'
  else:
    advice = f'if that run is gone, delete {path}'
  return FolderInUse(f'{what} is in use by another run ({_describe(holder)}); {advice}')


def acquire(folder: str, what: str, name: str = LOCK_NAME) -> str:
  """Takes `folder`'s lock `name` (making the folder if needed); returns the lock's path.
  what: how the folder is named in the error, e.g. '--model_dir=runs/teacher'."""
  path = os.path.join(folder, name)
  path = os.path.abspath(path) if _is_local(path) else path
  if path in _HELD:
    _HELD[path][1] += 1
    return path
  _makedirs(folder)
  token = uuid.uuid4().hex
  for _ in range(3):  # a stale lock removed, or one released meanwhile: try again
    if _create(path, _record(token)):
      _HELD[path] = [token, 1]
      return path
    holder = _read(path)
    if holder is None:
      continue
    if not _is_stale(holder):
      raise _refusal(what, path, holder)
    if _read(path) == holder:  # not replaced by a live writer in between
      _remove(path)
      print(f'[lock] {path}: took over the stale lock of pid {holder.get("pid")} '
            f'(that process is gone; it started {holder.get("started")})', flush=True)
  raise _refusal(what, path, _read(path) or {})


def release(path: str) -> None:
  """Drops one hold; the outermost removes the file if it is still this process's."""
  token, depth = _HELD[path]
  if depth > 1:
    _HELD[path][1] = depth - 1
    return
  del _HELD[path]
  holder = _read(path)
  if holder and holder.get('token') == token:
    _remove(path)


def _makedirs(folder: str) -> None:
  if _is_local(folder):
    os.makedirs(folder, exist_ok=True)
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(folder)


@contextlib.contextmanager
def hold(folder: Optional[str], what: str, name: str = LOCK_NAME) -> Iterator[Optional[str]]:
  """Holds `folder`'s lock for the block (released on an exception too); no folder, no
  lock. Yields the lock file's path."""
  if not folder:
    yield None
    return
  path = acquire(folder, what, name)
  try:
    yield path
  finally:
    release(path)
