"""The paper's tables as cells: which runs make each table, and how to run each at each scale.

A *cell* is one training run (one binary, its gin files and bindings) that gives one number
(COCO AP on the validation set). A *table* arranges cells in the paper's layout (rows x
columns), names the row each gain is measured against, and holds the numbers the paper's
text states for it. benchmarks/suite.py runs the cells and makes the JSON / Markdown / PNG.

Two scales:
  digits  gin_configs/digits/experiments/*.gin on the embedded digit scenes (the iconic digits
          stand in for ImageNet, unlabeled scenes for OpenImages / ImageNet as unlabeled data);
          a reduced grid (Table.digit_columns) that still tests the paper's claims.
  full    gin_configs/coco/<table>/<cell>.gin: the paper's settings, for Cloud TPU / GPU
          clusters (add gin_configs/base/tpu.gin or gpus.gin with --gin_file).

To point a cell at another config, change its `full` (or `digits`) gin files here.
"""
import dataclasses
from typing import Dict, Optional, Tuple

SCALES = ('digits', 'full')
BINARIES = {'pretrain': 'bin/pretrain.py', 'train': 'bin/train_teacher.py',
            'self_train': 'bin/self_train.py'}

_EXP = 'gin_configs/digits/experiments/'
_CELL = _EXP + 'cell.gin'
# The digit-scale augment files: Model Garden's pixel constants scaled to 128 px scenes.
_AUG = {s: f'gin_configs/digits/augment_{s}.gin' for s in ('s1', 's2', 's3', 's4')}
_PRETRAINED = _EXP + 'init_pretrained.gin'
_SELF = _EXP + 'self_training.gin'
_CONTINUE = _EXP + 'continue_supervised.gin'
PRETRAIN_CELL = 'pretrain'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run. `teacher`: the cell whose folder this one starts from (self_train: the
  teacher that pseudo-labels; continue cells: the checkpoint continued). `pretrained`: needs
  the digit-scale pre-trained classifier (cell `pretrain`). `full` None: digits only."""
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


@dataclasses.dataclass(frozen=True)
class Table:
  """rows x columns of cells. cells[(row, col)] = cell name at digit scale, full_cells at
  full scale (default: the same names). baseline: the row gains are
  measured against (per seed, then averaged). paper[(row, col)]: what the paper states for
  that cell's gain over the baseline (text, with where it says so). claims: checks the
  suite evaluates on the means (see suite.check_claims)."""
  name: str
  title: str
  rows: Tuple[str, ...]
  columns: Tuple[str, ...]
  cells: Dict[Tuple[str, str], str]
  baseline: Optional[str]
  x_label: str
  digit_columns: Tuple[str, ...]
  paper: Dict[Tuple[str, str], str] = dataclasses.field(default_factory=dict)
  full_cells: Optional[Dict[Tuple[str, str], str]] = None
  digit_rows: Optional[Tuple[str, ...]] = None      # None: every row
  claims: Tuple[Tuple[str, ...], ...] = ()
  notes: str = ''

  def columns_for(self, scale: str) -> Tuple[str, ...]:
    return self.digit_columns if scale == 'digits' else self.columns

  def rows_for(self, scale: str) -> Tuple[str, ...]:
    return self.digit_rows if scale == 'digits' and self.digit_rows else self.rows

  def cell(self, scale: str, row: str, col: str) -> Optional[str]:
    cells = self.full_cells if scale == 'full' and self.full_cells is not None else self.cells
    name = cells.get((row, col))
    return name if name and CELLS[name].exists(scale) else None

  def cell_names(self, scale: str) -> Tuple[str, ...]:
    """This table's cells at `scale` in row-major order (dependencies not included)."""
    out = []
    for row in self.rows_for(scale):
      for col in self.columns_for(scale):
        name = self.cell(scale, row, col)
        if name and name not in out:
          out.append(name)
    return tuple(out)


# ------------------------------------------------------------------------------------ cells
def _pct(fraction: float) -> str:
  return f'{round(fraction * 100)}'


def _cells() -> Dict[str, Cell]:
  cells = {PRETRAIN_CELL: Cell(PRETRAIN_CELL, 'pretrain', (_EXP + 'pretrain.gin',),
                               seeded=False)}

  def add(cell):
    cells[cell.name] = cell

  # Table 2 (100% COCO at full scale, 20% of the digit scenes) and Table 3 (Augment-S4).
  for aug in ('s1', 's2', 's3', 's4'):
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
      add(Cell(f'{base}_rand_init', 'train', digits, params, full=full('rand_init')))
      add(Cell(f'{base}_pretrained', 'train', digits + (_PRETRAINED,), params,
               full=full('imagenet_init'), pretrained=True))
      st_full = (full('self_training') if fraction == 1.0 else full('rand_init_self_training'))
      add(Cell(f'{base}_self_training', 'self_train', digits + (_SELF,), params,
               full=st_full, teacher=f'{base}_rand_init'))
      add(Cell(f'{base}_pretrained_self_training', 'self_train',
               digits + (_PRETRAINED, _SELF), params,
               full=(('gin_configs/coco/table3/100pct_imagenet_init_self_training.gin',)
                     if fraction == 1.0 and aug == 's4' else
                     None if fraction == 1.0 else full('imagenet_init_self_training')),
               teacher=f'{base}_pretrained', pretrained=True))
      # Digit-scale control: the teacher trained as many more steps on human labels only,
      # with the student's batch: the same compute as self-training, without pseudo labels.
      add(Cell(f'{base}_rand_init_continued', 'train', digits + (_CONTINUE,), params,
               teacher=f'{base}_rand_init'))
      # Appendix B: loss normalization vs the standard loss, alpha 1 and 3. At full scale
      # these are the paper's ResNet-101 runs (appendix_b/, appendix_e/), whose teacher is
      # appendix_e's Rand Init (cell r101_<aug>_f100_rand_init).
      for alpha in (1, 3):
        for mode in ('normalized', 'standard'):
          if fraction == 1.0:
            full_b = ((f'gin_configs/coco/appendix_b/{aug}_standard_loss.gin',)
                      if mode == 'standard' else
                      (f'gin_configs/coco/appendix_e/{aug}_self_training.gin',))
          else:
            full_b = None
          add(Cell(f'{base}_{mode}_a{alpha}', 'self_train', digits + (_SELF,),
                   params + (f'ALPHA={float(alpha)}', f"LOSS_MODE='{mode}'"),
                   full=full_b, full_params=(f'ALPHA={float(alpha)}',),
                   teacher=f'{base}_rand_init', full_teacher=f'r101_{base}_rand_init'))
    add(Cell(f'r101_{aug}_f100_rand_init', 'train', (),
             full=(f'gin_configs/coco/appendix_e/{aug}_rand_init.gin',)))
  return cells


CELLS = _cells()


def appendix_b_cell(aug: str, fraction: float, mode: str, alpha: int, scale: str) -> str:
  """At digit scale, normalized alpha=1 is the Table 2 self-training cell (same config)."""
  base = f'{aug}_f{_pct(fraction)}'
  if mode == 'normalized' and alpha == 1 and scale == 'digits':
    return f'{base}_self_training'
  return f'{base}_{mode}_a{alpha}'


# ----------------------------------------------------------------------------------- tables
_AUGS = ('S1', 'S2', 'S3', 'S4')
_RAND, _PRE, _ST, _CONT = ('Rand Init', 'ImageNet Init', 'Rand Init + self-training',
                           'Rand Init + same steps supervised (control)')
_PRE_ST = 'ImageNet Init + self-training'


def _table2() -> Table:
  # Digits: 20% of the labeled scenes (400 scenes) so that pre-training has room to help;
  # the paper's Table 2 is on 100% COCO (118k images).
  cells, full_cells = {}, {}
  for aug in _AUGS:
    for table, pct in ((cells, '20'), (full_cells, '100')):
      base = f'{aug.lower()}_f{pct}'
      table[(_RAND, aug)] = f'{base}_rand_init'
      table[(_PRE, aug)] = f'{base}_pretrained'
      table[(_ST, aug)] = f'{base}_self_training'
      table[(_CONT, aug)] = f'{base}_rand_init_continued'
  return Table(
      name='table2',
      title='Table 2: pre-training vs self-training as augmentation gets stronger',
      rows=(_RAND, _PRE, _ST, _CONT), columns=_AUGS, cells=cells, full_cells=full_cells,
      baseline=_RAND,
      x_label='augmentation strength', digit_columns=('S1', 'S4'),
      paper={(_PRE, 'S1'): 'helps (Sec. 4.1, Fig. 1 left)',
             (_PRE, 'S4'): '-1.0 (Sec. 4.1: strong augmentation)',
             (_ST, 'S2'): '>= +1.3 (Sec. 4.2)', (_ST, 'S3'): '>= +1.3 (Sec. 4.2)',
             (_ST, 'S4'): '>= +1.3 (Sec. 4.2)'},
      claims=(('gain_shrinks', _PRE, 'S1', 'S4'),
              ('gain_positive_everywhere', _ST)),
      notes='Digit scale: 20% of the labeled scenes in every column (the paper: 100% COCO).')


def _table3() -> Table:
  cols = ('20%', '50%', '100%')
  cells = {}
  for col, f in zip(cols, ('20', '50', '100')):
    cells[(_RAND, col)] = f's4_f{f}_rand_init'
    cells[(_PRE, col)] = f's4_f{f}_pretrained'
    cells[(_ST, col)] = f's4_f{f}_self_training'
    cells[(_PRE_ST, col)] = f's4_f{f}_pretrained_self_training'
    cells[(_CONT, col)] = f's4_f{f}_rand_init_continued'
  return Table(
      name='table3',
      title='Table 3: self-training across labeled dataset sizes (Augment-S4)',
      rows=(_RAND, _PRE, _ST, _PRE_ST, _CONT), columns=cols, cells=cells, baseline=_RAND,
      x_label='labeled fraction', digit_columns=('20%', '100%'),
      digit_rows=(_RAND, _PRE, _ST, _CONT),
      paper={(_PRE, '20%'): '+2.6 (Sec. 4.2)', (_ST, '20%'): '+3.4 (Sec. 4.2)',
             (_PRE_ST, '20%'): '+5.3 (+2.7 over ImageNet Init, Sec. 4.2)',
             (_PRE, '100%'): '<= 0 (Sec. 4.1: neutral or harmful)',
             (_ST, '50%'): '+1.3..+3.4 (abstract: 20%-100%)',
             (_ST, '100%'): '+1.3..+3.4 (abstract: 20%-100%)'},
      claims=(('gain_shrinks', _PRE, '20%', '100%'),
              ('gain_positive_everywhere', _ST)),
      notes='ImageNet Init + self-training is defined but not in the digit-scale grid.')


def _appendix_b() -> Table:
  # Full scale: the paper's ResNet-101 runs with Augment-S4 (its "+1.3 with S4"). Digit
  # scale: S1 and S4. The 600-step S4 digit teachers keep almost no pseudo boxes at the 0.3
  # threshold, so S4 alone would compare two students trained on empty pseudo labels; the S1
  # teachers keep some, which is what loss normalization is about.
  rows = ('Loss normalization', 'Standard loss')
  alphas = (1, 3)
  cols = tuple(f'alpha={a}' for a in alphas)
  digit_cols = tuple(f'{aug} alpha={a}' for aug in ('S1', 'S4') for a in alphas)
  cells, full_cells = {}, {}
  for row, mode in zip(rows, ('normalized', 'standard')):
    for alpha in alphas:
      full_cells[(row, f'alpha={alpha}')] = appendix_b_cell('s4', 1.0, mode, alpha, 'full')
      for aug in ('S1', 'S4'):
        cells[(row, f'{aug} alpha={alpha}')] = appendix_b_cell(aug.lower(), 0.2, mode, alpha,
                                                               'digits')
  norm = 'Loss normalization'
  return Table(
      name='appendix_b',
      title='Appendix B (Figure 2): loss normalization vs the standard loss',
      rows=rows, columns=cols, cells=cells, full_cells=full_cells, baseline='Standard loss',
      x_label='alpha',
      digit_columns=digit_cols,
      # the paper's S4 numbers beside the full-scale columns and the digit-scale S4 columns
      paper={(norm, f'{prefix}alpha={a}'): text for prefix in ('', 'S4 ')
             for a, text in ((1, '+1.3 with S4; +0.4 on average (App. B)'),
                             (3, '+1.3 with S4; standard unstable at large alpha (App. B)'))},
      claims=tuple(('at_least_baseline', norm, f'{prefix}alpha=3')
                   for prefix in ('', 'S1 ', 'S4 ')),
      notes='Full scale: Augment-S4, 100% COCO, ResNet-101 (appendix_b/ and appendix_e/ '
            'configs; their alpha is set with ALPHA). Digit scale: 20% of the labeled '
            'scenes, Augment-S1 and S4.')


TABLES = {t.name: t for t in (_table2(), _table3(), _appendix_b())}


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
