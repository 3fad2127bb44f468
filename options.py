"""One declaration per option: typed stage configs and the Click options generated from them.

A stage declares its options once, as a :class:`StageConfig` (pydantic, ``extra="forbid"``): each
field has a type, a default and a description. :func:`click_options` turns the fields into Click
options (``lora_r`` -> ``--lora-r``, the description as help, the default shown), so the CLI, the
recipe schema and the Python API share one declaration and one set of defaults.

Field types map to options as follows: ``bool`` -> ``--name/--no-name``; ``Literal[...]`` ->
``click.Choice``; ``int``/``float``/``str`` (optionally ``Optional``) -> that type; a list of
scalars -> a repeatable option whose values may also be comma-separated (``--batch-sizes 1,4``);
a list of lists -> a repeatable option, one comma-separated inner list per occurrence
(``--mask sam --mask sam,clip``). A field's ``json_schema_extra={"cli": "format"}`` names its
option differently (``--format`` for the field ``formats``); ``{"metavar": ...}`` sets the metavar.
"""

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

import click
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

C = TypeVar("C", bound="StageConfig")
F = TypeVar("F", bound=Callable[..., Any])


class StageConfig(BaseModel):
    """Base of the stages' configs: unknown keys rejected, every problem raised as one ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_errors(err, type(self))) from None

    # validation nested in a larger model (a recipe) skips this __init__ and keeps pydantic's own errors,
    # so the recipe reports them with their dotted keys
    __init__.__pydantic_base_init__ = True

    def merged(self: C, **overrides: Any) -> C:
        """A new config: this one's fields with ``overrides`` applied, validated again.

        Raises:
            ConfigError: an unknown field (with a did-you-mean hint) or an invalid value.
        """
        if not overrides:
            return self
        return type(self)(**{**self.model_dump(), **overrides})

    @classmethod
    def build(cls: type[C], config: C | Mapping[str, Any] | None = None, **overrides: Any) -> C:
        """``config`` (an instance, a dict of fields, or ``None`` for the defaults) with ``overrides``.

        Raises:
            ConfigError: an unknown field or an invalid value.
        """
        if config is None:
            return cls(**overrides)
        if isinstance(config, dict):
            return cls(**{**config, **overrides})
        if not isinstance(config, cls):
            raise ConfigError(f"expected a {cls.__name__} or a dict of its fields, got {type(config).__name__}")
        return config.merged(**overrides)


def describe_errors(err, model, source=None):
    """A pydantic ``ValidationError`` as one line: every problem, unknown keys with a did-you-mean hint."""
    problems = [describe_error(e, model) for e in err.errors()]
    head = f"{source or model.__name__}: " if len(problems) > 1 or source else ""
    count = f"{len(problems)} problem(s): " if len(problems) > 1 else ""
    return head + count + "; ".join(problems)


def describe_error(error, model):
    """One pydantic error entry as a phrase naming the key and the fix."""
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        known = list(model.model_fields) if len(error["loc"]) == 1 else []
        match = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
        return f"unknown option '{loc}'" + (f" (did you mean '{match[0]}'?)" if match else "")
    if error["type"] == "missing":
        return f"missing option '{loc}'"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "assertion_error") and "input" in error:
        message += f", got {error['input']!r}"
    return f"'{loc}': {message}" if loc else message


# ---------------------------------------------------------------------- Click options
def option_name(name, field):
    """The option a field becomes: ``--lora-r`` for ``lora_r`` (``json_schema_extra={"cli": ...}`` renames)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return "--" + extra.get("cli", name).replace("_", "-")


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _scalar_type(annotation):
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(v) for v in typing.get_args(annotation)])
    return {int: int, float: float, str: str, bool: bool}.get(annotation, str)


def _list_item(annotation):
    """The item annotation of ``list[X]`` / ``tuple[X, ...]``, else ``None``."""
    if typing.get_origin(annotation) in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _split(value):
    return [part.strip() for part in str(value).split(",") if part.strip()]


def field_option(name, field):
    """The ``click.option`` decorator of one config field.

    Args:
        name: the field's name (the Click parameter keeps it).
        field: its pydantic ``FieldInfo``.

    Returns:
        A decorator adding the option to a command.
    """
    annotation = _unwrap_optional(field.annotation)
    flag = option_name(name, field)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    help_text = field.description or ""
    default = field.get_default(call_default_factory=True)
    common = {"help": help_text, "metavar": extra.get("metavar"), "show_default": default is not None}
    item = _list_item(annotation)
    if annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=default, **common)
    if item is not None:
        nested = _list_item(_unwrap_optional(item)) is not None
        show = ";".join(",".join(map(str, v)) for v in default) if nested else ",".join(map(str, default or ()))
        return click.option(flag, name, multiple=True, default=(), callback=_list_callback(nested, default),
                            **{**common, "show_default": show or False})
    return click.option(flag, name, type=_scalar_type(annotation), default=default, **common)


def _list_callback(nested, default):
    def convert(ctx, param, values):
        if not values:
            return default
        if nested:
            return [_split(v) for v in values]
        return [part for v in values for part in _split(v)]

    return convert


def click_options(config_class: type["StageConfig"], exclude: Iterable[str] = ()) -> Callable[[F], F]:
    """A decorator adding one Click option per field of ``config_class`` (in declaration order).

    Args:
        config_class: a :class:`StageConfig` subclass.
        exclude: field names that get no option.

    Returns:
        The decorator; the command receives each field under its field name.
    """
    fields = [(n, f) for n, f in config_class.model_fields.items() if n not in exclude]

    def decorate(command: F) -> F:
        for name, field in reversed(fields):
            command = field_option(name, field)(command)
        return command

    return decorate


def config_from_options(config_class: type[C], values: Mapping[str, Any],
                        exclude: Iterable[str] = ()) -> tuple[C, dict[str, Any]]:
    """Build ``config_class`` from a command's keyword arguments (its fields only).

    Args:
        config_class: the :class:`StageConfig` subclass the options came from.
        values: the command's ``**kwargs`` (other keys are ignored).
        exclude: fields not taken from ``values``.

    Returns:
        ``(config, rest)``: the config and the keyword arguments that are not its fields.

    Raises:
        ConfigError: an invalid value (one line, every problem).
    """
    names = set(config_class.model_fields) - set(exclude)
    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in names}
    rest = {k: v for k, v in values.items() if k not in names}
    return config_class(**given), rest
