"""Native folders carry a chat template of their own prompt format (chat_template.jinja), so chat servers (vLLM's
OpenAI endpoint) build exactly the prompt encslim's processor builds."""

import jinja2
import pytest
from transformers import AutoTokenizer

from encslim.models.families.native.processing import CHAT_TEMPLATE_FILE, EncslimProcessor, chat_template

QUESTION = "What colour is the square?\nA. red\nB. blue\nAnswer with the option's letter from the given choices."


def user_turn(text, image=True):
    return [{"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}]


def test_a_tiny_folder_renders_the_processors_prompt(tiny_model_dir):
    folder = tiny_model_dir("A1", ("clip", "siglip"))
    processor = EncslimProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (folder / CHAT_TEMPLATE_FILE).read_text() == chat_template()
    assert tokenizer.apply_chat_template(user_turn(QUESTION), add_generation_prompt=True, tokenize=False) == \
        processor.build_prompt(QUESTION) == f"USER: <image>\n{QUESTION}\nASSISTANT:"
    # the same token ids as the processor gives (its <image> expanded there, one placeholder here)
    ids = tokenizer.apply_chat_template(user_turn(QUESTION), add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    assert ids == processor.tokenizer(processor.build_prompt(QUESTION))["input_ids"]
    assert tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                         tokenize=False) == processor.build_prompt(QUESTION, with_image=False)


def test_turns_and_the_generation_prompt():
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(chat_template())
    chat = user_turn("Hi?") + [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And?"}]
    assert template.render(messages=chat, eos_token="</s>", add_generation_prompt=True) == \
        "USER: <image>\nHi?\nASSISTANT: Yes.</s>USER: And?\nASSISTANT:"
    assert template.render(messages=user_turn("Hi?"), eos_token="</s>", add_generation_prompt=False) == \
        "USER: <image>\nHi?"


def test_another_prompt_template_and_placeholder(tmp_path, tiny_model_dir):
    source = EncslimProcessor.from_pretrained(tiny_model_dir("A1", ("clip", "siglip")))
    processor = EncslimProcessor(source.tokenizer, source.encoders, total_image_tokens=source.total_image_tokens,
                                 prompt_template="<s>[INST] {prompt} [/INST] {{ok}}")
    processor.tokenizer.chat_template = None
    processor.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.apply_chat_template(user_turn(QUESTION), add_generation_prompt=True, tokenize=False) == \
        processor.build_prompt(QUESTION) == f"<s>[INST] <image>\n{QUESTION} [/INST] {{ok}}"
    with pytest.raises(Exception, match="this prompt format has user and assistant turns only, not system"):
        tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}] + user_turn("Hi?"), tokenize=False)


def test_a_tokenizers_own_template_is_kept(tmp_path, tiny_model_dir):
    processor = EncslimProcessor.from_pretrained(tiny_model_dir("A1", ("clip", "siglip")))
    own = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    processor.tokenizer.chat_template = own
    processor.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == own


def test_prune_carries_the_template(tmp_path, tiny_model_dir):
    from encslim.prune.surgery import prune

    full = tiny_model_dir("A1", ("clip", "siglip", "dinov2"))
    prune(full, ["dinov2"], tmp_path / "pruned")
    assert (tmp_path / "pruned" / CHAT_TEMPLATE_FILE).read_text() == (full / CHAT_TEMPLATE_FILE).read_text()
    processor = EncslimProcessor.from_pretrained(tmp_path / "pruned")
    assert processor.slot_names == ["clip", "siglip"]
    assert AutoTokenizer.from_pretrained(tmp_path / "pruned").apply_chat_template(
        user_turn(QUESTION), add_generation_prompt=True, tokenize=False) == processor.build_prompt(QUESTION)
