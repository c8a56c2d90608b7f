# Packaging metadata lives in pyproject.toml; this shim serves tools that still call setup.py.
# It must never import torch (or the package): building happens before dependencies exist.
from setuptools import setup

setup()
