"""The one compiled part: dkmeans/_fused.c (see its header). Everything else is in pyproject.toml.

``optional=True``: where no C compiler is found the install goes on without it
and dkmeans uses its numba kernels alone (same labels, slower on short rows).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dkmeans._fused", ["dkmeans/_fused.c"], optional=True)])
