"""config_io.bound_value / bound_or_default: what the parsed gin config binds, macros
evaluated, the signature's default otherwise, and one error line when there is neither."""
import gin
import pytest

from rethink_st import config_io
from rethink_st.errors import UserError


@gin.configurable
def fn(required, steps=7, name='a'):
  return required, steps, name


FN = f'{fn.__module__}.fn'   # its gin name, as bound_or_default spells it


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_bound_value_evaluates_macros_and_scopes():
  gin.parse_config(['STEPS = 300', f'{FN}.steps = %STEPS', f"student/{FN}.name = 'b'"])
  assert config_io.bound_value(f'{FN}.steps') == 300
  assert config_io.bound_value(f'student/{FN}.name') == 'b'
  assert config_io.bound_value(f'{FN}.name') is config_io.UNSET


def test_bound_or_default():
  gin.parse_config([f'{FN}.name = "c"'])
  assert config_io.bound_or_default(fn, 'name') == 'c'
  assert config_io.bound_or_default(fn, 'steps') == 7
  with pytest.raises(UserError, match=f'^{FN}.required is not bound in the gin config'):
    config_io.bound_or_default(fn, 'required')
