"""CLI commands of the models package: ``inspect`` and ``create-tiny``."""

import json

import click


@click.command("inspect")
@click.argument("model_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(model_dir, as_json):
    """Show MODEL_DIR's encoder slots, fusion, parameters and vision FLOPs."""
    from .inspect import format_inspection, inspect_model

    info = inspect_model(model_dir)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))


@click.command("create-tiny")
@click.argument("out", type=click.Path())
@click.option("--fusion", default="channel_concat", show_default=True,
              help="channel_concat (A1), A2, sequence_concat (B) or cross_attention (C).")
@click.option("--encoders", default="clip,siglip,dinov2", show_default=True,
              help="Comma-separated tiny backbones: clip, siglip, dinov2, convnext, sam.")
@click.option("--text", default="llama", show_default=True, help="Tiny LLM: llama or qwen2.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def create_tiny_cmd(out, fusion, encoders, text, seed, overwrite):
    """Write a tiny random native model folder to OUT (weights, processor, tokenizer)."""
    from .tiny import create_tiny

    names = tuple(e.strip() for e in encoders.split(",") if e.strip())
    create_tiny(out, fusion=fusion, encoders=names, text=text, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {out}")
