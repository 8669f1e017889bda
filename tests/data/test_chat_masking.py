import pytest

from alignkit.data.chat import IGNORE, TemplateError, tokenize_conversation, tokenize_prompt
from alignkit.models.templates import TEMPLATES
from alignkit.models.tiny import tiny_tokenizer

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "more please"},
    {"role": "assistant", "content": "ok then"},
]
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "inst": "</s>"}


def trained_text(tok, r):
    return tok.decode([i for i, l in zip(r.input_ids, r.labels) if l != IGNORE])


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_assistant_turn_and_its_end_token_are_trained(template):
    tok = tiny_tokenizer(template)
    r = tokenize_conversation(tok, CHAT)
    text = trained_text(tok, r)
    assert "hello world" in text and "ok then" in text
    # nothing from the user or system turns is trained
    assert "hi" not in text.replace("hello", "") and "more please" not in text and "Be brief" not in text
    eot = tok.convert_tokens_to_ids(END_OF_TURN[template])
    trained_ids = [i for i, l in zip(r.input_ids, r.labels) if l != IGNORE]
    assert trained_ids.count(eot) == 2, "each assistant turn's end-of-turn token is a target"
    # labels equal the input ids where trained
    assert all(l in (IGNORE, i) for i, l in zip(r.input_ids, r.labels))


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_no_doubled_bos(template):
    tok = tiny_tokenizer(template)
    r = tokenize_conversation(tok, CHAT)
    bos = tok.bos_token_id
    expected = 0 if template == "chatml" else 1  # the llama3/inst templates render one BOS
    assert r.input_ids.count(bos) == expected
    assert tokenize_prompt(tok, CHAT[:2]).count(bos) == expected


def test_bos_added_when_tokenizer_wants_one_and_template_lacks_it():
    tok = tiny_tokenizer("llama3")
    tok.chat_template = TEMPLATES["llama3"].replace("{{ bos_token }}", "")
    r = tokenize_conversation(tok, CHAT)
    assert r.input_ids[0] == tok.bos_token_id and r.input_ids.count(tok.bos_token_id) == 1
    assert r.labels[0] == IGNORE


def test_last_assistant_only():
    tok = tiny_tokenizer("chatml")
    text = trained_text(tok, tokenize_conversation(tok, CHAT, train_on="last_assistant"))
    assert "ok then" in text and "hello world" not in text


def test_prompt_is_a_prefix_of_the_training_sequence():
    tok = tiny_tokenizer("chatml")
    full = tokenize_conversation(tok, CHAT[:3])
    prompt = tokenize_prompt(tok, CHAT[:2])
    assert full.input_ids[: len(prompt)] == prompt
    assert all(l == IGNORE for l in full.labels[: len(prompt)])
    assert full.labels[len(prompt)] != IGNORE


def test_template_that_rewrites_history_is_refused():
    tok = tiny_tokenizer("chatml")
    # renders the number of messages first: every prefix differs from the full text
    tok.chat_template = "{{ messages|length }}" + TEMPLATES["chatml"]
    with pytest.raises(TemplateError, match="prefixes"):
        tokenize_conversation(tok, CHAT)


def test_no_assistant_turn_is_an_error():
    tok = tiny_tokenizer("chatml")
    with pytest.raises(TemplateError, match="no assistant"):
        tokenize_conversation(tok, CHAT[:2])
