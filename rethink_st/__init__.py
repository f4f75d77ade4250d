"""rethink-st: teacher -> pseudo labels -> student, on TensorFlow Model Garden.

Model Garden 2.20 is built on tf-keras (Keras 2). `TF_USE_LEGACY_KERAS=1` must be in force
before TensorFlow resolves `tf.keras`, so it is set here, at the top of the package, whichever
module a user imports first.
"""
import os as _os
import sys as _sys

_os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

if _os.environ['TF_USE_LEGACY_KERAS'] not in ('1', 'true', 'True'):
  _sys.stderr.write('rethink_st: TF_USE_LEGACY_KERAS is set to %r; Model Garden needs '
                    'TF_USE_LEGACY_KERAS=1.\n' % _os.environ['TF_USE_LEGACY_KERAS'])

__version__ = '0.1.0'
