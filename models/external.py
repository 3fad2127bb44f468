"""Local folders of encoders a checkpoint does not hold (Cambrian-1), named per slot.

Cambrian checkpoints hold the connector and the LLM but not the vision encoders: the original
loads each one from its hub id at run time. encslim never downloads, so the user names a local
folder per slot: ``--encoder siglip=PATH`` on a command (:func:`parse_encoder_args`; the command passes
the mapping on), ``encoders:`` in a recipe, or ``encoders=`` in Python (``encslim.load_model(path,
encoders={...})``, ``ModelFolder.open(path, encoders={...})``). No process-wide state: the mapping
travels with the :class:`~encslim.models.folder.ModelFolder` (its ``encoders``), whose ``adapter``
reads the family's config with them (the saved ``encslim_encoder_paths`` of encslim's own outputs
first, what the user named over them), so every later stage of a pruned or exported folder finds
its encoders without being told again.

Standard library only: the CLI parses ``--encoder`` before anything heavy is imported.
"""

from pathlib import Path

from ..errors import ConfigError

CONFIG_KEY = "encslim_encoder_paths"  # config.json key of encslim's outputs: {slot: absolute folder}


def parse_encoder_args(values, what="--encoder"):
    """``{slot: absolute path}`` of ``NAME=PATH`` strings (repeatable; ``,`` separates several in one).

    Raises:
        ConfigError: an item without ``=``, an empty name, a name given twice, or a path that is not
            a folder.
    """
    mapping = {}
    for value in values or ():
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, path = item.partition("=")
            name, path = name.strip(), path.strip()
            if not sep or not name or not path:
                raise ConfigError(f"{what} {item!r} is not NAME=PATH; write e.g. {what} siglip=/models/siglip-so400m")
            if name in mapping:
                raise ConfigError(f"{what} names slot '{name}' twice; give one folder per slot")
            mapping[name] = check_folder(name, path, what)
    return mapping


def check_folder(name, path, what="--encoder"):
    """``path`` resolved to an absolute folder, or a one-line ``ConfigError``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{what} {name}={path}: no such folder; pass the local folder of the {name} encoder")
    return str(folder.resolve())
