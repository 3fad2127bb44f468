"""CLI command of the export package: ``encslim export MODEL --format F --out DIR``."""

import contextlib
import json
import sys
from pathlib import Path

import click

from ..options import click_options, config_from_options
from .config import ExportConfig


@click.command("export")
@click.argument("model_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Output folder (written atomically); with several --format, OUT/<format> each.")
@click_options(ExportConfig)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--ranking", type=click.Path(), default=None,
              help="Ranking folder (or ranking.json) for the model card's CUR/IG table.")
@click.option("--bench", type=click.Path(), default=None, help="Folder with bench.json for the model card.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(model_dir, out, overwrite, ranking, bench, as_json, encoders=None, **options):
    """Export MODEL_DIR as a deployable folder and verify it against the source.

    Every format setting is a field of ExportConfig (one declaration, shared with the recipes).

    \b
    An ONNX folder runs with onnxruntime alone:
      python -m encslim.export.ort_generate OUT --image photo.png --prompt "What is in the image?"
    """
    from ..models.loading import open_folder
    from . import export_model

    config, _ = config_from_options(ExportConfig, options)
    model_dir = open_folder(model_dir, encoders)  # config, family and every shard checked before any work
    # libraries print to stdout while saving (e.g. deepspeed, imported by accelerate); keep stdout for
    # the summary or the --json manifest
    with contextlib.redirect_stdout(sys.stderr):
        result = export_model(model_dir, out, config, overwrite=overwrite, ranking=ranking, bench=bench)
    several = len(config.formats) > 1
    manifests = result if several else {config.formats[0]: result}
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for fmt, manifest in manifests.items():
        click.echo(format_summary(manifest, fmt, Path(out) / fmt if several else out))


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
