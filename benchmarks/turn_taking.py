"""Sides that take turns, so that each round of a comparison sees one machine load: two
training threads handing over one loop at a time and the rates of their timed windows
(benchmarks/train_step.py), and datasets timed one turn each per round
(benchmarks/input_pipeline.py)."""
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple


class TurnTaking:
  """Two training threads take turns, one Orbit loop at a time, so both sides run under the
  same machine load (a shared machine's load changes from minute to minute).

  A side holds the turn from its start until the end of its first loop, then hands it over
  at the end of every loop (`handover`) and waits to get it back; `finish` hands it over for
  good. While a side holds the turn the other is blocked, so the process's CPU time over the
  side's window is the side's. Window k of a side ends with its step (k + 1) * steps_per_loop
  and holds that loop's body plus the previous loop's summaries, actions and checkpoint.
  """

  def __init__(self, first: str, second: str):
    self.sides = (first, second)
    self.turn = first
    self.done = set()
    self.windows = {first: [], second: []}
    self._cond = threading.Condition()
    self._start = {}

  def _other(self, side):
    return self.sides[1] if side == self.sides[0] else self.sides[0]

  def acquire(self, side: str) -> None:
    with self._cond:
      self._cond.wait_for(lambda: self.turn == side)
      self._start[side] = (time.time(), time.process_time())

  def _pass_turn(self, side: str, record: bool) -> None:
    with self._cond:
      if record:
        wall0, cpu0 = self._start[side]
        self.windows[side].append({'wall': time.time() - wall0,
                                   'cpu': time.process_time() - cpu0})
      other = self._other(side)
      if other not in self.done:
        self.turn = other
      self._cond.notify_all()

  def handover(self, side: str) -> None:
    """End of a loop: record the window, let the other side run one loop, resume."""
    self._pass_turn(side, record=True)
    self.acquire(side)

  def finish(self, side: str) -> None:
    """The side's run returned (or failed): the other side runs alone from here on."""
    with self._cond:
      self.done.add(side)
    self._pass_turn(side, record=False)


def window_rate(windows: List[Dict[str, float]], first_timed: int, batch_size: int,
                steps_per_loop: int, where: str) -> Dict[str, Any]:
  """Images/s (wall) and images per CPU-second over windows[first_timed:]."""
  timed = windows[first_timed:]
  if not timed:
    raise RuntimeError(f'{where}: {len(windows)} loops recorded, none after the warm-up '
                       f'({first_timed} loops)')
  images = len(timed) * steps_per_loop * batch_size
  wall = sum(w['wall'] for w in timed)
  cpu = sum(w['cpu'] for w in timed)
  return {'timed_steps': len(timed) * steps_per_loop, 'wall_seconds': wall,
          'cpu_seconds': cpu, 'img_per_sec': images / max(wall, 1e-9),
          'img_per_cpu_sec': images / max(cpu, 1e-9),
          'loop_img_per_sec': [steps_per_loop * batch_size / max(w['wall'], 1e-9)
                               for w in windows],
          'warmup_seconds': sum(w['wall'] for w in windows[:first_timed])}


def turn_order(sides: Sequence[Any], round_: int) -> List[Any]:
  """The sides of a round in turn order: as listed in even rounds, reversed in odd ones."""
  return list(sides) if round_ % 2 == 0 else list(reversed(sides))


def take_turns(sides: Sequence[Tuple[str, Callable[[], Any]]], rounds: int,
               time_fn: Callable[[Any], Tuple[float, float]],
               log: Callable[[str], None] = print) -> Dict[str, List[Tuple[float, float]]]:
  """{name: [time_fn(thing) per round]} for sides [(name, make thing)]: each round times
  every side once, back to back, in turn_order; the things (e.g. datasets, traced once) are
  made before the first round."""
  things = {name: make() for name, make in sides}
  out = {name: [] for name, _ in sides}
  for round_ in range(rounds):
    for name, _ in turn_order(sides, round_):
      wall, cpu = time_fn(things[name])
      out[name].append((wall, cpu))
      log(f'round {round_ + 1}: {name:22s} {wall:8.1f} images/s {cpu:8.1f} images/CPU-s')
  return out
