"""Packages are found, not listed: the repository root is the package ``encslim`` (``package_dir``
in setup.cfg), so every folder with an ``__init__.py`` below it is ``encslim.<folder>``.

Data files are listed in setup.cfg's ``[options.package_data]``; tests/models/test_packaging.py
checks that a wheel holds every file git tracks outside tests/ and the build files.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# build files at the repository root, which is also the package's folder: never part of the package
BUILD_MODULES = {"setup"}


class BuildPy(build_py):
    """``build_py`` that leaves this script out of the package.

    setuptools skips the setup script by comparing paths with ``sys.argv[0]``, which a PEP 517
    build (``pip wheel .``) sets to its own hook script, so ``encslim/setup.py`` would ship.
    """

    def find_package_modules(self, package, package_dir):
        """The package's modules, less :data:`BUILD_MODULES` in the root package.

        Args:
            package: dotted package name (``encslim``, ``encslim.models``, ...).
            package_dir: its folder.

        Returns:
            ``[(package, module, file)]`` as setuptools' ``build_py`` returns them.
        """
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "encslim" and m[1] in BUILD_MODULES)]


setup(packages=["encslim"] + [f"encslim.{name}" for name in find_packages(exclude=("tests", "tests.*"))],
      cmdclass={"build_py": BuildPy})
