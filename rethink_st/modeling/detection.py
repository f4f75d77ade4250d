"""RetinaNet (Lin et al. 2017) as the paper uses it: backbone + FPN / NAS-FPN (or SpineNet's own
pyramid) + Model Garden's RetinaNet head + Model Garden's multilevel detection generator.

The model is Model Garden's `RetinaNetModel`, with its call signature:

    outputs = model(images, image_shape=None, anchor_boxes=None, training=True)
    # training: {'cls_outputs': {level: [B, h, w, A*num_classes]},
    #            'box_outputs': {level: [B, h, w, A*4]}}
    # inference (training=False) adds 'detection_boxes' [B, max_num_detections, 4] (pixels of
    # the model input, [ymin, xmin, ymax, xmax]), 'detection_scores', 'detection_classes'
    # (1..num_classes-1) and 'num_detections'.

`num_classes` counts the background class 0 (COCO: 91 as Model Garden does; digits: 11).
Anchors come from `rethink_st.modeling.anchors.anchor_config()`, shared with the input
pipeline. The classification and box-regression outputs are float32 under a mixed-precision
policy (see `float32_outputs`).
"""
from typing import Optional, Sequence, Union

import gin
import tensorflow as tf, tf_keras

from official.vision.configs import decoders as decoders_cfg
from official.vision.configs import retinanet as retinanet_cfg
from official.vision.modeling import factory as mg_factory
from official.vision.modeling import retinanet_model

from rethink_st.errors import UserError
from rethink_st.modeling import anchors
from rethink_st.modeling import backbones

DECODERS = ('fpn', 'nasfpn', 'identity')
NMS_VERSIONS = ('v1', 'v2', 'batched')


def decoder_config(decoder: str, num_filters: int, num_repeats: int,
                   use_separable_conv: bool, binding: str) -> decoders_cfg.Decoder:
  """Model Garden's Decoder (one-of) config: 'fpn', 'nasfpn' or 'identity'."""
  key = str(decoder).lower().replace('-', '').replace('_', '')
  if key not in DECODERS:
    raise UserError(f'{binding}.decoder: unknown decoder {decoder!r}; known: '
                    f'{", ".join(DECODERS)}')
  if key == 'fpn':
    return decoders_cfg.Decoder(type='fpn', fpn=decoders_cfg.FPN(
        num_filters=num_filters, use_separable_conv=use_separable_conv))
  if key == 'nasfpn':
    return decoders_cfg.Decoder(type='nasfpn', nasfpn=decoders_cfg.NASFPN(
        num_filters=num_filters, num_repeats=num_repeats,
        use_separable_conv=use_separable_conv))
  return decoders_cfg.Decoder(type='identity', identity=decoders_cfg.Identity())


def check_input_size(input_size, max_level: int, binding: str):
  """(H, W) with both divisible by 2**max_level, else a one-line UserError."""
  specs = backbones.input_specs(input_size)
  h, w = specs.shape[1:3]
  step = 2 ** max_level
  if h is None or w is None or h % step or w % step:
    raise UserError(f'{binding}.input_size: need (height, width) divisible by 2**max_level = '
                    f'{step}, got {input_size!r}')
  return specs


def float32_outputs(*layers: tf_keras.layers.Layer) -> None:
  """Makes already-built output layers compute in float32 under mixed precision.

  Model Garden's heads create their final convs with the global policy, so under
  'mixed_float16' / 'mixed_bfloat16' logits would be half precision. Their variables are
  float32 either way; switching the layer's policy to float32 makes the layer cast its input
  up and compute (and return) float32, as Keras recommends for the last layer.
  """
  for layer in layers:
    if layer is None:
      continue
    if isinstance(layer, (list, tuple)):
      float32_outputs(*layer)
      continue
    if layer.dtype_policy.compute_dtype != 'float32':
      layer._set_dtype_policy(tf_keras.mixed_precision.Policy('float32'))  # pylint: disable=protected-access


@gin.configurable
def build_retinanet(input_size: Sequence[int] = (640, 640),
                    num_classes: int = 91,
                    backbone: Union[str, tf_keras.Model] = 'resnet-50',
                    decoder: str = 'fpn',
                    decoder_num_filters: int = 256,
                    nasfpn_num_repeats: int = 7,
                    use_separable_conv: bool = False,
                    head_num_convs: int = 4,
                    head_num_filters: int = 256,
                    head_use_separable_conv: bool = False,
                    use_sync_bn: bool = False,
                    norm_momentum: float = 0.99,
                    norm_epsilon: float = 1e-3,
                    activation: str = 'relu',
                    backbone_activation: Optional[str] = None,
                    soft_nms_sigma: Optional[float] = None,
                    nms_version: Optional[str] = None,
                    pre_nms_top_k: int = 5000,
                    pre_nms_score_threshold: float = 0.05,
                    nms_iou_threshold: float = 0.5,
                    max_num_detections: int = 100,
                    use_cpu_nms: bool = False) -> retinanet_model.RetinaNetModel:
  """Builds Model Garden's RetinaNet.

  Args:
    input_size: (height, width) in pixels, each divisible by 2**max_level (128 for P7).
    num_classes: classes including background 0 (COCO 91, digits 11).
    backbone: a backbone name (see backbones.KNOWN_BACKBONES; other backbone settings such as
      drop_connect_rate are bound on `build_backbone`) or an already built backbone.
    decoder: 'fpn', 'nasfpn' or 'identity' (SpineNet makes its own P3-P7 pyramid).
    decoder_num_filters: channels of the FPN / NAS-FPN levels.
    nasfpn_num_repeats: NAS-FPN cells stacked (the paper: 7).
    use_separable_conv: depthwise-separable convs in the decoder.
    head_num_convs, head_num_filters: the class / box towers (4 x 256 in RetinaNet;
      SpineNet-190: 7 x 512).
    head_use_separable_conv: depthwise-separable convs in the head towers.
    use_sync_bn, norm_momentum, norm_epsilon, activation: batch norm and activation of the
      whole model (backbone, decoder, head), as Model Garden's NormActivation. They are
      passed to `build_backbone` explicitly, so they win over bindings made there.
    backbone_activation: the backbone's activation if it differs (EfficientNet: 'swish',
      with a 'relu' decoder and head); None -> `activation`.
    soft_nms_sigma: None for hard NMS; a sigma (the paper's SpineNet runs: 0.3) for Gaussian
      Soft-NMS, which Model Garden runs in its 'v1' detection path.
    nms_version: Model Garden's NMS implementation; None -> 'v1' with Soft-NMS, else 'v2'.
    pre_nms_top_k: candidates per class kept before NMS.
    pre_nms_score_threshold: minimum (sigmoid) score of a detection.
    nms_iou_threshold: IoU above which NMS suppresses a box.
    max_num_detections: detections returned per image.
    use_cpu_nms: place NMS on the CPU.

  Returns:
    official.vision.modeling.retinanet_model.RetinaNetModel, built (weights created).
  """
  binding = 'build_retinanet'
  anchor_cfg = anchors.anchor_config()
  specs = check_input_size(input_size, anchor_cfg.max_level, binding)
  if int(num_classes) < 2:
    raise UserError(f'{binding}.num_classes must count background too (>= 2), got {num_classes}')
  if soft_nms_sigma is not None and float(soft_nms_sigma) < 0:
    raise UserError(f'{binding}.soft_nms_sigma must be >= 0 or None, got {soft_nms_sigma}')
  if nms_version is None:
    nms_version = 'v1' if soft_nms_sigma is not None else 'v2'
  if nms_version not in NMS_VERSIONS:
    raise UserError(f'{binding}.nms_version: unknown {nms_version!r}; known: '
                    f'{", ".join(NMS_VERSIONS)}')
  if soft_nms_sigma is not None and nms_version != 'v1':
    raise UserError(f'{binding}: soft_nms_sigma needs nms_version="v1" (Model Garden runs '
                    f'Soft-NMS only there), got nms_version={nms_version!r}')
  if not 0.0 <= pre_nms_score_threshold < 1.0:
    raise UserError(f'{binding}.pre_nms_score_threshold must be in [0, 1), got '
                    f'{pre_nms_score_threshold}')

  norm_act = backbones.norm_activation_config(use_sync_bn, norm_momentum, norm_epsilon,
                                              activation)
  if isinstance(backbone, str):
    backbone_name = backbone
    backbone = backbones.build_backbone(
        backbone, specs.shape[1:3], use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, activation=backbone_activation or activation,
        min_level=anchor_cfg.min_level, max_level=anchor_cfg.max_level)
  else:
    backbone_name = getattr(backbone, 'name', 'backbone')
  decoder_cfg = decoder_config(decoder, decoder_num_filters, nasfpn_num_repeats,
                               use_separable_conv, binding)
  if decoder_cfg.type == 'identity':
    levels = sorted(int(l) for l in backbone.output_specs)
    if levels[0] > anchor_cfg.min_level or levels[-1] < anchor_cfg.max_level:
      raise UserError(f'{binding}.decoder="identity" needs a backbone with levels '
                      f'{anchor_cfg.min_level}..{anchor_cfg.max_level} (e.g. SpineNet); '
                      f'{backbone_name} gives {levels[0]}..{levels[-1]}')

  model_config = retinanet_cfg.RetinaNet(
      num_classes=int(num_classes),
      input_size=[specs.shape[1], specs.shape[2], 3],
      min_level=anchor_cfg.min_level,
      max_level=anchor_cfg.max_level,
      anchor=retinanet_cfg.Anchor(num_scales=anchor_cfg.num_scales,
                                  aspect_ratios=list(anchor_cfg.aspect_ratios),
                                  anchor_size=anchor_cfg.anchor_size),
      decoder=decoder_cfg,
      head=retinanet_cfg.RetinaNetHead(num_convs=head_num_convs, num_filters=head_num_filters,
                                       use_separable_conv=head_use_separable_conv),
      detection_generator=retinanet_cfg.DetectionGenerator(
          apply_nms=True,
          pre_nms_top_k=pre_nms_top_k,
          pre_nms_score_threshold=pre_nms_score_threshold,
          nms_iou_threshold=nms_iou_threshold,
          max_num_detections=max_num_detections,
          nms_version=nms_version,
          use_cpu_nms=use_cpu_nms,
          soft_nms_sigma=None if soft_nms_sigma is None else float(soft_nms_sigma)),
      norm_activation=norm_act)
  model = mg_factory.build_retinanet(input_specs=specs, model_config=model_config,
                                     backbone=backbone)
  if not model.head.built:
    # Model Garden builds the head through the decoder; with no decoder ('identity') it
    # would wait for the first call. Build it now so every weight exists on return.
    model.head(model.backbone(tf_keras.Input(specs.shape[1:])))
  float32_outputs(model.head._classifier, model.head._box_regressor)  # pylint: disable=protected-access
  return model
