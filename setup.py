"""Packages are found, not listed: the repository root is the package ``encslim`` (``package_dir``
in setup.cfg), so every folder with an ``__init__.py`` below it is ``encslim.<folder>``."""

from setuptools import find_packages, setup

setup(packages=["encslim"] + [f"encslim.{name}" for name in find_packages(exclude=("tests", "tests.*"))])
