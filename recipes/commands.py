"""CLI: ``encslim run`` and ``encslim recipes list|validate``."""

from collections.abc import Mapping
from pathlib import Path

import click


@click.command("run")
@click.argument("recipe", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--stage", "stages", multiple=True,
              help="Run only this stage (repeatable): data, rank, prune, finetune, export, bench.")
@click.option("--force", is_flag=True, help="Rerun the selected stages even if their inputs are unchanged.")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (default: the cores no other process keeps busy, or ENCSLIM_THREADS).")
def run_cmd(recipe: str, overrides: tuple[str, ...], stages: tuple[str, ...], force: bool, threads: int | None,
            encoders: Mapping[str, str] | None = None) -> None:
    """Run RECIPE (a YAML file) end to end; OVERRIDES are key.sub=value pairs."""
    from .runner import run_recipe
    from .stages import format_summary

    summary = run_recipe(_find(recipe), overrides=overrides, stages=stages, force=force, echo=click.echo,
                         threads=threads, encoders=encoders)
    click.echo(format_summary(summary))


@click.group("recipes")
def recipes_group() -> None:
    """List and validate recipes."""


@recipes_group.command("list")
def list_cmd() -> None:
    """List the recipes shipped with encslim."""
    from .schema import shipped_recipes

    for name, path in shipped_recipes().items():
        first = next((line for line in path.read_text().splitlines() if line.startswith("# encslim")), "")
        click.echo(f"{name:<32} {path}\n{'':<32} {first.lstrip('# ')}")


@recipes_group.command("validate")
@click.argument("files", nargs=-1, type=click.Path())
def validate_cmd(files: tuple[str, ...]) -> None:
    """Validate FILES (default: every shipped recipe)."""
    from .schema import load_recipe, shipped_recipes

    paths = [_find(f) for f in files] or list(shipped_recipes().values())
    for path in paths:
        load_recipe(path)
        click.echo(f"ok  {path}")


def _find(recipe: str) -> Path:
    """A recipe path, or the name of a shipped recipe."""
    from .schema import shipped_recipes

    path = Path(recipe)
    if path.exists():
        return path
    shipped = shipped_recipes()
    return shipped.get(path.stem, path) if path.suffix in ("", ".yaml") and path.parent == Path(".") else path
