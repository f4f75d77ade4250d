"""What benchmarks/train_step.py trains on both sides: our gin config (the teacher's, on the
full train split, no evaluation), the values it binds (`shared_settings`), Model Garden's
ExperimentConfig made from them (`model_garden_config`), and the check that the two sides
build the same network (`count_params`)."""
import os
from typing import Any, Dict, List, Sequence

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import gin
import numpy as np

from rethink_st import cli
from rethink_st import config_io
from rethink_st.errors import UserError

import tf_keras  # pylint: disable=g-import-not-at-top,wrong-import-order

def check_schedule(steps: int, warmup_steps: int, steps_per_loop: int, repeats: int,
                   batch_size: int) -> None:
  """One UserError line for flag values that cannot give a timed window."""
  for name, value in (('--steps', steps), ('--steps_per_loop', steps_per_loop),
                      ('--repeats', repeats), ('--batch_size', batch_size)):
    if value < 1:
      raise UserError(f'{name}={value} must be positive')
  if warmup_steps < 1 or warmup_steps % steps_per_loop:
    raise UserError(f'--warmup_steps={warmup_steps} must be a positive multiple of '
                    f'--steps_per_loop={steps_per_loop}')
  if steps <= warmup_steps or steps % steps_per_loop:
    raise UserError(f'--steps={steps} must be a multiple of --steps_per_loop={steps_per_loop} '
                    f'larger than --warmup_steps={warmup_steps}')


def our_bindings(data_dir: str, steps: int, batch_size: int, steps_per_loop: int) -> List[str]:
  """The teacher config on the full train split, no evaluation, a checkpoint only after the
  first loop and at the end (as Model Garden's side does with checkpoint_interval=steps)."""
  return [
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      'train/rethink_st.data.sources.digit_scenes_source.fraction = 1.0',
      'rethink_st.training.tasks.DetectionTask.eval_source = None',
      f'rethink_st.training.run.run_train.train_steps = {steps}',
      f'rethink_st.training.run.run_train.global_batch_size = {batch_size}',
      f'rethink_st.training.run.run_train.steps_per_loop = {steps_per_loop}',
      f'rethink_st.training.run.run_train.checkpoint_every = {steps}',
      'rethink_st.training.run.run_train.keep_checkpoints = 1',
      'rethink_st.training.run.run_train.eval_every = None',
      # Model Garden's reader decodes every step; so does our side (the digits teacher caches).
      'rethink_st.data.pipeline.build_input.cache = False',
  ]


def parse_our_config(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin(list(gin_files), list(bindings))


def shared_settings() -> Dict[str, Any]:
  """What the parsed gin config trains with: the numbers Model Garden's side copies."""
  from rethink_st import augment  # pylint: disable=g-import-not-at-top
  from rethink_st.modeling import anchors, detection  # pylint: disable=g-import-not-at-top
  from rethink_st.training import optimization, tasks  # pylint: disable=g-import-not-at-top
  bound = config_io.bound_or_default   # the binding, else the signature's default
  s = {
      'image_size': [int(x) for x in bound(tasks.DetectionTask, 'image_size')],
      'num_classes': int(bound(tasks.DetectionTask, 'num_classes')),
      'anchor_size': float(bound(anchors.anchor_config, 'anchor_size')),
      'min_level': int(bound(anchors.anchor_config, 'min_level')),
      'max_level': int(bound(anchors.anchor_config, 'max_level')),
      'num_scales': int(bound(anchors.anchor_config, 'num_scales')),
      'aspect_ratios': [float(x) for x in bound(anchors.anchor_config, 'aspect_ratios')],
      'policy': str(bound(augment.Augment, 'policy')),
      'flip': bool(bound(augment.Augment, 'flip')),
      'scale_min': float(bound(augment.Augment, 'scale_min')),
      'scale_max': float(bound(augment.Augment, 'scale_max')),
      'learning_rate': float(bound(optimization.build_optimizer, 'learning_rate')),
      'reference_batch_size': int(bound(optimization.build_optimizer, 'reference_batch_size')),
      'warmup_steps': int(bound(optimization.build_optimizer, 'warmup_steps')),
      'warmup_learning_rate': float(bound(optimization.build_optimizer, 'warmup_learning_rate')),
      'momentum': float(bound(optimization.build_optimizer, 'momentum')),
      'schedule': str(bound(optimization.build_optimizer, 'schedule')),
      'weight_decay': float(bound(optimization.weight_decay_loss, 'weight_decay')),
  }
  from rethink_st.modeling import backbones  # pylint: disable=g-import-not-at-top
  s['depth_multiplier'] = float(bound(backbones.build_backbone, 'depth_multiplier'))
  for param in ('backbone', 'decoder', 'decoder_num_filters', 'head_num_convs',
                'head_num_filters', 'activation', 'use_sync_bn', 'norm_momentum',
                'norm_epsilon'):
    s[param] = bound(detection.build_retinanet, param)
  if s['policy'] != 's1':
    raise UserError(f"Augment.policy={s['policy']!r}: this benchmark compares flip + scale "
                    "jitter (S1) only")
  if not str(s['backbone']).startswith('resnet-') or s['decoder'] != 'fpn':
    raise UserError(f"build_retinanet.backbone={s['backbone']!r}, decoder={s['decoder']!r}: "
                    "this benchmark builds Model Garden's side for ResNet + FPN only")
  return s


def model_garden_config(s: Dict[str, Any], data_dir: str, steps: int, batch_size: int,
                        steps_per_loop: int):
  """Model Garden's ExperimentConfig (RetinaNetTask) matching `shared_settings()`."""
  # pylint: disable=g-import-not-at-top
  from official.core import config_definitions as cfg
  from official.modeling import optimization as mg_opt
  from official.vision.configs import backbones as bb_cfg
  from official.vision.configs import common as common_cfg
  from official.vision.configs import decoders as dec_cfg
  from official.vision.configs import retinanet as rn_cfg
  # pylint: enable=g-import-not-at-top
  scale = batch_size / s['reference_batch_size']
  warmup = min(s['warmup_steps'], steps // 2)   # as build_optimizer caps it
  lr = ({'type': 'cosine', 'cosine': {'initial_learning_rate': s['learning_rate'] * scale,
                                      'decay_steps': steps}}
        if s['schedule'] == 'cosine' else
        {'type': 'constant', 'constant': {'learning_rate': s['learning_rate'] * scale}})
  optimizer = {'optimizer': {'type': 'sgd', 'sgd': {'momentum': s['momentum']}},
               'learning_rate': lr}
  if warmup > 0:
    optimizer['warmup'] = {'type': 'linear', 'linear': {
        'warmup_steps': warmup, 'warmup_learning_rate': s['warmup_learning_rate'] * scale}}
  model = rn_cfg.RetinaNet(
      num_classes=s['num_classes'],
      input_size=s['image_size'] + [3],
      min_level=s['min_level'], max_level=s['max_level'],
      anchor=rn_cfg.Anchor(num_scales=s['num_scales'], aspect_ratios=s['aspect_ratios'],
                           anchor_size=s['anchor_size']),
      backbone=bb_cfg.Backbone(type='resnet', resnet=bb_cfg.ResNet(
          model_id=int(str(s['backbone']).split('-')[1]),
          depth_multiplier=s['depth_multiplier'])),
      decoder=dec_cfg.Decoder(type='fpn', fpn=dec_cfg.FPN(
          num_filters=s['decoder_num_filters'])),
      head=rn_cfg.RetinaNetHead(num_convs=s['head_num_convs'],
                                num_filters=s['head_num_filters']),
      norm_activation=common_cfg.NormActivation(
          activation=s['activation'], use_sync_bn=bool(s['use_sync_bn']),
          norm_momentum=s['norm_momentum'], norm_epsilon=s['norm_epsilon']))
  task = rn_cfg.RetinaNetTask(
      model=model,
      losses=rn_cfg.Losses(l2_weight_decay=s['weight_decay']),
      train_data=rn_cfg.DataConfig(
          input_path=os.path.join(data_dir, 'train.tfrecord-*'),
          is_training=True, global_batch_size=batch_size, dtype='float32',
          parser=rn_cfg.Parser(aug_rand_hflip=s['flip'], aug_scale_min=s['scale_min'],
                               aug_scale_max=s['scale_max'])),
      validation_data=rn_cfg.DataConfig(
          input_path=os.path.join(data_dir, 'val.tfrecord-*'), is_training=False,
          global_batch_size=batch_size, dtype='float32'))
  return cfg.ExperimentConfig(
      runtime=cfg.RuntimeConfig(mixed_precision_dtype='float32'),
      task=task,
      trainer=cfg.TrainerConfig(
          train_steps=steps, steps_per_loop=steps_per_loop, summary_interval=steps_per_loop,
          checkpoint_interval=steps, max_to_keep=1, validation_interval=steps,
          optimizer_config=mg_opt.OptimizationConfig(optimizer)))



def count_params(gin_files, bindings, mg_params) -> Dict[str, int]:
  """Trainable parameters of both models, built once, to check they are the same network."""
  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import retinanet as mg_retinanet
  from rethink_st.training import tasks
  # pylint: enable=g-import-not-at-top
  parse_our_config(gin_files, bindings)
  tf_keras.backend.clear_session()
  ours = tasks.DetectionTask().build_model()
  mg = mg_retinanet.RetinaNetTask(mg_params.task).build_model()
  counts = {'ours': int(sum(np.prod(v.shape) for v in ours.trainable_variables)),
            'model_garden': int(sum(np.prod(v.shape) for v in mg.trainable_variables))}
  del ours, mg
  tf_keras.backend.clear_session()
  return counts
