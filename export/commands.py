"""CLI command of the export package: ``encslim export MODEL --format F --out DIR``."""

import contextlib
import json
import sys

import click

from ..models.registry import GENERIC_EXPORTS, export_formats

# every format: the generic ones, then each family's stock formats (from the registry's records)
FORMAT_NAMES = export_formats()
STOCK_NAMES = tuple(f for f in FORMAT_NAMES if f not in GENERIC_EXPORTS)
# options each of the stage's own formats takes beyond model_dir/out/overwrite/ranking/bench/atol
FORMAT_OPTIONS = {
    "hf": ("max_shard_size", "dtype"),
    "llava": ("max_shard_size",),
    "remote-code": ("max_shard_size", "dtype"),
    "onnx": (),
}
STOCK_OPTIONS = ("max_shard_size",)  # a family's stock format (encslim.export.stock)


@click.command("export")
@click.argument("model_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), default="hf", show_default=True,
              help=f"hf: transformers folder; {' / '.join(STOCK_NAMES)}: stock transformers classes; remote-code: "
                   "loads without encslim; onnx: onnxruntime graphs.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--ranking", type=click.Path(), default=None,
              help="Ranking folder (or ranking.json) for the model card's CUR/IG table.")
@click.option("--bench", type=click.Path(), default=None, help="Folder with bench.json for the model card.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--dtype", type=click.Choice(("auto", "float32", "bfloat16", "float16")), default="auto",
              show_default=True, help="Weight dtype (hf, remote-code); ONNX and LLaVA checks use float32.")
@click.option("--atol", type=float, default=None,
              help="Largest allowed difference against the source (default per format: 1e-5 hf/remote-code, "
                   f"1e-4 {'/'.join((*STOCK_NAMES, 'onnx'))}).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(model_dir, fmt, out, overwrite, ranking, bench, max_shard_size, dtype, atol, as_json, encoders=None):
    """Export MODEL_DIR as a deployable folder and verify it against the source.

    \b
    An ONNX folder runs with onnxruntime alone:
      python -m encslim.export.ort_generate OUT --image photo.png --prompt "What is in the image?"
    """
    from ..models.loading import open_folder
    from . import exporter

    model_dir = open_folder(model_dir, encoders)  # config, family and every shard checked before any work
    options = {"overwrite": overwrite, "ranking": ranking, "bench": bench}
    given = {"max_shard_size": max_shard_size, "dtype": dtype}
    options.update({k: given[k] for k in FORMAT_OPTIONS.get(fmt, STOCK_OPTIONS)})
    if atol is not None:
        options["atol"] = atol
    # libraries print to stdout while saving (e.g. deepspeed, imported by accelerate); keep stdout for
    # the summary or the --json manifest
    with contextlib.redirect_stdout(sys.stderr):
        manifest = exporter(fmt)(model_dir, out, **options)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    click.echo(format_summary(manifest, fmt, out))


def format_summary(manifest, fmt, out):
    """A short human summary: where it went, what was checked, how many files."""
    lines = [f"exported {manifest['source']['path']} -> {out} (format {fmt})"]
    for record in (manifest.get("verification") or {}).get("export", []):
        name = f"{record['graph']}: {record['output']}" if "graph" in record else record["output"]
        status = "matched" if record["matched"] else "NOT matched"
        lines.append(f"  {name:<40} max |diff| {record['max_abs_diff']:.3g} (atol {record['atol']:g}) {status}")
    lines.append(f"  {len(manifest.get('files', {}))} files + encslim_manifest.json; model card: {out}/README.md")
    serve = (manifest.get("export") or {}).get("serve")
    if serve is None and fmt == "hf":  # a folder encslim's vLLM plugin serves (Family.serving)
        from ..models.vllm_plugin import serve_command
        serve = serve_command(out)
    if serve:  # formats a serving engine loads name the command (e.g. llava: its image processor backend)
        lines.append(f"  serve with vLLM: {serve}")
    return "\n".join(lines)
