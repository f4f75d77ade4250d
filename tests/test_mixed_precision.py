"""set_mixed_precision.policy: under mixed_bfloat16 the tiny teacher trains with bfloat16
compute, float32 variables, float32 losses, and losses close to float32's from the same init
and batches; a policy name that is not one is one error line."""
import math

import gin
import pytest
import tensorflow as tf, tf_keras

from rethink_st.errors import UserError
from rethink_st.training import run
from rethink_st.training import strategy as strategy_lib

import test_jit_compile

POLICY = 'rethink_st.training.strategy.set_mixed_precision.policy'


def _train(data_dir, policy):
  """(per-step losses, variable dtypes, a backbone feature's dtype) of 2 seeded steps."""
  test_jit_compile._parse(data_dir, [f"{POLICY} = '{policy}'"])
  try:
    assert strategy_lib.set_mixed_precision() == policy
    with run.seeded(test_jit_compile.SEED):
      trainer = test_jit_compile._trainer(False)
      losses = [trainer.train(tf.constant(1)) for _ in range(2)]
    dtypes = {v.dtype for v in trainer.model.variables}
    feature = trainer.model.backbone(tf.zeros([1, 128, 128, 3]))['3'].dtype
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
    gin.clear_config()
  return losses, dtypes, feature


def test_mixed_bfloat16_trains_with_float32_losses(digit_scenes_dir):
  f32, f32_dtypes, f32_feature = _train(digit_scenes_dir, 'float32')
  bf16, bf16_dtypes, bf16_feature = _train(digit_scenes_dir, 'mixed_bfloat16')
  assert f32_feature == tf.float32 and bf16_feature == tf.bfloat16   # the policy is in force
  assert f32_dtypes == bf16_dtypes == {tf.float32}                     # variables stay float32
  for a, b in zip(f32, bf16):
    assert b['total_loss'].dtype == tf.float32
    assert math.isfinite(float(b['total_loss']))
    # bfloat16 keeps 8 bits of mantissa: the same init and batches give losses within a few %
    assert float(b['total_loss']) == pytest.approx(float(a['total_loss']), rel=0.05)


def test_unknown_policy_is_one_line():
  with pytest.raises(UserError, match="set_mixed_precision.policy='bf16' is not one of"):
    strategy_lib.set_mixed_precision('bf16')
