"""A run's training inputs: the data's samples, and a model's tokenized examples of them.

Shared by :mod:`encslim.finetune.train` (the run) and :mod:`encslim.finetune.distill` (the
teacher's examples, :func:`~encslim.finetune.distill.teacher_kl`), so that neither imports the other.
"""

from pathlib import Path


def data_paths(data):
    """The file paths in ``data`` (one path, a list of paths, or a list of samples: none).

    Args:
        data: a path, a list of paths, or a list of :class:`~encslim.data.samples.Sample`.

    Returns:
        list[Path] (empty for samples).
    """
    if isinstance(data, (str, Path)):
        return [Path(data)]
    items = list(data)
    return [Path(d) for d in items] if items and isinstance(items[0], (str, Path)) else []


def load_training_samples(data, paths):
    """The samples of ``data``: read from ``paths`` when it names files, else ``data`` itself.

    Args:
        data: as for :func:`data_paths`.
        paths: ``data_paths(data)``.

    Returns:
        list of samples.

    Raises:
        DataError: a file cannot be read (:func:`encslim.data.load.load_samples`).
    """
    if paths:
        from ..data.load import load_samples

        return load_samples(paths)
    return list(data)


def model_examples(model, processor, adapter, samples, prompt_format):
    """``samples`` tokenized for ``model`` (its image tokens and maximum length checked).

    Args:
        model, processor, adapter: a loaded model (:func:`encslim.models.loading.load_model`).
        samples: the samples, each with an image and an answer.
        prompt_format: ``eval`` or ``raw`` (see :func:`encslim.finetune.examples.question_text`).

    Returns:
        list of :class:`~encslim.finetune.examples.TrainExample`.

    Raises:
        DataError: see :func:`encslim.finetune.examples.build_examples`.
    """
    from .examples import build_examples

    expected = adapter.image_tokens(model.config)
    text_config = getattr(model.config, "text_config", model.config)
    max_length = getattr(text_config, "max_position_embeddings", None)
    return build_examples(samples, processor, adapter, adapter.image_token_id(model.config), expected,
                          prompt_format, max_length)
