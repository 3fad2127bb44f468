"""The planted-specialization benchmark (DESIGN §7): synthetic images whose answers are known.

Four categories mirror the study's:

* **OCR & Chart**: read a printed two-digit number, or the two-digit value printed under a bar.
  Glyphs are a 5x7 bitmap font at scale 2 (10x14 px) in a 128 px image, each stroke cell a 2x2
  checkerboard emboss (:func:`draw_embossed_digit`) that averages to the background in any
  downscaled view, so only a full-resolution encoder can read them. The two digits sit side by
  side in two 16x16 cells that one pooling window of the demo model's 8x8 token grid merges
  (1x2 at budget 0.5, 2x2 at 0.25): an average forgets which digit was left, so reading needs
  the full token grid too.
* **General**: the colour or the shape of one large object in the middle (colour questions
  can also be asked as 4-option MCQ items, off by default); it survives 4x token pooling.
* **Vision-centric**: count circles (1-5) or tell whether a coloured shape is left/right of, or
  above/below, the black square in the middle.
* **Knowledge**: answerable from the question text alone (sums of two numbers 1-4, simple facts);
  the image is an unrelated scene.

Everything is drawn with PIL without anti-aliasing from a ``random.Random`` seeded by
``(seed, split)``, so a seed gives byte-identical files. Answers are one word or number, scored
by exact match (``metric: exact``) or by the option letter (``metric: mcq``).
"""

import json
import logging
import random

from PIL import Image, ImageDraw

from ..errors import ConfigError
from ..files import atomic_output_dir

logger = logging.getLogger(__name__)

DEMO_CATEGORIES = ["OCR & Chart", "General", "Vision-centric", "Knowledge"]
IMAGE_SIZE = 128
GLYPH_SCALE = 2  # the emboss is a 2x2 checkerboard per font bit
# Share of each category in the training split; reading and the spatial tasks are the hard part.
TRAIN_MIX = {"OCR & Chart": 0.3, "General": 0.25, "Vision-centric": 0.3, "Knowledge": 0.15}
EVAL_MIX = {c: 0.25 for c in DEMO_CATEGORIES}

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
           "yellow": (235, 200, 20), "purple": (140, 40, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."

# 5x7 bitmap digits, one string of 5 bits per row.
GLYPHS = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}
GLYPH_W, GLYPH_H = 5 * GLYPH_SCALE, 7 * GLYPH_SCALE
COUNT_RADIUS = 9
# Where numbers are printed (top-left corner of the first digit, before a small jitter): each glyph
# stays inside one 16x16 cell of the full-resolution image (one token of an 8x8 grid), the second
# digit DIGIT_STEP px right of the first, in the next cell: columns 2 and 3, which a pooling window
# (1x2 or 2x2) merges. Offsets are even, so the checkerboard keeps its phase.
DIGIT_AT = (36, 48)
CHART_LABEL_AT = (36, 96)
DIGIT_STEP = 16

FACTS = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"), ("What is the capital of Spain?", "Madrid"),
    ("What is the opposite of up?", "down"), ("What is the opposite of hot?", "cold"),
    ("What is the opposite of left?", "right"), ("What is the opposite of yes?", "no"),
    ("What colour is grass?", "green"), ("What colour is the sky on a clear day?", "blue"),
    ("What colour is snow?", "white"), ("What colour is a ripe banana?", "yellow"),
    ("How many legs does a cat have?", "4"), ("How many legs does a bird have?", "2"),
    ("How many days are in a week?", "7"), ("How many sides does a triangle have?", "3"),
    ("Which day comes after Monday?", "Tuesday"), ("Which day comes before Sunday?", "Saturday"),
    ("Which animal says woof?", "dog"), ("Which animal says meow?", "cat"),
]


# ---------------------------------------------------------------------------------- drawing
def _canvas(rng):
    """A plain background with a light random tint."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(rng.randint(225, 255) for _ in range(3)))


def draw_shape(draw, shape, cx, cy, radius, colour):
    """Draw a filled shape centred at ``(cx, cy)`` inside a square of side ``2*radius``."""
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=colour)


def draw_embossed_digit(draw, x, y, digit, background, depth):
    """Draw a digit whose every stroke cell is a 2x2 checkerboard of dark and bright pixels.

    Each lit bit of the 5x7 font becomes a 2x2 cell ``[[dark, bright], [bright, dark]]`` with
    ``dark = background - depth`` and ``bright = background + depth``. The pattern has zero mean
    at the highest spatial frequency, so any downscaled view (32 px or less for the 128 px
    image) sees the plain background: the digit exists only at full resolution.
    """
    dark = tuple(max(0, c - depth) for c in background)
    bright = tuple(min(255, c + depth) for c in background)
    for row, bits in enumerate(GLYPHS[digit]):
        for col, bit in enumerate(bits):
            if bit == "1":
                x0, y0 = x + GLYPH_SCALE * col, y + GLYPH_SCALE * row
                draw.point([(x0, y0), (x0 + 1, y0 + 1)], fill=dark)
                draw.point([(x0 + 1, y0), (x0, y0 + 1)], fill=bright)


def _print_ground(rng):
    """A mid-grey, slightly tinted background and a strong emboss depth, both within 0..255."""
    grey = rng.randint(124, 132)
    background = tuple(grey + rng.randint(-4, 4) for _ in range(3))
    return background, rng.randint(110, 118)


def _place(rng, radius, taken, gap=3, tries=200):
    """A centre for a circle of ``radius`` that keeps ``gap`` px away from ``taken`` circles."""
    for _ in range(tries):
        cx = rng.randint(radius + 2, IMAGE_SIZE - radius - 3)
        cy = rng.randint(radius + 2, IMAGE_SIZE - radius - 3)
        if all((cx - x) ** 2 + (cy - y) ** 2 >= (radius + r + gap) ** 2 for x, y, r in taken):
            return cx, cy
    raise RuntimeError("could not place a shape; the image is too crowded")


# ---------------------------------------------------------------------------------- tasks
def print_number(draw, at, number, background, depth, rng):
    """Emboss the two digits of ``number`` (a string) side by side, the first at ``at`` plus a small even jitter."""
    x, y = at[0] + 2 * rng.randint(-1, 1), at[1] + 2 * rng.randint(0, 1)
    for i, digit in enumerate(number):
        draw_embossed_digit(draw, x + i * DIGIT_STEP, y, digit, background, depth)


def task_digit(rng):
    """OCR: one embossed two-digit number printed in the middle of the image."""
    background, depth = _print_ground(rng)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    number = str(rng.randint(10, 99))
    print_number(ImageDraw.Draw(img), DIGIT_AT, number, background, depth, rng)
    return img, "What number is printed in the image?", number, "OCR & Chart", "digit"


def task_chart(rng):
    """Chart: one coloured bar on an axis, its two-digit value printed (embossed) under it."""
    background, depth = _print_ground(rng)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(img)
    value = str(rng.randint(10, 99))
    base = CHART_LABEL_AT[1] - 5
    draw.line([(8, base), (IMAGE_SIZE - 8, base)], fill=(0, 0, 0), width=1)
    top = base - rng.randint(20, 80)
    draw.rectangle([44, top, 83, base - 1], fill=COLOURS[rng.choice(sorted(COLOURS))])
    print_number(draw, CHART_LABEL_AT, value, background, depth, rng)
    return img, "What value is written under the bar?", value, "OCR & Chart", "chart"


def _big_object(rng):
    img = _canvas(rng)
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    c = IMAGE_SIZE // 2
    draw_shape(ImageDraw.Draw(img), shape, c + rng.randint(-6, 6), c + rng.randint(-6, 6), rng.randint(30, 44),
               COLOURS[colour])
    return img, colour, shape


def task_colour(rng):
    """General: the colour of one large object."""
    img, colour, _ = _big_object(rng)
    return img, "What colour is the shape?", colour, "General", "colour"


def task_shape(rng):
    """General: the shape of one large object."""
    img, _, shape = _big_object(rng)
    return img, "What shape is shown in the image?", shape, "General", "shape"


def task_count(rng):
    """Vision-centric: count 1-5 separated circles of one size and colour."""
    img = _canvas(rng)
    draw = ImageDraw.Draw(img)
    count, colour = rng.randint(1, 5), COLOURS[rng.choice(sorted(COLOURS))]
    taken = []
    for _ in range(count):
        cx, cy = _place(rng, COUNT_RADIUS, taken, gap=6)
        taken.append((cx, cy, COUNT_RADIUS))
        draw_shape(draw, "circle", cx, cy, COUNT_RADIUS, colour)
    return img, "How many circles are there in the image?", str(count), "Vision-centric", "count"


def task_position(rng):
    """Vision-centric: is a coloured shape left/right of (or above/below) the black square in the middle."""
    img = _canvas(rng)
    draw = ImageDraw.Draw(img)
    colour, c = rng.choice(sorted(COLOURS)), IMAGE_SIZE // 2
    radius = rng.randint(12, 16)
    offset = rng.choice((-1, 1)) * rng.randint(30, c - radius - 4)
    jitter = rng.randint(-12, 12)
    horizontal = rng.random() < 0.5
    cx, cy = (c + offset, c + jitter) if horizontal else (c + jitter, c + offset)
    draw_shape(draw, "square", c, c, 9, (0, 0, 0))
    draw_shape(draw, rng.choice(SHAPES), cx, cy, radius, COLOURS[colour])
    if horizontal:
        question = f"Is the {colour} shape left or right of the black square?"
        answer = "left" if offset < 0 else "right"
    else:
        question = f"Is the {colour} shape above or below the black square?"
        answer = "above" if offset < 0 else "below"
    return img, question, answer, "Vision-centric", "position"


def task_knowledge(rng):
    """Knowledge: a sum of two small numbers or a simple fact; the image is unrelated."""
    img = rng.choice((task_colour, task_count, task_position))(rng)[0]
    if rng.random() < 0.5:
        a, b = rng.randint(1, 4), rng.randint(1, 4)
        return img, f"What is {a} plus {b}?", str(a + b), "Knowledge", "sum"
    question, answer = rng.choice(FACTS)
    return img, question, answer, "Knowledge", "fact"


TASKS = {
    "OCR & Chart": (task_digit, task_digit, task_chart),
    "General": (task_colour, task_shape),
    "Vision-centric": (task_count, task_position),
    "Knowledge": (task_knowledge,),
}


def _as_mcq(rng, question, answer, choices):
    """Turn an open colour question into a 4-option MCQ; return ``(options, letter)``."""
    wrong = rng.sample([c for c in choices if c != answer], 3)
    texts = wrong + [answer]
    rng.shuffle(texts)
    options = {letter: text for letter, text in zip("ABCD", texts)}
    return options, "ABCD"[texts.index(answer)]


# ---------------------------------------------------------------------------------- samples
def _category_plan(n, mix, rng):
    """Exactly ``int(n * share)`` samples per category (remainder to the first listed), shuffled."""
    names = [c for c in DEMO_CATEGORIES if c in mix]
    total = sum(mix[c] for c in names)
    counts = {c: int(n * mix[c] / total) for c in names}
    counts[names[0]] += n - sum(counts.values())
    plan = [c for c in names for _ in range(counts[c])]
    rng.shuffle(plan)
    return plan


def iter_samples(split, n, seed=0, mcq_share=0.0, categories=None):
    """Yield ``n`` samples of ``split`` (``"train"`` or ``"eval"``) one by one, as :func:`generate` lists them.

    Lazily, so a training loop can stream many more samples than it could hold in memory.
    ``categories`` restricts the stream to some categories (their shares renormalised).
    """
    if split not in ("train", "eval"):
        raise ConfigError(f"split '{split}' unknown; use 'train' or 'eval'")
    mix = TRAIN_MIX if split == "train" else EVAL_MIX
    if categories is not None:
        unknown = sorted(set(categories) - set(DEMO_CATEGORIES))
        if unknown or not categories:
            raise ConfigError(f"unknown demo categories {unknown}; choose from {', '.join(DEMO_CATEGORIES)}")
        mix = {c: mix[c] for c in categories}
    rng = random.Random(f"encslim-demo-{seed}-{split}-{'|'.join(sorted(mix))}")
    for i, category in enumerate(_category_plan(n, mix, rng)):
        img, question, answer, category, task = rng.choice(TASKS[category])(rng)
        options, metric = {}, "exact"
        if task == "colour" and rng.random() < mcq_share:
            options, answer = _as_mcq(rng, question, answer, sorted(COLOURS))
            metric = "mcq"
        yield {"id": f"{split}-{i:05d}", "image": img, "question": question, "answer": answer,
               "category": category, "metric": metric, "options": options, "task": task}


def generate(split, n, seed=0, mcq_share=0.0):
    """Make ``n`` samples of ``split`` (``"train"`` or ``"eval"``) in memory.

    Args:
        split: ``"train"`` (OCR-heavy mix) or ``"eval"`` (equal categories).
        n: number of samples.
        seed: the seed; ``(seed, split, n)`` fixes every pixel and word.
        mcq_share: share of colour questions asked as 4-option MCQ (default none: matching a colour
            to an option letter is too hard for the tiny demo model trained in minutes).

    Returns:
        A list of dicts: ``id, image (PIL), question, answer, category, metric, options, task``.

    Raises:
        ConfigError: unknown split.
    """
    return list(iter_samples(split, n, seed, mcq_share))


def to_samples(records):
    """Turn :func:`generate` records into :class:`encslim.data.samples.Sample` objects."""
    from ..data.samples import Sample

    return [Sample(id=r["id"], question=r["question"], answers=[r["answer"]], image=r["image"],
                   options=dict(r["options"]), category=r["category"], metric=r["metric"],
                   source=f"demo:{r['id']}", dataset="demo") for r in records]


def demo_corpus():
    """Every text the demo uses (questions, answers, instructions), to train a tokenizer on."""
    lines = [SHORT_ANSWER, MCQ_INSTRUCTION, "Question: Options: Hint:", "A. B. C. D.",
             "Answer the question directly.", "Please select the correct answer from the options above."]
    lines += [q for q, _ in FACTS] + [a for _, a in FACTS]
    lines += [f"What is {a} plus {b}?" for a in range(1, 5) for b in range(1, 5)]
    lines += ["What number is printed in the image?", "How many circles are there in the image?",
              "What colour is the shape?", "What shape is shown in the image?"]
    lines += ["What value is written under the bar?"]
    lines += [f"Is the {a} shape left or right of the black square? above or below" for a in COLOURS]
    lines += list(COLOURS) + list(SHAPES) + ["left right above below"] + [str(d) for d in range(10)]
    return lines


def _record(sample, image_path):
    row = {"id": sample["id"], "image": image_path, "question": sample["question"], "answer": sample["answer"],
           "category": sample["category"], "metric": sample["metric"]}
    if sample["options"]:
        row["options"] = sample["options"]
    return row


def _llava_record(sample, image_path):
    prompt = sample["question"]
    if sample["options"]:
        options = "\n".join(f"{k}. {v}" for k, v in sample["options"].items())
        prompt = f"{prompt}\n{options}\n{MCQ_INSTRUCTION}"
    else:
        prompt = f"{prompt}\n{SHORT_ANSWER}"
    return {"id": sample["id"], "image": image_path, "category": sample["category"],
            "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                              {"from": "gpt", "value": sample["answer"]}]}


def write_demo_data(out, seed=0, n_train=6000, n_eval=400, overwrite=False):
    """Write the demo benchmark to ``out`` atomically.

    Layout: ``train.jsonl``, ``train_llava.json`` (LLaVA conversations), ``eval.jsonl``,
    ``images/{train,eval}-NNNNN.png`` and ``demo_data.json`` (seed, sizes, counts per category).

    Args:
        out: output folder (must not exist unless ``overwrite``).
        seed: data seed.
        n_train: training samples (at least 4).
        n_eval: evaluation samples (at least 4).
        overwrite: replace an existing ``out``.

    Returns:
        The summary dict written to ``demo_data.json``.

    Raises:
        ConfigError: sizes below 4. OutputExistsError: ``out`` exists.
    """
    if n_train < 4 or n_eval < 4:
        raise ConfigError(f"--n-train and --n-eval must be at least 4 (got {n_train}, {n_eval})")
    summary = {"seed": seed, "image_size": IMAGE_SIZE, "glyph_px": [GLYPH_W, GLYPH_H],
               "categories": DEMO_CATEGORIES, "counts": {}}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        for split, n in (("train", n_train), ("eval", n_eval)):
            samples = generate(split, n, seed)
            rows, llava = [], []
            for s in samples:
                rel = f"images/{s['id']}.png"
                s["image"].save(tmp / rel, compress_level=1)
                rows.append(_record(s, rel))
                llava.append(_llava_record(s, rel))
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            if split == "train":
                (tmp / "train_llava.json").write_text(json.dumps(llava, indent=1) + "\n", encoding="utf-8")
            summary["counts"][split] = {c: sum(s["category"] == c for s in samples) for c in DEMO_CATEGORIES}
        (tmp / "demo_data.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote demo data to %s: %s", out, summary["counts"])
    return summary


__all__ = ["DEMO_CATEGORIES", "IMAGE_SIZE", "generate", "iter_samples", "to_samples", "demo_corpus", "write_demo_data",
           "draw_embossed_digit", "draw_shape", "print_number"]
