"""The benchmark suite: runs the cells of the paper's tables, then writes JSON, Markdown, PNG.

  python benchmarks/suite.py --table=table2 --seeds=3            # digit scale, 3 seeds
  python benchmarks/suite.py --table=table2 --seeds=3 --dry_run  # print the commands only
  python benchmarks/suite.py --table=all --report_only           # tables from finished cells
  python benchmarks/suite.py --table=table6 --seeds=3 --dry_run  # segmentation (Table 6)
  python benchmarks/suite.py --table=table2 --scale=full --seeds=1 \
      --gin_file=gin_configs/base/tpu.gin --gin_param="TPU_ADDRESS='my-tpu'" \
      --out_dir=gs://my-bucket/rethink_st/suite                  # the paper's scale

Each cell is one subprocess of an existing binary (bin/train_teacher.py, which also
pre-trains, or bin/self_train.py), in its own folder  <out_dir>/<scale>/cells/<cell>/seed_<s>/
with its log (suite_log.txt). A finished cell gets suite_done.json (its metrics, wall time,
command, steps and the git commit it ran from) and is skipped on the next run, so the suite is
resumable: kill it and start it again. --record_dir keeps a copy of each suite_done.json
(small, to commit) that counts as finished on another machine (suite_runner.py). A cell that
fails gets suite_failed.json (retried next run); cells that depend on it are skipped. Cells
run one at a time, seed by seed (all of seed 0 first, so a partial run already gives whole
tables).

At digit scale every cell of augmentation policy sX trains the steps --convergence (default
benchmarks/results/convergence.json, made by benchmarks/convergence.py) chose for sX
(segmentation cells: for seg_sX, made with --task=segmentation; cells with 100% of the labeled
scenes: for sX_f100, made with --labeled_fraction=1.0): its teacher CELL_STEPS, its
student cells.student_steps of that (STUDENT_STEPS: a quarter, at twice the batch). Without a
budget a requested cell needs, the suite stops before running anything. A run or record of
another budget (convergence.json chose anew since) is not finished: its folder is moved
aside, its record replaced, and the tables leave it out (suite_runner.py).

A Rand Init cell trains the same command as benchmarks/convergence.py's run of its policy's
chosen budget and seed. With that run in --adopt_from (convergence.py's --out_dir, default
runs/convergence), finished, and made by the training code the suite runs now, the suite
copies it into the cell's folder instead of training it again; the record says so
(adopted_from) and keeps the run's commit, seconds and CPU (suite_adopt.py).

The tables (benchmarks/tables.py) are then made from the finished cells:
<out_dir>/<scale>/<table>.json, .md and .png, and the paper's claims, each tested on
differences paired by seed: <out_dir>/<scale>/claims.json.

The suite's parts: suite_commands.py (the cells to run, their command lines and step
budgets, --estimate), suite_runner.py (running and resuming cells, reading finished runs),
suite_report.py (the tables: JSON, Markdown, PNG) and suite_claims.py (claims.json); the
cells, tables and claims themselves: cells.py and tables.py. Their names are importable from
here (suite.run_cells, suite.cell_command, ...).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,unused-import,g-multiple-import
import tables as tables_lib  # noqa: E402
from suite_claims import (  # noqa: E402,F401  (re-exported)
    CLAIM_RULE, CLAIMS_FILE, METRIC, claim_result, collect_claims, write_claims)
from suite_commands import (  # noqa: E402,F401  (re-exported)
    DEFAULT_CONVERGENCE, REPO, SuiteError, budgets_for, cell_command, cell_dir,
    convergence_command, estimate, parse_seeds, planned_cells, read_budgets, resolve_tables)
from suite_report import (  # noqa: E402,F401  (re-exported)
    _entry, build_results, collect_results, format_markdown, plot, verdict, write_report)
from suite_runner import (  # noqa: E402,F401  (re-exported)
    DONE, FAILED, LOG, STARTED, cpu_kind, known_budgets, other_budget, read_metrics,
    read_pseudo_quality, read_runs, repo_commit, run_cells, subprocess_runner)
# pylint: enable=g-import-not-at-top,unused-import,g-multiple-import

# benchmarks/convergence.py's default --out_dir, run from the repository root
ADOPT_FROM = os.path.join(REPO, 'runs', 'convergence')


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string('table', ['table2'], f'all, {", ".join(tables_lib.TABLES)}')
  flags.DEFINE_enum('scale', 'digits', tables_lib.SCALES, 'digits or full')
  flags.DEFINE_string('seeds', '1', 'a count (3 -> seeds 0,1,2) or a list (0,2 or 1,)')
  flags.DEFINE_string('out_dir', os.path.join(REPO, 'runs', 'benchmarks'), 'results root')
  flags.DEFINE_string('convergence', DEFAULT_CONVERGENCE, 'digit scale: the step budget of '
                      'each augmentation policy (chosen.<policy>.steps; segmentation '
                      'cells: chosen.seg_<policy>.steps), made by benchmarks/convergence.py')
  flags.DEFINE_string('adopt_from', ADOPT_FROM,
                      "digit scale: benchmarks/convergence.py's --out_dir; its finished run of "
                      "a policy's chosen budget and a seed is copied as that seed's Rand Init "
                      "cell when it ran the same command and training code "
                      "(suite_adopt.py); '' trains every cell")
  flags.DEFINE_bool('dry_run', False, 'print the commands, run nothing')
  flags.DEFINE_multi_string('only', [], 'run only this cell (repeatable)')
  flags.DEFINE_bool('optional', False, "also run the tables' optional rows and columns "
                    "(digit scale: Table 2's and Table 6's S2 and S3, ImageNet Init + "
                    "self-training's matched control)")
  flags.DEFINE_integer('max_cells', None, 'start at most this many runs')
  flags.DEFINE_bool('report_only', False, 'make the tables and claims.json from finished '
                    'cells, run nothing')
  flags.DEFINE_string('report_dir', None, 'where the tables go (default: --out_dir; needed '
                      'when --out_dir is on GCS)')
  flags.DEFINE_string('record_dir', None, 'where each finished cell\'s suite_done.json is '
                      'copied (and read back when its run folder is gone): small files to '
                      'commit, e.g. benchmarks/results/suite')
  flags.DEFINE_multi_string('gin_file', [], 'extra gin file for every cell (e.g. tpu.gin)')
  flags.DEFINE_multi_string('gin_param', [], 'extra gin binding for every cell')
  flags.DEFINE_bool('estimate', False, 'print steps / images (and hours at '
                    '--images_per_sec) of every cell, run nothing')
  flags.DEFINE_float('images_per_sec', None, 'training throughput for --estimate')
  fl = flags.FLAGS
  fl(argv or sys.argv)
  try:
    seeds = parse_seeds(fl.seeds)
    names = resolve_tables(fl.table)
    remote = '://' in fl.out_dir
    if remote and not (fl.dry_run or fl.report_only or fl.estimate):
      raise SuiteError(f'--out_dir={fl.out_dir}: the runner needs a local --out_dir; for GCS '
                       'use --dry_run (commands for your cluster) and --report_only '
                       '(benchmarks/README.md)')
    if fl.adopt_from and fl.adopt_from != ADOPT_FROM and not os.path.isdir(fl.adopt_from):
      raise SuiteError(f'--adopt_from={fl.adopt_from}: no such folder (benchmarks/'
                       "convergence.py's --out_dir; '' adopts nothing)")
    report_dir = fl.report_dir or fl.out_dir
    if '://' in report_dir and fl.report_only:
      raise SuiteError('--report_dir: tables are written locally; pass a local --report_dir')
    if fl.estimate:
      rows = estimate(names, fl.scale, fl.images_per_sec, fl.convergence, fl.optional,
                      fl.only)
      print('| cell | steps | batch | images | hours |\n| --- | ---: | ---: | ---: | ---: |')
      for r in rows:
        hours = f'{r["hours"]:.1f}' if 'hours' in r else '-'
        print(f'| {r["cell"]} | {r["steps"]:,} | {r["batch"]} | {r["images"]:,} | {hours} |')
      total = sum(r['images'] for r in rows)
      print(f'| total | | | {total:,} | '
            f'{total / fl.images_per_sec / 3600 if fl.images_per_sec else 0:.1f} |')
      return 0
    if not fl.report_only:
      # A `kill` of the suite takes the running cell with it (subprocess.call kills its
      # child on the SystemExit); the cell resumes from its checkpoints on the next run.
      signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
      counts = run_cells(names, fl.scale, seeds, fl.out_dir, only=fl.only,
                         optional=fl.optional, convergence=fl.convergence,
                         max_cells=fl.max_cells, dry_run=fl.dry_run, gin_files=fl.gin_file,
                         gin_params=fl.gin_param, record_dir=fl.record_dir,
                         adopt_from=fl.adopt_from)
      print(f'[suite] {counts}')
    if fl.dry_run:
      return 0
    # runs of another step budget than convergence.json's now are left out of the tables
    budgets = known_budgets(fl.convergence) if fl.scale == 'digits' else {}
    for name in names:
      paths = write_report(collect_results(name, fl.scale, seeds, fl.out_dir, fl.record_dir,
                                           budgets), report_dir)
      print(f'[suite] {name}: {paths["md"]}')
      with open(paths['md']) as f:
        print(f.read())
    path = write_claims(collect_claims(fl.scale, seeds, fl.out_dir, fl.record_dir, budgets),
                        report_dir)
    print(f'[suite] claims: {path}')
  except SuiteError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
