"""CLI commands of the models package: ``inspect`` and ``create-tiny``.

``create-tiny``'s ``--family`` choices and its family options are generated from the registry's
records (:class:`~encslim.models.registry.TinyOption`) each time the command is built
(:func:`create_tiny_command`), so a new family needs no edit here.
"""

import json

import click

from ..errors import ConfigError
from .registry import families, resolve


@click.command("inspect")
@click.argument("model_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(model_dir, as_json, encoders=None):
    """Show MODEL_DIR's encoder slots, fusion, parameters and vision FLOPs."""
    from .inspect import format_inspection, inspect_model

    info = inspect_model(model_dir, encoders)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))


def _tiny_options():
    """``{option name: (default, help, [family, ...])}`` over every registered family."""
    options = {}
    for family in families().values():
        for opt in family.tiny_options:
            default, help_, owners = options.setdefault(opt.name, (opt.default, opt.help, []))
            if default != opt.default:
                raise ValueError(f"create-tiny option --{opt.name}: families disagree on its default")
            owners.append(family.name)
    return options


def _create_tiny(ctx, out, family, seed, overwrite, **options):
    record = families()[family]
    takes = {opt.name for opt in record.tiny_options}
    given = [name for name in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    foreign = [f"--{name.replace('_', '-')}" for name in given if name not in takes]
    if foreign:
        raise ConfigError(f"create-tiny --family {family} takes no {', '.join(foreign)}; "
                          f"see encslim create-tiny --help for which family each option belongs to")
    note = resolve(record.tiny)(out, seed=seed, overwrite=overwrite,
                                **{name: value for name, value in options.items() if name in takes})
    click.echo(f"wrote {out}" + (f"; {note}" if note else ""))


def create_tiny_command():
    """The ``create-tiny`` command as the registry stands now (the CLI builds it when it is invoked, so a
    family registered after start-up, by a plugin or a test, is offered too)."""
    records = families()
    family_help = "; ".join(f"{name}: {f.description}" for name, f in records.items())
    params = [
        click.Argument(["out"], type=click.Path()),
        click.Option(["--family"], type=click.Choice(tuple(records)), default="native", show_default=True,
                     help=family_help + "."),
    ]
    for name, (default, help_, owners) in _tiny_options().items():
        params.append(click.Option([f"--{name.replace('_', '-')}", name], default=default, show_default=True,
                                   help=f"{', '.join(owners)}: {help_}"))
    params += [click.Option(["--seed"], default=0, show_default=True, type=int),
               click.Option(["--overwrite"], is_flag=True, help="Replace OUT if it exists.")]
    return click.Command("create-tiny", callback=click.pass_context(_create_tiny), params=params,
                         help="Write a tiny random model folder to OUT (weights, processor, tokenizer).")

