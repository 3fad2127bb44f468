"""A tiny Eagle with a SentencePiece ``tokenizer.model`` and no ``tokenizer.json``, as the real NVEagle
folders ship their Vicuna/Llama tokenizer: it loads, its prompts follow ``tokenizer_image_token`` with
the BOS of the first chunk only, and it generates."""

import pytest
import torch

import encslim

from ...conftest import make_image, sentencepiece_eagle

pytest.importorskip("sentencepiece")  # in the test extra; the skip is for a bare checkout only


@pytest.fixture(scope="module")
def spm_eagle(tiny_eagle_dir, tmp_path_factory):
    return sentencepiece_eagle(tiny_eagle_dir(("clip-448", "sam-1024")), tmp_path_factory.mktemp("spm") / "eagle")


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
