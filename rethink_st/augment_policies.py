"""AutoAugment and RandAugment (the policies of Augment-S2..S4) with masks.

Model Garden's policy tables, argument sampling, sub-policy choice and per-op probabilities,
applied with the mask-aware ops of `rethink_st/augment_ops.py`, so that instance and semantic
masks move with the image. `rethink_st.augment.Augment` builds one of these for S2-S4.
"""
from typing import Optional

import tensorflow as tf

from official.vision.ops import augment as mg_augment

from rethink_st import augment_ops as ops
from rethink_st.errors import UserError


class MaskAwareAutoAugment:
  """Model Garden's AutoAugment policy (`augment.AutoAugment`) with masks.

  The policy table, argument sampling, sub-policy choice and per-op probabilities are Model
  Garden's (`_parse_policy_info`, `select_and_apply_random_policy`, `_apply_func_with_prob`);
  only the ops are ours, each moving the masks with the image.
  """

  def __init__(self, augmentation_name: str = 'detection_v0', cutout_const: float = 100.0,
               translate_const: float = 250.0):
    try:
      self._mg = mg_augment.AutoAugment(augmentation_name=augmentation_name,
                                        cutout_const=cutout_const,
                                        translate_const=translate_const)
    except ValueError:
      raise UserError(f'Augment.autoaugment_policy: unknown AutoAugment policy '
                      f'{augmentation_name!r}; Model Garden has '
                      f'{", ".join(sorted(mg_augment.AutoAugment().available_policies))}'
                      ) from None
    for sub_policy in self._mg.policies:
      for op_name, _, _ in sub_policy:
        ops.op_kind(op_name)
    self.augmentation_name = augmentation_name

  @property
  def policies(self):
    return self._mg.policies

  @property
  def needs_boxes(self) -> bool:
    """Whether some op reads the boxes to change the image (bbox-only ops)."""
    return any(op in ops.BBOX_ONLY_OPS for sub in self._mg.policies for op, _, _ in sub)

  def distort(self, image, boxes, masks=None, layout: Optional[ops.MaskLayout] = None):
    """(uint8 image, normalized boxes [N, 4], packed masks or None) -> the same, augmented."""
    layout = layout or ops.MaskLayout(False, False)
    tf_policies = []
    for sub_policy in self._mg.policies:
      parsed = []
      for name, prob, level in sub_policy:
        # pylint: disable=protected-access
        _, prob, args = mg_augment._parse_policy_info(
            name, prob, level, ops.REPLACE_VALUE, self._mg.cutout_const, self._mg.translate_const)
        parsed.append((ops.make_op(name, layout), prob, args))

      def final_policy(image_, bboxes, parsed_=tuple(parsed)):
        for fn, prob_, args_ in parsed_:
          # pylint: disable=protected-access
          image_, bboxes = mg_augment._apply_func_with_prob(fn, image_, bboxes, args_, prob_)
        return image_, bboxes
      tf_policies.append(final_policy)
    image, state = mg_augment.select_and_apply_random_policy(
        tf_policies, ops.as_uint8(image), ops.initial_state(boxes, masks))
    return image, state['boxes'], state.get('masks')


class MaskAwareRandAugment:
  """Model Garden's `RandAugment.build_for_detection` with masks.

  Same op list and argument sampling as Model Garden (`_parse_policy_info` with a random
  probability in [0.2, 0.8] per op); each of `num_layers` layers picks one of the ops or
  identity uniformly, as `RandAugment._distort_common` does.
  """

  def __init__(self, num_layers: int = 2, magnitude: float = 10.0, cutout_const: float = 40.0,
               translate_const: float = 100.0, magnitude_std: float = 0.0,
               prob_to_apply: Optional[float] = None, exclude_ops=None):
    self._mg = mg_augment.RandAugment.build_for_detection(
        num_layers=num_layers, magnitude=magnitude, cutout_const=cutout_const,
        translate_const=translate_const, magnitude_std=magnitude_std,
        prob_to_apply=prob_to_apply, exclude_ops=exclude_ops)
    for op_name in self._mg.available_ops:
      ops.op_kind(op_name)

  @property
  def available_ops(self):
    return list(self._mg.available_ops)

  @property
  def needs_boxes(self) -> bool:
    """Whether some op reads the boxes to change the image (bbox-only ops)."""
    return any(op in ops.BBOX_ONLY_OPS for op in self._mg.available_ops)

  def distort(self, image, boxes, masks=None, layout: Optional[ops.MaskLayout] = None):
    layout = layout or ops.MaskLayout(False, False)
    mg = self._mg
    image = ops.as_uint8(image)
    state = ops.initial_state(boxes, masks)
    for _ in range(mg.num_layers):
      op_to_select = tf.random.uniform([], maxval=len(mg.available_ops) + 1, dtype=tf.int32)
      branch_fns = []
      for i, name in enumerate(mg.available_ops):
        prob = tf.random.uniform([], minval=0.2, maxval=0.8, dtype=tf.float32)
        # pylint: disable=protected-access
        _, _, args = mg_augment._parse_policy_info(
            name, prob, mg.magnitude, ops.REPLACE_VALUE, mg.cutout_const, mg.translate_const,
            mg.magnitude_std)
        branch_fns.append((i, lambda fn=ops.make_op(name, layout), a=args, im=image, st=state:
                           fn(im, st, *a)))
      new_image, new_state = tf.switch_case(
          op_to_select, branch_fns,
          default=lambda im=image, st=state: (tf.identity(im), tf.nest.map_structure(
              tf.identity, st)))
      if mg.prob_to_apply is not None:
        keep = tf.random.uniform([], dtype=tf.float32) < mg.prob_to_apply
        new_image, new_state = tf.cond(
            keep, lambda a=new_image, b=new_state: (a, b),
            lambda a=image, b=state: (a, b))
      image, state = new_image, new_state
    return image, state['boxes'], state.get('masks')
