"""Distillation from the full model (encslim.finetune.distill) on the shipped demo model, seeded, on CPU."""

import pytest

from encslim.demo.assets import DEMO_MODEL_DIR
from encslim.errors import ConfigError
from encslim.finetune.distill import teacher_kl
from encslim.finetune.train import finetune


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from encslim.demo.data import write_demo_data
    from encslim.prune.surgery import prune

    folder = tmp_path_factory.mktemp("distill")
    write_demo_data(folder / "data", seed=1, n_train=64, n_eval=8)
    prune(DEMO_MODEL_DIR, ["clip"], folder / "pruned", verify=False)
    return folder / "pruned", folder / "data" / "train.jsonl"


def test_distilled_student_is_closer_to_the_full_model_than_plain_lora(pruned, tmp_path):
    model, data = pruned
    plain = finetune(model, data, tmp_path / "plain", max_steps=15, lr=1e-3, batch_size=16, seed=0, merge=True)
    dist = finetune(model, data, tmp_path / "dist", max_steps=15, lr=1e-3, batch_size=16, seed=0, merge=True,
                    distill_from=str(DEMO_MODEL_DIR), distill_weight=0.5)
    assert plain["distill"] is None and dist["distill"]["stored"] == "full vocabulary"
    # 15 steps x 16 draw more than the 64 examples: the teacher ran once over all of them, up front
    assert (dist["distill"]["targets"], dist["distill"]["teacher_examples"]) == ("precomputed", 64)
    kl_plain = teacher_kl(tmp_path / "plain", DEMO_MODEL_DIR, data)
    kl_dist = teacher_kl(tmp_path / "dist", DEMO_MODEL_DIR, data)
    # measured: plain 0.0041, distilled 0.0026 (seed 0, the demo model with token budgets); tolerance: distilled
    # at most 75 % of plain
    assert kl_dist < 0.75 * kl_plain, (kl_dist, kl_plain)


def test_teacher_with_another_vocabulary_is_refused(pruned, tiny_model_dir, tmp_path):
    model, data = pruned
    with pytest.raises(ConfigError, match="another vocabulary"):
        finetune(model, data, tmp_path / "out", max_steps=1, distill_from=str(tiny_model_dir("A1")))


def test_teacher_targets_on_demand_equal_the_precomputed_ones(pruned):
    """A max_steps run that draws fewer examples than the file holds computes targets on demand (the
    teacher runs only on the examples drawn); they equal the ones computed up front."""
    import torch

    from encslim.finetune.config import FinetuneConfig
    from encslim.finetune.distill import compute_teacher_targets, samples_used
    from encslim.finetune.inputs import load_training_samples, model_examples
    from encslim.models.loading import load_model

    model, data = pruned
    student, processor, adapter = load_model(model)
    samples = load_training_samples(data, [data])
    examples = model_examples(student, processor, adapter, samples, "eval")

    def build(samples, t_processor, t_adapter, teacher):
        return model_examples(teacher, t_processor, t_adapter, samples, "eval")

    def targets(**options):
        config = FinetuneConfig(distill_from=str(DEMO_MODEL_DIR), **options)
        return compute_teacher_targets(DEMO_MODEL_DIR, samples, (student, processor, adapter, examples), config,
                                       build)

    lazy, full = targets(max_steps=2, batch_size=4), targets(max_steps=None, epochs=1.0)
    assert samples_used(FinetuneConfig(max_steps=2, batch_size=4), 64) == 8
    assert (lazy.mode, lazy.computed) == ("on demand", 0) and (full.mode, full.computed) == ("precomputed", 64)
    indices = [5, 17, 40]
    got, want = lazy.batch(indices), full.batch(indices)
    assert lazy.computed == 3  # only the examples drawn
    assert torch.equal(got["mask"], want["mask"])
    assert torch.allclose(got["logp"], want["logp"], atol=1e-5)
    assert lazy.batch([17]) is not None and lazy.computed == 3  # computed once


def test_a_short_run_runs_the_teacher_only_on_the_examples_it_draws(pruned, tmp_path):
    model, data = pruned
    summary = finetune(model, data, tmp_path / "out", max_steps=2, batch_size=4, seed=0,
                       distill_from=str(DEMO_MODEL_DIR))
    assert summary["distill"]["targets"] == "on demand"
    # 2 steps x 4 of the 64 examples, plus the one batch the data loader reads ahead (measured: 12)
    assert 1 <= summary["distill"]["teacher_examples"] <= 12
