"""The paper's PASCAL segmentation model: backbone + NAS-FPN (7 repeats, depthwise-separable
convs) + pyramid fusion + a conv tower + a 1x1 conv to the classes, built by Model Garden.

    outputs = model(images, training=...)   # {'logits': [B, H / 2**fusion_level,
                                            #              W / 2**fusion_level, num_classes]}

Pyramid fusion (Model Garden's SegmentationHead with feature_fusion='pyramid_fusion'):
every decoder level min_level..max_level is bilinearly resized to `fusion_level` and the
maps are summed; then `head_num_convs` 3x3 conv + BN + activation layers and the 1x1
classifier. Logits stay at the fusion resolution (1/4 of the input for level 2); the loss
and the evaluator resize them to the label size. Pixels labelled
`rethink_st.data.features.IGNORE_LABEL` (255) are ignored by the loss, not by the model.
Logits are float32 under a mixed-precision policy.
"""
from typing import Optional, Sequence, Union

import gin
import tensorflow as tf, tf_keras

from official.vision.configs import semantic_segmentation as segmentation_cfg
from official.vision.modeling import factory as mg_factory
from official.vision.modeling import segmentation_model

from rethink_st.errors import UserError
from rethink_st.modeling import backbones
from rethink_st.modeling import detection


@gin.configurable
def build_segmentation_model(input_size: Sequence[int] = (512, 512),
                             num_classes: int = 21,
                             backbone: Union[str, tf_keras.Model] = 'efficientnet-b7',
                             decoder: str = 'nasfpn',
                             decoder_num_filters: int = 256,
                             nasfpn_num_repeats: int = 7,
                             use_separable_conv: bool = True,
                             min_level: int = 3,
                             max_level: int = 7,
                             fusion_level: int = 2,
                             head_num_convs: int = 3,
                             head_num_filters: int = 256,
                             head_use_depthwise_conv: bool = False,
                             use_sync_bn: bool = False,
                             norm_momentum: float = 0.99,
                             norm_epsilon: float = 1e-3,
                             activation: str = 'relu',
                             backbone_activation: Optional[str] = None
                            ) -> segmentation_model.SegmentationModel:
  """Builds Model Garden's SegmentationModel with the paper's NAS-FPN head.

  Args:
    input_size: (height, width) in pixels, each divisible by 2**max_level.
    num_classes: classes including background 0 (PASCAL VOC: 21).
    backbone: a backbone name (backbones.KNOWN_BACKBONES) or an already built backbone.
    decoder: 'nasfpn' (the paper), 'fpn', or 'identity' (SpineNet's own pyramid).
    decoder_num_filters: channels of each pyramid level.
    nasfpn_num_repeats: NAS-FPN cells stacked (the paper: 7).
    use_separable_conv: depthwise-separable convs in the decoder (the paper: True).
    min_level, max_level: pyramid levels made by the decoder (the paper: 3..7).
    fusion_level: level all pyramid levels are resized to and summed at (the paper: 2,
      i.e. 1/4 of the input resolution).
    head_num_convs, head_num_filters: the conv layers after the fusion (the paper: 3 x 256).
    head_use_depthwise_conv: depthwise 3x3 + pointwise 1x1 instead of full 3x3 convs in
      the head.
    use_sync_bn, norm_momentum, norm_epsilon, activation: batch norm and activation of the
      whole model (the authors' configs: momentum 0.997, epsilon 1e-3, relu, sync BN).
    backbone_activation: the backbone's activation if it differs (EfficientNet: 'swish',
      as its ImageNet checkpoints were trained); None -> `activation`.

  Returns:
    official.vision.modeling.segmentation_model.SegmentationModel, built.
  """
  binding = 'build_segmentation_model'
  if not 1 <= min_level <= max_level:
    raise UserError(f'{binding}: need 1 <= min_level <= max_level, got {min_level}, {max_level}')
  if not 1 <= fusion_level <= max_level:
    raise UserError(f'{binding}.fusion_level must be in 1..max_level={max_level}, got '
                    f'{fusion_level}')
  if int(num_classes) < 2:
    raise UserError(f'{binding}.num_classes must count background too (>= 2), got {num_classes}')
  specs = detection.check_input_size(input_size, max_level, binding)
  norm_act = backbones.norm_activation_config(use_sync_bn, norm_momentum, norm_epsilon,
                                              activation)
  if isinstance(backbone, str):
    backbone = backbones.build_backbone(
        backbone, specs.shape[1:3], use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, activation=backbone_activation or activation,
        min_level=min_level, max_level=max_level)
  decoder_cfg = detection.decoder_config(decoder, decoder_num_filters, nasfpn_num_repeats,
                                         use_separable_conv, binding)
  model_config = segmentation_cfg.SemanticSegmentationModel(
      num_classes=int(num_classes),
      input_size=[specs.shape[1], specs.shape[2], 3],
      min_level=min_level,
      max_level=max_level,
      decoder=decoder_cfg,
      head=segmentation_cfg.SegmentationHead(
          level=fusion_level,
          num_convs=head_num_convs,
          num_filters=head_num_filters,
          use_depthwise_convolution=head_use_depthwise_conv,
          prediction_kernel_size=1,
          upsample_factor=1,
          feature_fusion='pyramid_fusion'),
      norm_activation=norm_act)
  model = mg_factory.build_segmentation_model(input_specs=specs, model_config=model_config,
                                              backbone=backbone)
  # Model Garden leaves the model unbuilt; trace it once on a symbolic input so every
  # weight exists on return (parameter counts, checkpoint restore, optimizer slots).
  inputs = tf_keras.Input(specs.shape[1:])
  backbone_features = model.backbone(inputs)
  decoder_features = (model.decoder(backbone_features) if model.decoder is not None
                      else backbone_features)
  levels = sorted(int(l) for l in decoder_features)
  if fusion_level > levels[0] and fusion_level not in levels:
    raise UserError(f'{binding}.fusion_level={fusion_level} is not a decoder level '
                    f'({levels[0]}..{levels[-1]}) nor below them')
  model.head((backbone_features, decoder_features))
  detection.float32_outputs(model.head._classifier)  # pylint: disable=protected-access
  return model
