"""claims.json: each of the paper's claims (tables.CLAIMS) tested on differences of its two
cells' metric (AP; mIoU for segmentation, x100) paired by seed."""
import json
import math
import os
from typing import Mapping, Optional, Sequence

import tables as tables_lib
from suite_runner import read_runs
from suite_runner import same_start

CLAIMS_FILE = 'claims.json'
METRIC = 'AP'       # the detection cells' number; each cell's own: tables.Cell.metric


def mean_std(values: Sequence[float]):
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


CLAIM_RULE = ('diff = treatment - control (AP, or mIoU for segmentation, x100) per seed, '
              'over the seeds both cells finished; s.e. = sample std of diff / sqrt(n). A '
              'claim that the treatment helps holds when mean(diff) - 2 s.e. > 0; one that it '
              'hurts, when mean(diff) + 2 s.e. < 0. n < 2: holds is null.')


def other_teacher_seeds(treatment: Optional[str], control: Optional[str], scale: str,
                        treatment_runs: Mapping[str, dict], control_runs: Mapping[str, dict],
                        metric: str) -> list:
  """The seeds whose treatment and control runs started from different teachers, as
  [{seed, treatment_teacher, control_teacher (x100), control_is_teacher}].

  Two students of one teacher cell pair only if both record the same teacher_<metric>; a
  student and its own teacher cell (st_vs_rand_init, a table's gain over Rand Init), only if
  the teacher's record is the model the student started from. A teacher retrained on another
  kind of CPU (a recorded teacher whose run folder was lost) is another model."""
  teachers = [tables_lib.CELLS[n].teacher_for(scale) if n else None for n in (treatment,
                                                                             control)]
  is_teacher = bool(teachers[0]) and teachers[0] == control
  if not (is_teacher or (teachers[0] and teachers[0] == teachers[1])):
    return []
  key = 'teacher_' + metric
  control_key = metric if is_teacher else key
  return [{'seed': int(s), 'treatment_teacher': 100 * treatment_runs[s][key],
           'control_teacher': 100 * control_runs[s][control_key],
           'control_is_teacher': is_teacher}
          for s in sorted(set(treatment_runs) & set(control_runs), key=int)
          if key in treatment_runs[s] and control_key in control_runs[s]
          and not same_start(treatment_runs[s][key], control_runs[s][control_key])]


def claim_result(claim: tables_lib.Claim, scale: str, treatment_runs: Mapping[str, dict],
                 control_runs: Mapping[str, dict]) -> dict:
  """One entry of claims.json: the claim tested on differences of its cells' metric (AP or
  mIoU, x100; in treatment_ap / control_ap whatever the metric) paired by seed."""
  metric = claim.metric
  out = {'id': claim.id, 'claim': claim.text, 'paper': claim.paper,
         'treatment': claim.treatment, 'control': claim.control, 'direction': claim.direction,
         'metric': metric}
  t = {s: 100 * m[metric] for s, m in treatment_runs.items() if metric in m}
  c = {s: 100 * m[metric] for s, m in control_runs.items() if metric in m}
  both = sorted(set(t) & set(c), key=int)
  other_teacher = other_teacher_seeds(claim.treatment, claim.control, scale, treatment_runs,
                                      control_runs, metric)
  left_out = {o['seed'] for o in other_teacher}
  seeds = [s for s in both if int(s) not in left_out]
  diffs = [t[s] - c[s] for s in seeds]
  mean, std = mean_std(diffs)
  out.update(seeds=[int(s) for s in seeds], treatment_ap=[t[s] for s in seeds],
             control_ap=[c[s] for s in seeds], diff_mean=mean, diff_std=std, n=len(seeds),
             unpaired_seeds={'treatment': sorted((int(s) for s in set(t) - set(c))),
                             'control': sorted((int(s) for s in set(c) - set(t)))},
             other_teacher=other_teacher)
  commits = {r.get('commit') for runs in (treatment_runs, control_runs)
             for s, r in runs.items() if s in seeds}
  out['commits'] = sorted(x or 'unknown' for x in commits)
  if claim.treatment is None or claim.control is None:
    reason = 'no cells'
  elif not all(tables_lib.CELLS[n].exists(scale) for n in (claim.treatment, claim.control)):
    reason = f'no cells at {scale} scale'
  elif not seeds and other_teacher:
    reason = 'no seed finished both cells from the same teacher (other_teacher)'
  elif not seeds:
    reason = 'no seed finished both cells'
  elif len(seeds) < 2:
    reason = 'one paired seed: no spread to test the difference against; run more seeds'
  else:
    reason = None
  if reason:
    out.update(bound=None, holds=None, reason=reason)
    return out
  margin = 2 * std / math.sqrt(len(seeds))
  if claim.direction == 'helps':
    out['bound'] = mean - margin
    out['holds'] = out['bound'] > 0
  else:
    out['bound'] = mean + margin
    out['holds'] = out['bound'] < 0
  return out


def collect_claims(scale: str, seeds: Sequence[int], out_dir: str,
                   record_dir: Optional[str] = None,
                   budgets: Optional[Mapping[str, int]] = None) -> dict:
  """claims.json: every claim of tables_lib.CLAIMS from the finished cells' per-seed AP
  (mIoU for the segmentation claims; each claim's `metric`), read as collect_results does."""
  claims = []
  for claim in tables_lib.CLAIMS:
    runs = [read_runs(n, scale, seeds, out_dir, record_dir, budgets)
            if n and tables_lib.CELLS[n].exists(scale) else {}
            for n in (claim.treatment, claim.control)]
    claims.append(claim_result(claim, scale, *runs))
  return {'scale': scale, 'seeds': list(seeds),
          'metric': f'COCO {METRIC} x 100 (segmentation claims: mIoU x 100; each claim\'s '
                    f'metric)',
          'rule': CLAIM_RULE, 'claims': claims}


def write_claims(claims: dict, report_dir: str) -> str:
  path = os.path.join(report_dir, claims['scale'], CLAIMS_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(claims, f, indent=1)
  return path
