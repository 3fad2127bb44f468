"""The study's 15 benchmarks, by their VLMEvalKit names: category, metric and reported score.

The study (arXiv 2507.03262) groups its benchmarks into four task categories:

==============  =============================================================
category        benchmarks (VLMEvalKit dataset names)
==============  =============================================================
General         GQA_TestDev_Balanced, MMBench_DEV_EN, MME, SEEDBench_IMG
Knowledge       AI2D_TEST, MathVista_MINI, ScienceQA_TEST, MMMU_DEV_VAL
OCR & Chart     DocVQA_VAL, ChartQA_TEST, OCRBench, TextVQA_VAL
Vision-centric  CV-Bench (also CV-Bench-2D / CV-Bench-3D), MMVP, RealWorldQA
==============  =============================================================

A data file whose stem is one of these names (case-insensitive, e.g. ``MMBench_DEV_EN.tsv``)
gets the benchmark's category and metric automatically, unless the file gives ``category`` /
``l2-category`` / ``metric`` columns itself (VLMEvalKit's own MME and OCRBench files do, and
their scoring needs those fine-grained categories). :func:`study_category` gives the study's
category of any sample from its ``dataset`` regardless.

Per-sample metrics (see :mod:`encslim.data.scorers`): rows with options are scored ``mcq``;
rows without options get :attr:`Benchmark.open_metric`. Free-form rows of MathVista and MMMU
(VLMEvalKit extracts their answers with an LLM judge, which encslim does not run) get the
lenient ``exact`` match.

Reported score (:func:`study_score`, 0-100), as the study scales them: accuracy x 100, except
MME = perception score (sum over the 10 perception categories of ``acc + acc+``, 0-2000) / 20,
OCRBench = final score (hits out of 1000) / 10, and MMBench = circular accuracy (a question
counts when every rotation of its options, ids ``i + k * 1e6``, is right).
"""

from collections import defaultdict
from dataclasses import dataclass

GENERAL, KNOWLEDGE, OCR_CHART, VISION = "General", "Knowledge", "OCR & Chart", "Vision-centric"
CATEGORIES = (GENERAL, KNOWLEDGE, OCR_CHART, VISION)

# VLMEvalKit vlmeval/dataset/utils/yorn.py::MME_rating super_cates['perception']
MME_PERCEPTION = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position",
                  "posters", "scene")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the study.

    Attributes:
        name: the VLMEvalKit dataset name (the TSV's stem).
        category: the study's task category.
        metric: the metric its rows are scored with (``mcq`` for multiple-choice sets).
        open_metric: the metric of rows without options.
        score: how the study reports it: ``accuracy``, ``circular``, ``mme_perception`` or ``ocrbench``.
    """

    name: str
    category: str
    metric: str
    open_metric: str
    score: str = "accuracy"

    def metric_for(self, has_options):
        """``mcq`` for a row with options, else :attr:`open_metric`."""
        return "mcq" if has_options else self.open_metric


def _mcq(name, category, score="accuracy"):
    return Benchmark(name, category, "mcq", "exact", score)


BENCHMARKS = (
    Benchmark("GQA_TestDev_Balanced", GENERAL, "strict", "strict"),
    _mcq("MMBench_DEV_EN", GENERAL, score="circular"),
    Benchmark("MME", GENERAL, "yesno", "yesno", score="mme_perception"),
    _mcq("SEEDBench_IMG", GENERAL),
    _mcq("AI2D_TEST", KNOWLEDGE),
    _mcq("MathVista_MINI", KNOWLEDGE),
    _mcq("ScienceQA_TEST", KNOWLEDGE),
    _mcq("MMMU_DEV_VAL", KNOWLEDGE),
    Benchmark("DocVQA_VAL", OCR_CHART, "anls", "anls"),
    Benchmark("ChartQA_TEST", OCR_CHART, "relaxed", "relaxed"),
    Benchmark("OCRBench", OCR_CHART, "ocrbench", "ocrbench", score="ocrbench"),
    Benchmark("TextVQA_VAL", OCR_CHART, "vqa", "vqa"),
    _mcq("CV-Bench", VISION),
    _mcq("CV-Bench-2D", VISION),
    _mcq("CV-Bench-3D", VISION),
    _mcq("MMVP", VISION),
    _mcq("RealWorldQA", VISION),
)
_BY_NAME = {b.name.lower(): b for b in BENCHMARKS}
# the 15 benchmarks of the study (CV-Bench's 2D/3D halves are aliases of CV-Bench)
STUDY_BENCHMARKS = tuple(b.name for b in BENCHMARKS if b.name not in ("CV-Bench-2D", "CV-Bench-3D"))


def benchmark_for(dataset):
    """The :class:`Benchmark` named ``dataset`` (a file stem, case-insensitive), or ``None``."""
    return _BY_NAME.get(str(dataset).strip().lower())


def study_category(dataset):
    """The study's category of a data set name, or ``None`` when it is not one of the benchmarks."""
    benchmark = benchmark_for(dataset)
    return benchmark.category if benchmark else None


def study_score(dataset, scores, categories=None, ids=None, images=None):
    """The benchmark's score as the study reports it, 0-100.

    Args:
        dataset: a benchmark name (:func:`benchmark_for`); other names get accuracy x 100.
        scores: per-sample scores in ``[0, 1]``, in sample order.
        categories: per-sample categories (MME: its sub-task, e.g. ``existence``).
        ids: per-sample ids (MMBench: VLMEvalKit indices; rotations share ``id % 1e6``).
        images: per-sample image keys (MME: the two questions of an image share one).

    Returns:
        float, or ``None`` for no samples.

    Raises:
        ValueError: MME without ``categories``/``images``, MMBench without ``ids``, or lengths
            that differ.
    """
    scores = [float(s) for s in scores]
    if not scores:
        return None
    benchmark = benchmark_for(dataset)
    kind = benchmark.score if benchmark else "accuracy"
    for name, values in (("categories", categories), ("ids", ids), ("images", images)):
        if values is not None and len(values) != len(scores):
            raise ValueError(f"{len(values)} {name} for {len(scores)} scores")
    if kind == "mme_perception":
        if categories is None or images is None:
            raise ValueError("the MME perception score needs each sample's category and image")
        return mme_perception_score(scores, categories, images) / 20.0
    if kind == "circular":
        if ids is None:
            raise ValueError("MMBench's circular accuracy needs each sample's VLMEvalKit index")
        return circular_accuracy(scores, ids) * 100.0
    if kind == "ocrbench":
        # VLMEvalKit's "Final Score Norm": hits / 10 on its 1000 questions, i.e. the hit rate x 100
        return sum(1 for s in scores if s >= 1.0) / len(scores) * 100.0
    return sum(scores) / len(scores) * 100.0


def mme_perception_score(scores, categories, images):
    """VLMEvalKit ``yorn.py::MME_rating`` perception total, 0-2000.

    Per perception category: ``acc`` = mean correctness x 100 and ``acc+`` = share of images
    whose two questions are both right x 100 (VLMEvalKit multiplies the first two scores of an
    image); the total sums ``acc + acc+`` over the categories present.
    """
    by_category = defaultdict(lambda: defaultdict(list))
    for s, c, img in zip(scores, categories, images):
        by_category[str(c)][img].append(float(s))
    total = 0.0
    for category in MME_PERCEPTION:
        groups = by_category.get(category)
        if not groups:
            continue
        flat = [s for group in groups.values() for s in group]
        plus = [group[0] * group[1] if len(group) > 1 else group[0] for group in groups.values()]
        total += 100.0 * sum(flat) / len(flat) + 100.0 * sum(plus) / len(plus)
    return total


def circular_accuracy(scores, ids):
    """VLMEvalKit ``multiple_choice.py::mcq_circular_eval``: a question (``g_index = index % 1e6``)
    counts when all its rotations are right; the mean over questions, 0-1."""
    groups = defaultdict(list)
    for s, i in zip(scores, ids):
        key = str(i).rsplit("/", 1)[-1]
        try:
            key = int(float(key)) % 1_000_000
        except ValueError:
            pass
        groups[key].append(float(s))
    return sum(1.0 for g in groups.values() if all(s >= 1.0 for s in g)) / len(groups)
