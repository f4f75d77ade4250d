"""rethink-st: a reference implementation of "Rethinking Pre-training and Self-training"."""
import setuptools

# Versions that install together on Python 3.11 (checked with a fresh venv).
INSTALL_REQUIRES = [
    'tensorflow==2.20.0',
    'tf-keras==2.20.1',
    'tf-models-official==2.20.0',   # Model Garden (official.vision) and Orbit
    'tensorflow-text==2.20.0',      # required by tf-models-official; pinned to match TF
    'tensorflow-datasets==4.9.10',
    'pycocotools==2.0.11',
    'absl-py==1.4.0',
    'gin-config==0.5.0',
    'scikit-learn==1.9.1',          # only for its bundled handwritten digits
    'matplotlib>=3.8',              # PNG grids and plots
    'psutil>=5.9',                  # peak-memory measurements in benchmarks
]

setuptools.setup(
    name='rethink_st',
    version='0.1.0',
    description='Self-training vs pre-training for detection and segmentation '
                '(Zoph et al. 2020) on TensorFlow Model Garden.',
    packages=setuptools.find_packages(include=['rethink_st', 'rethink_st.*']),
    python_requires='>=3.11,<3.12',
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': ['pytest==9.2.0', 'pytest-xdist==3.8.0']},
)
