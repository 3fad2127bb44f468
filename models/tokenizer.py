"""Tokenizers built locally (no downloads): a small byte-level BPE trained on a given corpus.

Byte-level means any text can be encoded; digits are split one per token, so numbers in
answers (the OCR tasks of the demo) are spelled digit by digit.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

# A generic corpus for tiny models: prompt words, option letters, numbers, colours, shapes.
BASE_CORPUS = [
    "USER: ASSISTANT: Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Question: Options: Hint: A. B. C. D. E. F. yes no left right above below",
    "What colour is the shape? red green blue yellow purple orange black white gray",
    "What shape is it? circle square triangle star cross diamond bar chart value",
    "How many objects are there? 0 1 2 3 4 5 6 7 8 9 10 one two three four five",
    "What number is printed? Which is larger? What is the capital of France? Paris",
    "the a an of in on is are what which where how many number text read",
]


def build_tokenizer(corpus=(), vocab_size=512):
    """Train a byte-level BPE on ``BASE_CORPUS + corpus``; return a ``PreTrainedTokenizerFast``.

    The ``<image>`` placeholder, ``<pad>``, ``<s>``, ``</s>`` and ``<unk>`` are special tokens.
    Padding is on the left, so batched greedy generation continues every row from its end.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(BASE_CORPUS) + list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
