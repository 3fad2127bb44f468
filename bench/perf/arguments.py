"""Command-line arguments of the bench/perf scripts: a path that is missing is one line and exit 2.

Every script builds its parser with :func:`parser` and types its path arguments with :func:`folder`
(an existing directory read or written into) or :func:`output_file` (a file to write, whose folder
must exist), so ``--workdir /no/such/dir`` ends as ``prune_speed: error: argument --workdir: no
folder /no/such/dir (--help for usage)`` instead of a traceback after minutes of work.
"""

import argparse
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message):
        """Print ``PROG: error: MESSAGE (--help for usage)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def parser(doc, prog):
    """The parser of one script.

    Args:
        doc: the script's module docstring; its first line is the description.
        prog: the script's name as printed in errors (``prune_speed``).

    Returns:
        OneLineParser: a parser whose errors are one line and exit 2.
    """
    return OneLineParser(prog=prog, description=doc.strip().splitlines()[0])


def folder(value):
    """An existing directory (``type=`` of a path argument).

    Raises:
        argparse.ArgumentTypeError: the path does not exist or is not a directory.
    """
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {value}" if not path.exists() else f"{value} is not a folder")
    return path


def output_file(value):
    """A file to write: its folder must exist and the path must not be a directory (``type=``).

    Raises:
        argparse.ArgumentTypeError: the parent folder is missing, or the path is a directory.
    """
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {path.parent} to write {path.name} into")
    return path
