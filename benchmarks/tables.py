"""The paper's tables and claims, made of cells (benchmarks/cells.py).

A *table* arranges cells in the paper's layout (rows x columns), names the row each gain is
measured against, and holds the numbers the paper's text states for it. A *claim* (CLAIMS)
compares two cells seed by seed; benchmarks/suite.py runs the cells and writes the tables
(JSON / Markdown / PNG) and claims.json. The cells themselves (their gin files at each scale,
digits and full) are benchmarks/cells.py's CELLS, importable from here too.
"""
import dataclasses
from typing import Dict, FrozenSet, Optional, Tuple

# The cells (CELLS, POLICIES, ...), importable from here as before.
from cells import (  # noqa: F401  (re-exported)
    APPENDIX_B_ALPHAS, BINARIES, CELLS, METRICS, POLICIES, PRETRAIN_CELL, SCALES,
    STUDENT_FRACTION, Cell, appendix_b_cell, budget_key, ordered_cells, student_steps)


@dataclasses.dataclass(frozen=True)
class Table:
  """rows x columns of cells. cells[(row, col)] = cell name at digit scale, full_cells at
  full scale (default: the same names). baseline: the row gains are measured against (per
  seed, then averaged); full_baseline: at full scale, if another row. metric: what every
  cell of the table gives (METRICS: 'AP' or 'mIoU'). paper[(row, col)]: what the paper
  states for that cell's gain over the baseline (text, with where it says so).
  digit_optional: rows and columns the digit scale defines but runs only with --optional
  (they show in the report once they have runs).
  The claims a table shows are those of CLAIMS whose two cells it holds."""
  name: str
  title: str
  rows: Tuple[str, ...]
  columns: Tuple[str, ...]                      # at full scale
  cells: Dict[Tuple[str, str], str]
  baseline: Optional[str]
  x_label: str
  digit_columns: Tuple[str, ...]
  paper: Dict[Tuple[str, str], str] = dataclasses.field(default_factory=dict)
  full_cells: Optional[Dict[Tuple[str, str], str]] = None
  digit_optional: FrozenSet[str] = frozenset()
  notes: str = ''
  full_baseline: Optional[str] = None
  metric: str = 'AP'

  def baseline_for(self, scale: str) -> Optional[str]:
    return self.full_baseline if scale == 'full' and self.full_baseline else self.baseline

  def columns_for(self, scale: str, optional: bool = False) -> Tuple[str, ...]:
    if scale == 'full':
      return self.columns
    return tuple(c for c in self.digit_columns if optional or c not in self.digit_optional)

  def rows_for(self, scale: str, optional: bool = False) -> Tuple[str, ...]:
    """The rows with at least one cell at `scale`."""
    cols = self.columns_for(scale, optional=True)
    return tuple(r for r in self.rows
                 if (optional or scale == 'full' or r not in self.digit_optional)
                 and any(self.cell(scale, r, c) for c in cols))

  def cell(self, scale: str, row: str, col: str) -> Optional[str]:
    cells = self.full_cells if scale == 'full' and self.full_cells is not None else self.cells
    name = cells.get((row, col))
    return name if name and CELLS[name].exists(scale) else None

  def cell_names(self, scale: str, optional: bool = False) -> Tuple[str, ...]:
    """This table's cells at `scale` in row-major order (dependencies not included)."""
    out = []
    for row in self.rows_for(scale, optional):
      for col in self.columns_for(scale, optional):
        name = self.cell(scale, row, col)
        if name and name not in out:
          out.append(name)
    return tuple(out)


# ----------------------------------------------------------------------------------- tables
_AUGS = ('S1', 'S2', 'S3', 'S4')
_RAND, _PRE, _ST = 'Rand Init', 'ImageNet Init', 'Rand Init + self-training'
_MC = 'Rand Init + self-training, pseudo-loss weight 0 (matched control)'
_CONT = 'Rand Init + same steps supervised (same-compute control)'
_PRE_ST = 'ImageNet Init + self-training'
_PRE_MC = 'ImageNet Init + self-training, pseudo-loss weight 0 (matched control)'
# Rows and the cell suffix that makes each (cell = f'{aug}_f{pct}_{suffix}').
_ROWS = ((_RAND, 'rand_init'), (_PRE, 'pretrained'), (_ST, 'self_training'),
         (_MC, 'matched_control'), (_CONT, 'rand_init_continued'),
         (_PRE_ST, 'pretrained_self_training'), (_PRE_MC, 'pretrained_matched_control'))
_CONTROL_NOTES = (
    'Controls (digit scale, not in the paper): the matched control is the self-training cell '
    'with the pseudo-loss weight 0 (same init, batches, human-loss weight, steps and '
    'schedule), so self-training minus it is what the pseudo labels add; the same-compute '
    'control trains the teacher as many more steps on human labels only, at the student\'s '
    'batch. Teachers and students train the steps benchmarks/results/convergence.json chose '
    'for the column\'s augmentation policy and labeled fraction (100% labels: its own curve, '
    'key s4_f100).')


def _table2() -> Table:
  # Digits: 20% of the labeled scenes (400 scenes) so that pre-training has room to help;
  # the paper's Table 2 is on 100% COCO (118k images).
  cells, full_cells = {}, {}
  for aug in _AUGS:
    for row, suffix in _ROWS:
      cells[(row, aug)] = f'{aug.lower()}_f20_{suffix}'
      if row in (_RAND, _PRE, _ST):
        full_cells[(row, aug)] = f'{aug.lower()}_f100_{suffix}'
  return Table(
      name='table2',
      title='Table 2: pre-training vs self-training as augmentation gets stronger',
      rows=tuple(r for r, _ in _ROWS), columns=_AUGS, cells=cells, full_cells=full_cells,
      baseline=_RAND, x_label='augmentation strength', digit_columns=_AUGS,
      digit_optional=frozenset({'S2', 'S3', _PRE_MC}),
      paper={(_PRE, 'S1'): 'helps (Sec. 4.1, Fig. 1 left)',
             (_PRE, 'S4'): '-1.0 (Sec. 4.1: strong augmentation)',
             (_ST, 'S2'): '>= +1.3 (Sec. 4.2)', (_ST, 'S3'): '>= +1.3 (Sec. 4.2)',
             (_ST, 'S4'): '>= +1.3 (Sec. 4.2)'},
      notes='Digit scale: 20% of the labeled scenes in every column (the paper: 100% COCO); '
            'S2 and S3 run with --optional. ' + _CONTROL_NOTES)


def _table3() -> Table:
  cols = ('20%', '50%', '100%')
  cells = {}
  for col, f in zip(cols, ('20', '50', '100')):
    for row, suffix in _ROWS:
      cells[(row, col)] = f's4_f{f}_{suffix}'
  return Table(
      name='table3',
      title='Table 3: self-training across labeled dataset sizes (Augment-S4)',
      rows=tuple(r for r, _ in _ROWS), columns=cols, cells=cells, baseline=_RAND,
      x_label='labeled fraction', digit_columns=('20%', '100%'),
      digit_optional=frozenset({_PRE_MC}),
      paper={(_PRE, '20%'): '+2.6 (Sec. 4.2)', (_ST, '20%'): '+3.4 (Sec. 4.2)',
             (_PRE_ST, '20%'): '+5.3 (+2.7 over ImageNet Init, Sec. 4.2)',
             (_PRE, '100%'): '<= 0 (Sec. 4.1: neutral or harmful)',
             (_ST, '50%'): '+1.3..+3.4 (abstract: 20%-100%)',
             (_ST, '100%'): '+1.3..+3.4 (abstract: 20%-100%)'},
      notes='Digit scale: Augment-S4 with 20% and 100% of the labeled scenes. ' + _CONTROL_NOTES)


def _appendix_b() -> Table:
  # Full scale: the paper's ResNet-101 runs with Augment-S4 (its "+1.3 with S4"), alpha 1
  # and 3. Digit scale: Augment-S4, 20% of the labeled scenes, the alphas of the paper's
  # search that bracket its best (0.5 to 3).
  rows = ('Loss normalization', 'Standard loss')
  col = lambda a: f'alpha={a:g}'
  full_alphas = (1, 3)
  cells, full_cells = {}, {}
  for row, mode in zip(rows, ('normalized', 'standard')):
    for alpha in full_alphas:
      full_cells[(row, col(alpha))] = appendix_b_cell('s4', 1.0, mode, alpha, 'full')
    for alpha in APPENDIX_B_ALPHAS:
      cells[(row, col(alpha))] = appendix_b_cell('s4', 0.2, mode, alpha, 'digits')
  norm = 'Loss normalization'
  return Table(
      name='appendix_b',
      title='Appendix B (Figure 2): loss normalization vs the standard loss (Augment-S4)',
      rows=rows, columns=tuple(col(a) for a in full_alphas), cells=cells,
      full_cells=full_cells, baseline='Standard loss', x_label='alpha',
      digit_columns=tuple(col(a) for a in APPENDIX_B_ALPHAS),
      paper={(norm, col(1)): '+1.3 with S4; +0.4 on average (App. B)',
             (norm, col(3)): '+1.3 with S4; standard unstable at large alpha (App. B)'},
      notes='Full scale: Augment-S4, 100% COCO, ResNet-101 (appendix_b/ and appendix_e/ '
            'configs; their alpha is set with ALPHA). Digit scale: Augment-S4, 20% of the '
            'labeled scenes; normalized alpha=1 is Table 2\'s S4 self-training cell.')


_SEG_RAND, _SEG_PRE = 'Rand Init', 'ImageNet++ Init'
_SEG_PRE_ST = 'ImageNet++ Init + self-training'
# Rows and the digit-scale cell suffix (cell = f'seg_{aug}_f20_{suffix}'); None: full scale only.
_SEG_ROWS = ((_SEG_RAND, 'rand_init'), (_SEG_PRE, None), (_ST, 'self_training'),
             (_SEG_PRE_ST, None), (_MC, 'matched_control'))


def _table6() -> Table:
  # Full scale: the paper's Table 6 (PASCAL VOC 2012 val, NAS-FPN, ImageNet++ Init,
  # Augment-S4; EfficientNet-B7 and -L2), gin_configs/pascal/table6/. Digit scale: semantic
  # segmentation of the digit scenes from Rand Init (no ImageNet++ stand-in), 20% of the
  # labeled scenes, Augment-S1 and S4 (S2, S3 with --optional), with the matched control.
  cells, full_cells = {}, {}
  for aug in _AUGS:
    for row, suffix in _SEG_ROWS:
      if suffix:
        cells[(row, aug)] = f'seg_{aug.lower()}_f20_{suffix}'
  for col, net in (('EfficientNet-B7', 'b7'), ('EfficientNet-L2', 'l2')):
    full_cells[(_SEG_PRE, col)] = f'seg_{net}_supervised'
    full_cells[(_SEG_PRE_ST, col)] = f'seg_{net}_self_training'
  return Table(
      name='table6',
      title='Table 6: self-training for semantic segmentation',
      rows=tuple(r for r, _ in _SEG_ROWS), columns=('EfficientNet-B7', 'EfficientNet-L2'),
      cells=cells, full_cells=full_cells, baseline=_SEG_RAND, full_baseline=_SEG_PRE,
      x_label='augmentation strength (full scale: backbone)', digit_columns=_AUGS,
      digit_optional=frozenset({'S2', 'S3'}), metric='mIoU',
      paper={(_SEG_PRE, 'EfficientNet-B7'): '85.2 mIoU val (Table 6)',
             (_SEG_PRE_ST, 'EfficientNet-B7'): '+1.5 (86.7 mIoU val, Table 6)',
             (_SEG_PRE, 'EfficientNet-L2'): '88.7 mIoU val (Table 6)',
             (_SEG_PRE_ST, 'EfficientNet-L2'): '+1.3 (90.0 val, 90.5 test, Table 6)',
             (_ST, 'S4'): '+1.5 / +1.3 over an ImageNet++ Init teacher (B7 / L2, PASCAL, '
                          'Table 6)'},
      notes='Digit scale: semantic segmentation of the digit scenes (background + 10 digits, '
            'label 255 ignored), ResNet-18 x0.5 / NAS-FPN-64 from Rand Init (the paper\'s '
            'Table 6 starts from ImageNet++; without pre-training it reports 41.5 mIoU on '
            'PASCAL), 20% of the labeled scenes; pseudo masks averaged over the paper\'s six '
            'scales (0.5-1.75, run as 128 px tiles) with pixels below 0.5 ignored; mIoU x 100 '
            'on the 500 validation scenes, '
            'single-scale. Teachers and students train the steps benchmarks/results/'
            'convergence.json chose for seg_<policy> (benchmarks/convergence.py '
            '--task=segmentation). The matched control is the self-training cell with the '
            'pseudo-loss weight 0 (same init, batches, human-loss weight, steps and '
            'schedule). Full scale: gin_configs/pascal/table6/ (PASCAL VOC 2012 val).')


TABLES = {t.name: t for t in (_table2(), _table3(), _appendix_b(), _table6())}


# ----------------------------------------------------------------------------------- claims
@dataclasses.dataclass(frozen=True)
class Claim:
  """treatment vs control, paired by seed (suite_claims.claim_result), on the cells' metric (AP or
  mIoU). direction 'helps': the claim holds when the treatment is above the control by more
  than 2 standard errors of the paired differences; 'hurts': below by more than 2 standard
  errors. treatment/control None: the cells do not exist yet."""
  id: str
  treatment: Optional[str]
  control: Optional[str]
  direction: str
  text: str
  paper: str

  @property
  def metric(self) -> str:
    """The two cells' metric ('AP' when the cells do not exist yet)."""
    return CELLS[self.treatment].metric if self.treatment else METRICS['detection']


# Directions: every claim is that the treatment helps, except pretrain_gain/S4/100: the paper
# finds ImageNet pre-training HURTS with Augment-S4 and 100% of the labels (-1.0 AP, Sec. 4.1).
# pretrain_gain/S1/20 and /S4/100 together are the paper's "pre-training's value shrinks
# with stronger augmentation and more labels".
CLAIMS = (
    Claim('st_vs_matched_control/S1/20', 's1_f20_self_training', 's1_f20_matched_control',
          'helps', 'self-training beats its matched control (pseudo-loss weight 0), S1, 20%',
          'not in the paper (its models are converged): what the pseudo labels add'),
    Claim('st_vs_matched_control/S4/20', 's4_f20_self_training', 's4_f20_matched_control',
          'helps', 'self-training beats its matched control, S4, 20%',
          'not in the paper: what the pseudo labels add'),
    Claim('st_vs_matched_control/S4/100', 's4_f100_self_training', 's4_f100_matched_control',
          'helps', 'self-training beats its matched control, S4, 100%',
          'not in the paper: what the pseudo labels add'),
    Claim('st_vs_rand_init/S4/20', 's4_f20_self_training', 's4_f20_rand_init', 'helps',
          'self-training beats Rand Init, S4, 20%', '+3.4 AP (Table 3, Sec. 4.2)'),
    Claim('pretrain_gain/S1/20', 's1_f20_pretrained', 's1_f20_rand_init', 'helps',
          'ImageNet Init beats Rand Init, S1, 20%',
          'helps with weak augmentation and few labels (Sec. 4.1, Figure 1)'),
    Claim('pretrain_gain/S4/20', 's4_f20_pretrained', 's4_f20_rand_init', 'helps',
          'ImageNet Init beats Rand Init, S4, 20%', '+2.6 AP (Table 3, Sec. 4.2)'),
    Claim('pretrain_gain/S4/100', 's4_f100_pretrained', 's4_f100_rand_init', 'hurts',
          'ImageNet Init is below Rand Init, S4, 100%', '-1.0 AP (Table 2, Sec. 4.1)'),
    Claim('pretrain_plus_st_vs_pretrain/S4/20', 's4_f20_pretrained_self_training',
          's4_f20_pretrained', 'helps', 'self-training adds to ImageNet Init, S4, 20%',
          '+2.7 AP over ImageNet Init (Table 3, Sec. 4.2)'),
    Claim('pretrain_plus_st_vs_matched_control/S4/20', 's4_f20_pretrained_self_training',
          's4_f20_pretrained_matched_control', 'helps',
          'self-training beats its matched control on ImageNet Init, S4, 20%',
          'not in the paper: what the pseudo labels add to the pre-trained teacher'),
    Claim('loss_norm_vs_standard/alpha_3', appendix_b_cell('s4', 0.2, 'normalized', 3, 'digits'),
          appendix_b_cell('s4', 0.2, 'standard', 3, 'digits'), 'helps',
          'loss normalization beats the standard loss at alpha 3, S4, 20%',
          '+1.3 AP with S4; the standard loss is unstable at large alpha (Appendix B)'),
    Claim('seg_st_vs_matched_control/S1', 'seg_s1_f20_self_training',
          'seg_s1_f20_matched_control', 'helps',
          'segmentation: self-training beats its matched control, S1, 20% (Table 6 analogue)',
          'not in the paper: what the pseudo masks add'),
    Claim('seg_st_vs_matched_control/S4', 'seg_s4_f20_self_training',
          'seg_s4_f20_matched_control', 'helps',
          'segmentation: self-training beats its matched control, S4, 20% (Table 6 analogue)',
          'not in the paper: what the pseudo masks add (Table 6: +1.5 mIoU over the '
          'teacher, EfficientNet-B7)'),
    Claim('seg_st_vs_rand_init/S4', 'seg_s4_f20_self_training', 'seg_s4_f20_rand_init',
          'helps', 'segmentation: self-training beats its Rand Init teacher, S4, 20%',
          '+1.5 mIoU (B7) / +1.3 (L2) over an ImageNet++ Init teacher (Table 6)'),
)

