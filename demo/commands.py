"""CLI group ``encslim demo``: the planted-specialization data and the trained demo model."""

import json

import click


@click.group("demo")
def demo_group():
    """The planted-specialization demo: synthetic data and a tiny trained model."""


@demo_group.command("data")
@click.argument("out", type=click.Path())
@click.option("--seed", default=0, show_default=True, type=int, help="Data seed.")
@click.option("--n-train", default=6000, show_default=True, type=int, help="Training samples.")
@click.option("--n-eval", default=400, show_default=True, type=int, help="Evaluation samples.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def data_cmd(out, seed, n_train, n_eval, overwrite):
    """Write the demo benchmark (train.jsonl, train_llava.json, eval.jsonl, images/) to OUT."""
    from .data import write_demo_data

    summary = write_demo_data(out, seed=seed, n_train=n_train, n_eval=n_eval, overwrite=overwrite)
    click.echo(f"wrote {out}: " + json.dumps(summary["counts"]))


@demo_group.command("model")
@click.argument("out", type=click.Path())
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of data, weights and training.")
@click.option("--encoder-steps", default=None, type=int,
              help="Stage-1 steps: vision towers on their own (default: the shipped schedule).")
@click.option("--steps", default=None, type=int,
              help="Stage-2 steps: projector and LLM, towers frozen (default: the shipped schedule).")
@click.option("--n-eval", default=None, type=int, help="Evaluation samples (default: the shipped 400).")
@click.option("--threads", default=2, show_default=True, type=int, help="torch CPU threads.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def model_cmd(out, seed, encoder_steps, steps, n_eval, threads, overwrite):
    """Train the tiny four-encoder demo model from scratch on CPU and save it to OUT."""
    from .training import DemoTrainConfig, train_demo_model

    config = DemoTrainConfig(seed=seed, threads=threads)
    if encoder_steps is not None:
        config.encoder_steps = encoder_steps
    if steps is not None:
        config.steps = steps
    if n_eval is not None:
        config.n_eval = n_eval
    meta = train_demo_model(out, config, overwrite=overwrite)
    click.echo(f"wrote {out} in {meta['train_seconds']:.0f}s")
    for mask, acc in meta["accuracy"].items():
        cells = "  ".join(f"{k}={v:.2f}" for k, v in acc.items())
        click.echo(f"  {mask:>14}: {cells}")
