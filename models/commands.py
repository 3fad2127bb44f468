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
@click.option("--family", type=click.Choice(("native", "eagle", "eagle2", "imof", "cambrian", "deepseek_vl_hybrid")),
              default="native", show_default=True,
              help="native: encslim's own architecture; eagle: Eagle v1's original layout; eagle2: Eagle2's "
                   "(SigLIP + ConvNeXt, Qwen2); imof: I-MoF's (CLIP + DINOv2, LLaVA-1.5 layout); cambrian: "
                   "Cambrian-1's (SVA connector; its four encoders written to OUT/encoders/); "
                   "deepseek_vl_hybrid: transformers' DeepSeek-VL.")
@click.option("--fusion", default="channel_concat", show_default=True,
              help="native: channel_concat (A1), A2, sequence_concat (B) or cross_attention (C).")
@click.option("--encoders", default="clip,siglip,dinov2", show_default=True,
              help="native: comma-separated tiny backbones: clip, siglip, dinov2, convnext, sam.")
@click.option("--towers", default="clip-448,convnext-1024,sam-1024,det-1024,pix2struct-1024", show_default=True,
              help="eagle: comma-separated Eagle towers, in checkpoint order.")
@click.option("--text", default="llama", show_default=True, help="native: tiny LLM, llama or qwen2.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def create_tiny_cmd(out, family, fusion, encoders, towers, text, seed, overwrite):
    """Write a tiny random model folder to OUT (weights, processor, tokenizer)."""
    if family == "eagle":
        from .eagle.tiny import create_tiny_eagle, parse_tower_list

        create_tiny_eagle(out, towers=parse_tower_list(towers), seed=seed, overwrite=overwrite)
    elif family == "eagle2":
        from .eagle2 import create_tiny_eagle2

        create_tiny_eagle2(out, seed=seed, overwrite=overwrite)
    elif family == "imof":
        from .imof import create_tiny_imof

        create_tiny_imof(out, seed=seed, overwrite=overwrite)
    elif family == "cambrian":
        from .cambrian.tiny import create_tiny_cambrian

        paths = create_tiny_cambrian(out, seed=seed, overwrite=overwrite)
        click.echo(f"wrote {out}; its encoders are outside the checkpoint, as Cambrian's: pass "
                   + " ".join(f"--encoder {slot}={path}" for slot, path in paths.items()))
        return
    elif family == "deepseek_vl_hybrid":
        from .tiny import create_tiny_hybrid

        create_tiny_hybrid(out, seed=seed, overwrite=overwrite)
    else:
        from .tiny import create_tiny

        names = tuple(e.strip() for e in encoders.split(",") if e.strip())
        create_tiny(out, fusion=fusion, encoders=names, text=text, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {out}")
