"""A vllm stand-in whose `LLM.chat` samples like its token-id `generate` (tests.helpers.generation.FakeVLLM):
each conversation is rendered with the engine's tokenizer (or the `chat_template` the call passes) and
answered with fake samples drawn from the request's seed and the rendered ids alone. Every chat call is
logged in `events` and the engine's weights at that moment in `generated_with`, so a test can check which
weights each sampling call saw."""
from tests.helpers.generation import FakeVLLM

ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class ChatFakeVLLM(FakeVLLM):
    class LLM(FakeVLLM.LLM):
        def chat(self, messages, sampling_params, use_tqdm, add_generation_prompt, chat_template=None):
            tok = self.tokenizer()
            fields = sampling_params.fields
            self.calls.append(("chat", messages, fields, chat_template))
            self.events.append(("chat", len(messages)))
            self.generated_with.append({k: v.clone() for k, v in self.weights.items()})
            outputs = []
            for conversation in messages:
                text = tok.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                               add_generation_prompt=add_generation_prompt)
                outputs.append(self._sampled(tok(text, add_special_tokens=False)["input_ids"], fields))
            return outputs


def install(monkeypatch):
    """The stand-in installed as `vllm` (a test's `chat_vllm` fixture calls this), no engine built yet, the
    engine in this process. Returns FakeVLLM, whose `engines` lists every engine built."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm", ChatFakeVLLM)
    monkeypatch.setattr(FakeVLLM, "engines", [])
    monkeypatch.setenv(ENV, "0")
    return FakeVLLM
