"""Backbones by name: ResNet, EfficientNet (B0-B7 and L2) and SpineNet, built by Model Garden.

    build_backbone('resnet-50', (640, 640))        -> official.vision ResNet
    build_backbone('efficientnet-b7', (512, 512))   -> official.vision EfficientNet
    build_backbone('spinenet-190', (1280, 1280))    -> official.vision SpineNet

Every backbone is a `tf_keras.Model` mapping images [B, H, W, 3] to a dict of feature maps
keyed by pyramid level ('2'..'5' for ResNet and EfficientNet, min_level..max_level for
SpineNet), with `output_specs` describing them; detection and segmentation decoders read
that dict. Weight decay is not set here: the trainer adds it as a loss over the kernels
(`rethink_st.training.optimization.weight_decay_loss`), so models carry no regularizers.
"""
from typing import Optional, Sequence, Tuple, Union

import gin
import tensorflow as tf, tf_keras

from official.modeling import tf_utils
from official.vision.configs import backbones as backbones_cfg
from official.vision.configs import common as common_cfg
from official.vision.modeling.backbones import efficientnet as mg_efficientnet
from official.vision.modeling.backbones import factory as mg_backbone_factory
from official.vision.modeling.backbones import resnet as mg_resnet
from official.vision.modeling.backbones import spinenet as mg_spinenet

from rethink_st.errors import UserError
from rethink_st.modeling import anchors

# --- EfficientNet-L2 ----------------------------------------------------------------------
# Model Garden's EfficientNet stops at B7. The paper's best PASCAL model uses EfficientNet-L2
# (Xie et al. 2020, "Self-training with Noisy Student"): width x4.3, depth x5.3 over B0, the
# same block specs. Registered here, from our package, so `EfficientNet(model_id='l2')` works;
# adding a key to Model Garden's table changes no existing entry.
mg_efficientnet.SCALING_MAP.setdefault('l2', dict(width_scale=4.3, depth_scale=5.3))

# Squeeze-and-excitation ratio of the published EfficientNets (Model Garden's config
# default is 0.0, which would build a different, smaller network).
EFFICIENTNET_SE_RATIO = 0.25

RESNET_DEPTHS = (10, 18, 26, 34, 50, 101, 152, 200)
EFFICIENTNET_IDS = ('b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'l2')
SPINENET_IDS = ('49s', '49', '96', '143', '190')   # '49s': SpineNet-49S, the narrow one

KNOWN_BACKBONES: Tuple[str, ...] = (
    tuple(f'resnet-{d}' for d in RESNET_DEPTHS) +
    tuple(f'efficientnet-{i}' for i in EFFICIENTNET_IDS) +
    tuple(f'spinenet-{i}' for i in SPINENET_IDS))


class UnknownBackboneError(UserError):
  """A backbone name that is not in KNOWN_BACKBONES."""


def parse_backbone_name(name: str) -> Tuple[str, str]:
  """'ResNet-50' -> ('resnet', '50'); raises UnknownBackboneError listing the known names."""
  key = str(name).strip().lower().replace('_', '-')
  if key not in KNOWN_BACKBONES:
    raise UnknownBackboneError(
        f'build_backbone.name: unknown backbone {name!r}; known: {", ".join(KNOWN_BACKBONES)}')
  family, model_id = key.split('-', 1)
  return family, model_id


def input_specs(input_size: Union[int, Sequence[Optional[int]], None]
               ) -> tf_keras.layers.InputSpec:
  """(H, W), an int (square) or None (any size) -> InputSpec [None, H, W, 3]."""
  if input_size is None:
    h = w = None
  elif isinstance(input_size, int):
    h = w = input_size
  else:
    size = list(input_size)
    if len(size) not in (2, 3):
      raise UserError(f'input_size must be (height, width), got {input_size!r}')
    h, w = size[0], size[1]
  for s in (h, w):
    if s is not None and (not isinstance(s, int) or s <= 0):
      raise UserError(f'input_size must hold positive ints, got {input_size!r}')
  return tf_keras.layers.InputSpec(shape=[None, h, w, 3])


def norm_activation_config(use_sync_bn: bool = False, norm_momentum: float = 0.99,
                           norm_epsilon: float = 1e-3, activation: str = 'relu'
                          ) -> common_cfg.NormActivation:
  """Model Garden's NormActivation config (shared by backbone, decoder and heads)."""
  try:
    tf_utils.get_activation(activation)
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'activation: unknown activation {activation!r}') from e
  return common_cfg.NormActivation(activation=activation, use_sync_bn=bool(use_sync_bn),
                                   norm_momentum=float(norm_momentum),
                                   norm_epsilon=float(norm_epsilon))


def backbone_config(name: str, *, drop_connect_rate: float = 0.0,
                    se_ratio: Optional[float] = None, min_level: int = 3,
                    max_level: int = 7, depth_multiplier: float = 1.0) -> backbones_cfg.Backbone:
  """Model Garden's Backbone (one-of) config for a backbone name."""
  family, model_id = parse_backbone_name(name)
  if not 0.0 <= drop_connect_rate < 1.0:
    raise UserError(f'build_backbone.drop_connect_rate must be in [0, 1), got {drop_connect_rate}')
  if depth_multiplier != 1.0 and family != 'resnet':
    raise UserError(f'build_backbone.depth_multiplier={depth_multiplier}: only ResNet backbones '
                    f'take a width multiplier, not {name}')
  if not depth_multiplier > 0:
    raise UserError(f'build_backbone.depth_multiplier must be > 0, got {depth_multiplier}')
  if family == 'resnet':
    return backbones_cfg.Backbone(type='resnet', resnet=backbones_cfg.ResNet(
        model_id=int(model_id), se_ratio=float(se_ratio or 0.0),
        depth_multiplier=float(depth_multiplier),
        stochastic_depth_drop_rate=drop_connect_rate))
  if family == 'efficientnet':
    return backbones_cfg.Backbone(type='efficientnet', efficientnet=backbones_cfg.EfficientNet(
        model_id=model_id,
        se_ratio=EFFICIENTNET_SE_RATIO if se_ratio is None else float(se_ratio),
        stochastic_depth_drop_rate=drop_connect_rate))
  return backbones_cfg.Backbone(type='spinenet', spinenet=backbones_cfg.SpineNet(
      model_id=model_id.upper(), stochastic_depth_drop_rate=drop_connect_rate,
      min_level=min_level, max_level=max_level))


@gin.configurable
def build_backbone(name: str = 'resnet-50',
                   input_size: Union[int, Sequence[Optional[int]], None] = (640, 640),
                   *,
                   use_sync_bn: bool = False,
                   norm_momentum: float = 0.99,
                   norm_epsilon: float = 1e-3,
                   activation: str = 'relu',
                   drop_connect_rate: float = 0.0,
                   se_ratio: Optional[float] = None,
                   min_level: Optional[int] = None,
                   max_level: Optional[int] = None,
                   depth_multiplier: float = 1.0) -> tf_keras.Model:
  """Builds a Model Garden backbone by name.

  Args:
    name: one of KNOWN_BACKBONES, e.g. 'resnet-50', 'efficientnet-b7', 'efficientnet-l2',
      'spinenet-190'; small ones for tests and digits: 'resnet-10', 'resnet-18',
      'efficientnet-b0', 'spinenet-49s'.
    input_size: (height, width) in pixels; None entries allow any size (ResNet/EfficientNet).
    use_sync_bn: synchronized batch norm across replicas (the paper trains with it).
    norm_momentum: batch-norm moving-average momentum.
    norm_epsilon: batch-norm epsilon.
    activation: 'relu' or 'swish' (SpineNet), any Model Garden activation name.
    drop_connect_rate: stochastic depth / drop connect rate (0 disables).
    se_ratio: squeeze-excitation ratio; None -> 0.25 for EfficientNet, 0 otherwise.
    min_level, max_level: output levels of SpineNet (None -> anchor_config()'s levels);
      ResNet and EfficientNet always output levels 2..5.
    depth_multiplier: ResNet only: scales every block's channels (Model Garden's ResNet
      `depth_multiplier`; 0.5 halves the width, about 4x fewer FLOPs).

  Returns:
    A tf_keras.Model from images to {level: features}, with `output_specs`.
  """
  specs = input_specs(input_size)
  if min_level is None or max_level is None:
    anchor_cfg = anchors.anchor_config()
    min_level = anchor_cfg.min_level if min_level is None else min_level
    max_level = anchor_cfg.max_level if max_level is None else max_level
  cfg = backbone_config(name, drop_connect_rate=drop_connect_rate, se_ratio=se_ratio,
                        min_level=min_level, max_level=max_level,
                        depth_multiplier=depth_multiplier)
  if cfg.type == 'spinenet':
    step = 2 ** max_level
    if any(s is None or s % step for s in specs.shape[1:3]):
      raise UserError(f'build_backbone: {name} needs input_size divisible by 2**max_level = '
                      f'{step}, got {input_size!r}')
  return mg_backbone_factory.build_backbone(
      input_specs=specs, backbone_config=cfg,
      norm_activation_config=norm_activation_config(use_sync_bn, norm_momentum, norm_epsilon,
                                                    activation))


def count_params(layer: tf_keras.layers.Layer, trainable_only: bool = False) -> int:
  """Number of scalars in a built layer's weights (each shared variable counted once)."""
  weights = layer.trainable_weights if trainable_only else layer.weights
  seen = {}
  for w in weights:
    seen[id(w)] = w
  return int(sum(int(tf.size(w)) if w.shape.num_elements() is None else
                 w.shape.num_elements() for w in seen.values()))


# Referenced so linters keep the imports that register Model Garden's builders.
_REGISTERED = (mg_resnet, mg_spinenet)
