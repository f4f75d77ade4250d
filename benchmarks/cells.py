"""The paper's runs as cells: one training run each, and how to run it at each scale.

A *cell* is one training run (one binary, its gin files and bindings) that gives one number
on the validation set: COCO AP (detection) or mIoU (segmentation, Table 6), the cell's
`metric`. benchmarks/tables.py arranges cells into the paper's tables and claims;
benchmarks/suite.py runs them.

Two scales:
  digits  gin_configs/digits/experiments/*.gin on the embedded digit scenes (the iconic digits
          stand in for ImageNet, unlabeled scenes for OpenImages / ImageNet as unlabeled data);
          a reduced grid (tables.Table.digit_columns) that still tests the paper's claims.
          Every cell of augmentation policy sX trains its teacher, and its student, for the
          steps benchmarks/results/convergence.json chose for sX (the suite binds them; a
          segmentation cell's are chosen.seg_sX, its own curve; a cell with another labeled
          fraction than 20%, chosen.sX_f<pct>, also its own curve: budget_key).
  full    gin_configs/coco/<table>/<cell>.gin (Table 6: gin_configs/pascal/table6/): the
          paper's settings, for Cloud TPU / GPU clusters (add gin_configs/base/tpu.gin or
          gpus.gin with --gin_file). Their steps are the paper's, in the gin files.

To point a cell at another config, change its `full` (or `digits`) gin files here.
"""
import dataclasses
from typing import Dict, Optional, Tuple

SCALES = ('digits', 'full')
BINARIES = {'train': 'bin/train_teacher.py', 'self_train': 'bin/self_train.py'}
POLICIES = ('s1', 's2', 's3', 's4')

_EXP = 'gin_configs/digits/experiments/'
_CELL = _EXP + 'cell.gin'
# The digit-scale augment files: Model Garden's pixel constants scaled to 128 px scenes.
_AUG = {s: f'gin_configs/digits/augment_{s}.gin' for s in POLICIES}
_PRETRAINED = _EXP + 'init_pretrained.gin'
_SELF = _EXP + 'self_training.gin'
_MATCHED = _EXP + 'matched_control.gin'
_CONTINUE = _EXP + 'continue_supervised.gin'
_SEG_CELL = _EXP + 'seg_cell.gin'
_SEG_SELF = _EXP + 'seg_self_training.gin'
PRETRAIN_CELL = 'pretrain'
# The number a cell gives (its eval_metrics.json / results.json key, 0-1), per task.
METRICS = {'detection': 'AP', 'segmentation': 'mIoU', 'classification': 'top1_accuracy'}
# The prefix of a cell's step-budget key in convergence.json's `chosen`, per task: a
# segmentation cell's budget is its own curve's (seg_<policy>); a task not here trains the
# budget convergence.py chose for its policy on the detection teacher (<policy>).
BUDGET_KEY_PREFIX = {'segmentation': 'seg_'}
# The labeled fraction the curves are measured at by default (the paper's 20% COCO setting).
# A cell with another fraction trains the budget of its own curve, <policy>_f<pct> (the
# paper: "we allow each model to train until it converges" for every data size): more labels
# may need more steps, and a 100% cell trained at the 20% budget would compare unfinished
# models (pre-training helps an unfinished model more than a converged one).
DEFAULT_FRACTION = 0.2


def budget_key(task: str, policy: str, fraction: float = DEFAULT_FRACTION) -> str:
  """The key of a (task, policy, labeled fraction)'s step budget in convergence.json's
  `chosen`: 's4', 'seg_s4', 's4_f100' (benchmarks/convergence.py writes it)."""
  suffix = '' if _pct(fraction) == _pct(DEFAULT_FRACTION) else f'_f{_pct(fraction)}'
  return BUDGET_KEY_PREFIX.get(task, '') + policy + suffix


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run. `teacher`: the cell whose folder this one starts from (self_train: the
  teacher that pseudo-labels; a train cell with a teacher continues that checkpoint).
  `pretrained`: needs the digit-scale pre-trained classifier (cell `pretrain`). `policy`:
  the augmentation policy whose step budget (convergence.json) the cell trains at digit
  scale; None: the cell's own gin files set its steps. `task`: what the cell trains
  (METRICS: the number it gives; a segmentation cell's budget is chosen.seg_<policy>).
  `full` None: digits only."""
  name: str
  binary: str                                   # a key of BINARIES
  digits: Tuple[str, ...]                       # gin files, applied in order
  digits_params: Tuple[str, ...] = ()           # gin bindings
  full: Optional[Tuple[str, ...]] = None
  full_params: Tuple[str, ...] = ()
  teacher: Optional[str] = None
  pretrained: bool = False
  seeded: bool = True                           # False: one run shared by every seed
  full_teacher: Optional[str] = None            # at full scale, if not `teacher`
  policy: Optional[str] = None                  # 's1'..'s4'
  task: str = 'detection'                       # a key of METRICS
  fraction: float = DEFAULT_FRACTION            # of the labeled scenes (digit scale)

  @property
  def metric(self) -> str:
    """The key of the cell's number in eval_metrics.json / results.json (0-1)."""
    return METRICS[self.task]

  @property
  def budget_key(self) -> Optional[str]:
    """The key of the cell's step budget in convergence.json's `chosen` (budget_key): the
    policy (detection at 20% labels, 's4'), 'seg_<policy>' (segmentation, its own curve) or
    '<policy>_f<pct>' (another labeled fraction, 's4_f100'); None: no budget."""
    if self.policy is None:
      return None
    return budget_key(self.task, self.policy, self.fraction)

  def teacher_for(self, scale: str) -> Optional[str]:
    return self.full_teacher if scale == 'full' and self.full_teacher else self.teacher

  def gin_files(self, scale: str) -> Tuple[str, ...]:
    return self.digits if scale == 'digits' else (self.full or ())

  def gin_params(self, scale: str) -> Tuple[str, ...]:
    return self.digits_params if scale == 'digits' else self.full_params

  def depends(self, scale: str) -> Tuple[str, ...]:
    deps = []
    if self.pretrained and scale == 'digits':
      deps.append(PRETRAIN_CELL)
    if self.teacher_for(scale):
      deps.append(self.teacher_for(scale))
    return tuple(deps)

  def exists(self, scale: str) -> bool:
    return bool(self.digits) if scale == 'digits' else self.full is not None

  def budget_params(self, steps: int) -> Tuple[str, ...]:
    """Digit-scale bindings that make this cell train `steps` (its policy's budget).

    A teacher trains CELL_STEPS; a student (self-training, its matched control, Appendix B)
    starts from that teacher and trains student_steps(steps) (STUDENT_STEPS); a continued
    cell (the same-compute control) trains as long as the student, and its
    continue_supervised.gin binds train_steps literally, so the binding here (given after
    the gin files) overrides it."""
    if self.policy is None:
      return ()
    params = [f'CELL_STEPS={steps}']
    if self.binary == 'self_train':
      params.append(f'STUDENT_STEPS={student_steps(steps)}')
    elif self.teacher:
      params.append(f'rethink_st.training.run.run_train.train_steps={student_steps(steps)}')
    return tuple(params)


# Digit scale: a student trains this fraction of its teacher's step budget, at twice the
# teacher's batch (16 human + 16 pseudo). The paper's students start from the teacher's weights
# "to save training time" (Appendix C: a student from scratch needed 2.25x as long); its
# appendix_c gin files give a teacher-init student as many steps as the teacher. A quarter
# (half the teacher's images) keeps a self-training cell with its matched control at a
# teacher's cost on two CPU cores, so that three seeds of a policy fit in one working day
# (the first rerun's seed 0 used a half: benchmarks/README.md); the matched control
# (pseudo-loss weight 0) and the same-compute control train exactly as long, so (student -
# control) is measured at equal training either way.
STUDENT_FRACTION = 0.25


def student_steps(teacher_steps: int) -> int:
  """A digit-scale student's steps for a teacher budget of `teacher_steps` (at least 1)."""
  return max(1, int(round(teacher_steps * STUDENT_FRACTION)))



# ------------------------------------------------------------------------------------ cells
def _pct(fraction: float) -> str:
  return f'{round(fraction * 100)}'


APPENDIX_B_ALPHAS = (0.5, 1, 2, 3)


def _cells() -> Dict[str, Cell]:
  cells = {PRETRAIN_CELL: Cell(PRETRAIN_CELL, 'train', (_EXP + 'pretrain.gin',),
                               seeded=False, task='classification')}

  def add(cell):
    cells[cell.name] = cell

  # Table 2 (100% COCO at full scale, 20% of the digit scenes) and Table 3 (Augment-S4).
  for aug in POLICIES:
    for fraction in (0.2, 0.5, 1.0):
      pct = _pct(fraction)
      base = f'{aug}_f{pct}'
      digits = (_CELL, _AUG[aug])
      params = (f'LABELED_FRACTION={fraction}',)
      # Full-scale file for this (augment, fraction): Table 2 is 100% COCO with S1..S4,
      # Table 3 is S4 with 20/50/100%.
      if fraction == 1.0:
        full = lambda what, a=aug: (f'gin_configs/coco/table2/{a}_{what}.gin',)
      elif aug == 's4':
        full = lambda what, p=pct: (f'gin_configs/coco/table3/{p}pct_{what}.gin',)
      else:
        full = lambda what: None
      kw = dict(policy=aug, fraction=fraction)
      add(Cell(f'{base}_rand_init', 'train', digits, params, full=full('rand_init'), **kw))
      add(Cell(f'{base}_pretrained', 'train', digits + (_PRETRAINED,), params,
               full=full('imagenet_init'), pretrained=True, **kw))
      st_full = (full('self_training') if fraction == 1.0 else full('rand_init_self_training'))
      add(Cell(f'{base}_self_training', 'self_train', digits + (_SELF,), params,
               full=st_full, teacher=f'{base}_rand_init', **kw))
      add(Cell(f'{base}_pretrained_self_training', 'self_train',
               digits + (_PRETRAINED, _SELF), params,
               full=(('gin_configs/coco/table3/100pct_imagenet_init_self_training.gin',)
                     if fraction == 1.0 and aug == 's4' else
                     None if fraction == 1.0 else full('imagenet_init_self_training')),
               teacher=f'{base}_pretrained', pretrained=True, **kw))
      # Digit-scale controls (not in the paper). The matched control is the self-training
      # cell exactly (files, teacher, seed, steps) plus matched_control.gin: pseudo-loss
      # weight 0, so (self-training - matched control) is what the pseudo labels add.
      add(Cell(f'{base}_matched_control', 'self_train', digits + (_SELF, _MATCHED), params,
               teacher=f'{base}_rand_init', **kw))
      add(Cell(f'{base}_pretrained_matched_control', 'self_train',
               digits + (_PRETRAINED, _SELF, _MATCHED), params,
               teacher=f'{base}_pretrained', pretrained=True, **kw))
      # The same-compute supervised control: the teacher trained as many more steps on human
      # labels only, with the student's batch.
      add(Cell(f'{base}_rand_init_continued', 'train', digits + (_CONTINUE,), params,
               teacher=f'{base}_rand_init', **kw))
      # Appendix B: loss normalization vs the standard loss. At full scale these are the
      # paper's ResNet-101 runs (appendix_b/, appendix_e/), whose teacher is appendix_e's
      # Rand Init (cell r101_<aug>_f100_rand_init).
      for alpha in APPENDIX_B_ALPHAS:
        for mode in ('normalized', 'standard'):
          if fraction == 1.0:
            full_b = ((f'gin_configs/coco/appendix_b/{aug}_standard_loss.gin',)
                      if mode == 'standard' else
                      (f'gin_configs/coco/appendix_e/{aug}_self_training.gin',))
          else:
            full_b = None
          add(Cell(f'{base}_{mode}_a{alpha:g}', 'self_train', digits + (_SELF,),
                   params + (f'ALPHA={float(alpha)}', f"LOSS_MODE='{mode}'"),
                   full=full_b, full_params=(f'ALPHA={float(alpha)}',),
                   teacher=f'{base}_rand_init', full_teacher=f'r101_{base}_rand_init', **kw))
    add(Cell(f'r101_{aug}_f100_rand_init', 'train', (),
             full=(f'gin_configs/coco/appendix_e/{aug}_rand_init.gin',)))
    # Table 6 at digit scale (semantic segmentation of the digit scenes, 20% of the labeled
    # scenes): the Rand Init teacher, self-training (pseudo masks, pixels below 0.5 ignored)
    # and its matched control (the self-training cell plus matched_control.gin). Budgets:
    # convergence.json's chosen.seg_<policy> (Cell.budget_key).
    seg = f'seg_{aug}_f20'
    seg_digits = (_SEG_CELL, _AUG[aug])
    kw = dict(policy=aug, task='segmentation')
    add(Cell(f'{seg}_rand_init', 'train', seg_digits, ('LABELED_FRACTION=0.2',), **kw))
    add(Cell(f'{seg}_self_training', 'self_train', seg_digits + (_SEG_SELF,),
             ('LABELED_FRACTION=0.2',), teacher=f'{seg}_rand_init', **kw))
    add(Cell(f'{seg}_matched_control', 'self_train', seg_digits + (_SEG_SELF, _MATCHED),
             ('LABELED_FRACTION=0.2',), teacher=f'{seg}_rand_init', **kw))
  # Table 6 at full scale: the paper's PASCAL VOC runs (NAS-FPN, ImageNet++ Init, Augment-S4,
  # 100% of PASCAL train). The self-training cell starts from its supervised cell's folder.
  for net in ('b7', 'l2'):
    add(Cell(f'seg_{net}_supervised', 'train', (), task='segmentation',
             full=(f'gin_configs/pascal/table6/{net}_supervised.gin',)))
    add(Cell(f'seg_{net}_self_training', 'self_train', (), task='segmentation',
             full=(f'gin_configs/pascal/table6/{net}_self_training.gin',),
             teacher=f'seg_{net}_supervised'))
  return cells


CELLS = _cells()


def appendix_b_cell(aug: str, fraction: float, mode: str, alpha: float, scale: str) -> str:
  """At digit scale, normalized alpha=1 is the Table 2 self-training cell (same config)."""
  base = f'{aug}_f{_pct(fraction)}'
  if mode == 'normalized' and alpha == 1 and scale == 'digits':
    return f'{base}_self_training'
  return f'{base}_{mode}_a{alpha:g}'


def ordered_cells(names, scale: str) -> Tuple[str, ...]:
  """`names` plus their dependencies, each after what it depends on."""
  out = []

  def visit(name, stack=()):
    if name in out:
      return
    if name in stack:
      raise ValueError(f'cell dependency cycle at {name}')
    for dep in CELLS[name].depends(scale):
      visit(dep, stack + (name,))
    out.append(name)

  for name in names:
    visit(name)
  return tuple(out)
