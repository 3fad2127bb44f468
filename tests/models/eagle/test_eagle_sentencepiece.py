"""A tiny Eagle with a SentencePiece ``tokenizer.model`` and no ``tokenizer.json``, as the real NVEagle
folders ship their Vicuna/Llama tokenizer: it loads, its prompts follow ``tokenizer_image_token`` with
the BOS of the first chunk only, and it generates."""

import json
import shutil

import pytest
import torch

import encslim

from ...conftest import make_image

spm = pytest.importorskip("sentencepiece")  # in the test extra; the skip is for a bare checkout only

CORPUS = ["A chat between a curious user and an artificial intelligence assistant.",
          "The assistant gives helpful, detailed, and polite answers to the user's questions.",
          "USER: What colour is the shape? ASSISTANT: red green blue yellow 0 1 2 3 4 5 6 7 8 9"]


@pytest.fixture(scope="module")
def spm_eagle(tiny_eagle_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm") / "eagle"
    shutil.copytree(tiny_eagle_dir(("clip-448", "sam-1024")), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    corpus = folder.parent / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=3)
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    return folder


def test_sentencepiece_eagle_loads_and_generates(spm_eagle):
    model, processor, adapter = encslim.load_model(spm_eagle)
    tok = processor.tokenizer
    assert type(tok).__name__ == "LlamaTokenizer" and tok.bos_token_id == 1
    prompt = adapter.build_prompt(processor, "What colour is the shape?")
    ids = processor.prompt_ids(prompt)
    before, after = prompt.split("<image>")
    # tokenizer_image_token: the first chunk keeps its BOS, the second chunk's BOS is dropped
    assert ids[0] == 1 and ids.count(1) == 1
    assert ids == tok(before).input_ids + [-200] * 1024 + tok(after).input_ids[1:]
    batch = adapter.prepare_batch(processor, [make_image(1, 40), make_image(2, 60)], [prompt, prompt])
    with torch.no_grad():
        new = adapter.generate(model, None, batch, max_new_tokens=3)
    assert new.shape == (2, 3)
    assert all(isinstance(t, str) for t in processor.batch_decode(new))
