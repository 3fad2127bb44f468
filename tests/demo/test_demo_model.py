"""The shipped demo model: its accuracy, its planted specialization (an encoder and a token budget), and that it
retrains the same."""

import json

import pytest

from encslim.demo.data import DEMO_CATEGORIES, generate
from encslim.demo.evaluate import evaluate_demo, mask_label
from encslim.demo.assets import DEMO_MODEL_DIR, demo_model_path

FULL_TARGETS = {"OCR & Chart": 0.80, "General": 0.90, "Vision-centric": 0.90, "Knowledge": 0.90}
OCR_CHANCE = 1 / 90  # answers are two-digit numbers, 10-99
BUDGETS = (0.5, 0.25)
OCR_DROP = 0.3  # pooled, a number's two digits share a window: their order is lost (shipped: 1.00 -> 0.57, 0.58)
GENERAL_POOLED = 0.85  # one large object survives pooling (shipped: 0.96 -> 0.91, 0.94)


@pytest.fixture(scope="module")
def meta():
    return json.loads((demo_model_path() / "demo_meta.json").read_text())


@pytest.fixture(scope="module")
def demo(meta):
    import torch

    from encslim.models.loading import load_model

    torch.set_num_threads(1)
    model, processor, adapter = load_model(demo_model_path())
    return model, processor, adapter


@pytest.fixture(scope="module")
def accuracy(demo, meta):
    """Accuracy on the shipped seed's eval split, full model and each single slot masked."""
    model, processor, _ = demo
    samples = generate("eval", meta["config"]["n_eval"], meta["seed"])
    masks = [()] + [(s,) for s in model.slot_names]
    return {mask_label(m): acc for m, acc in evaluate_demo(model, processor, samples, masks).items()}


@pytest.fixture(scope="module")
def budget_accuracy(demo, meta):
    """The full model's accuracy on the shipped seed's eval split under each pool budget."""
    from encslim.models.tokens import TokenBudget

    model, processor, _ = demo
    samples = generate("eval", meta["config"]["n_eval"], meta["seed"])
    return {b: evaluate_demo(model, processor, samples, token_budget=TokenBudget("pool", b))[()] for b in BUDGETS}


def test_shipped_folder_is_a_small_four_encoder_a1_model(demo):
    model, _, adapter = demo
    assert demo_model_path() == DEMO_MODEL_DIR
    assert model.slot_names == ["siglip", "vit", "convnext", "clip"]
    assert model.config.fusion_class == "A1"
    assert all(s.removal_exact for s in adapter.slots(model.config))
    assert {s.name: s.image_size for s in adapter.slots(model.config)} == {
        "siglip": 32, "vit": 128, "convnext": 32, "clip": 16}
    names = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
            "demo_meta.json", "loss.png"} <= names
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size < 12 * 2**20


def test_full_model_meets_the_accuracy_targets(accuracy, meta):
    full = accuracy["full"]
    for category, target in FULL_TARGETS.items():
        assert full[category] >= target, (category, full)
    # the shipped meta reports what the model does
    for category in DEMO_CATEGORIES:
        assert abs(meta["accuracy"]["full"][category] - full[category]) <= 0.02


def test_masking_the_high_resolution_encoder_drops_reading_to_chance(accuracy):
    assert accuracy["-vit"]["OCR & Chart"] <= OCR_CHANCE + 0.1, accuracy["-vit"]
    # it is the only reader: any other single mask keeps reading
    for slot in ("siglip", "convnext", "clip"):
        assert accuracy[f"-{slot}"]["OCR & Chart"] >= FULL_TARGETS["OCR & Chart"] - 0.1, (slot, accuracy)
    # text-only questions do not need any encoder
    for label, acc in accuracy.items():
        assert acc["Knowledge"] >= 0.9, (label, acc)


def test_the_written_demo_files_score_exactly_as_the_generated_records(demo, meta, accuracy, tmp_path):
    """`demo data` files read by data.load (PNG images, JSONL rows) give the accuracies of the records."""
    from encslim.data.load import load_samples
    from encslim.demo.data import write_demo_data
    from encslim.bench.evaluate import EvalSettings, evaluate

    model, processor, adapter = demo
    write_demo_data(tmp_path / "d", seed=meta["seed"], n_train=4, n_eval=meta["config"]["n_eval"])
    samples = load_samples([tmp_path / "d" / "eval.jsonl"])
    result = evaluate(demo, samples, mask_sets=[frozenset(), frozenset({"vit"})],
                      settings=EvalSettings(batch_size=50, max_new_tokens=6))
    for mask, label in ((frozenset(), "full"), (frozenset({"vit"}), "-vit")):
        got = result.accuracy(mask)
        assert {k: round(v, 4) for k, v in got.items()} == accuracy[label], (label, got)


def test_general_is_redundant_across_encoders(accuracy):
    full = accuracy["full"]["General"]
    drops = {s: full - accuracy[f"-{s}"]["General"] for s in ("siglip", "vit", "convnext", "clip")}
    assert min(drops.values()) <= 0.03, drops


def test_reading_needs_the_full_token_grid_while_general_survives_4x_pooling(demo, accuracy, budget_accuracy, meta):
    """The planted budget axis: a pooling window merges the two digits of a number (their order is lost), while
    one large object's colour and shape survive 2x2 pooling of the 8x8 grid (trained with nested budgets)."""
    model, processor, adapter = demo
    assert model.config.token_grids() == [(8, 8)] and processor.num_image_tokens() == 64
    full = accuracy["full"]
    for b, acc in budget_accuracy.items():
        assert acc["OCR & Chart"] <= full["OCR & Chart"] - OCR_DROP, (b, acc)
        assert acc["General"] >= GENERAL_POOLED and acc["Vision-centric"] >= GENERAL_POOLED, (b, acc)
        assert acc["Knowledge"] >= 0.9, (b, acc)
        # the shipped meta reports what the model does
        label = f"pool {b:g}"
        for category in DEMO_CATEGORIES:
            assert abs(meta["budget_accuracy"][label][category] - acc[category]) <= 0.02, (label, category)
    assert budget_accuracy[0.25]["General"] >= full["General"] - 0.05  # 4x fewer tokens, General as good
    assert meta["budget_accuracy"]["1"] == meta["accuracy"]["full"]


def test_retraining_from_the_seed_starts_the_same_loss_curve(meta):
    import torch

    from encslim.demo.training import DemoTrainConfig, build_demo_model, train_steps

    config = DemoTrainConfig(**meta["config"])
    torch.manual_seed(0)
    model, processor = build_demo_model(config.seed)
    losses = train_steps(model, processor, config, steps=3, progress=False)
    assert losses == pytest.approx(meta["first_losses"][:3], rel=1e-3)
    assert losses[2] < losses[0]


def test_cli_demo_model_trains_and_writes_the_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from encslim.cli import cli

    args = ["demo", "model", str(tmp_path / "m"), "--encoder-steps", "1", "--steps", "1", "--n-eval", "8", "--threads", "1"]
    monkeypatch.setattr("sys.argv", ["encslim", *args])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m" / "demo_meta.json").read_text())
    assert len(meta["losses"]) == 2 and set(meta["accuracy"]) == {
        "full", "-siglip", "-vit", "-convnext", "-clip"}
    assert (tmp_path / "m" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)
