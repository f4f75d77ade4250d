"""Test set-up: legacy Keras, quiet TF, and a session-wide tiny digit-scenes dataset."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
