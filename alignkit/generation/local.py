"""Generation with a transformers causal LM loaded in this process.

Prompts are sorted by length into batches (less padding), padded on the left and decoded by
`model.generate` with its KV cache. Two small hooks replace the stock ones:

* `_EndTracker` ends a row at EOS or a stop string and records how many tokens the row had
  produced then, so we never have to guess the end from padding (pad may equal EOS).
* `_SeededSampler` draws each row with the row's own random generator, so a seeded prompt
  samples the same text whatever other prompts share its batch.

When a batch holds several samples of one prompt (n > 1), the prompt's forward pass runs once and
its KV cache is copied to each of them (`_shared_prompt_cache`).

`top_logprobs` are those of the model's own distribution (before temperature and top-k/top-p),
like vLLM's default. In each `top_logprobs` dict the first entry is the token that was generated;
the others are the `params.logprobs` most likely tokens. With `params.return_tokens`, a completion
also carries every generated token id and, in `logprobs`, each one's log-probability under the
distribution it was drawn from (after temperature and top-k/top-p; the raw one when greedy), as
`Completion` defines them.

`stream_chat` / `stream_complete` hand out text while `model.generate` runs (in a helper thread,
its tokens passed through a transformers streamer, `_TokenQueue`). Each row's text is decoded whole
at every step and only the part that cannot change any more is sent (`streamable_text`): nothing
from a stop string on, no tail that could still become one, no character whose UTF-8 bytes have
not all arrived. The last delta is the rest of the very text the non-streamed call returns, so the
deltas join to exactly that text. Decoding the whole text each step makes the decoding work
quadratic in the answer's length (not measured for long answers); it buys exactness, since a
token's text alone can differ from its share of the whole text.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from alignkit.data.chat import tokenize_prompt
from alignkit.generation.backend import (Backend, Completion, Message, SamplingParams, StreamDelta,
                                         check_conversation, check_sampling_params)
from alignkit.models.prompt_cache import shared_prompt_cache

Prompt = str | list[Message]


@dataclass
class _Row:
    """One sequence to generate: sample `sample_index` for prompt `prompt_index`."""
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    seed: int


@dataclass
class _RowOutput:
    token_ids: list[int]  # everything generated, up to and including the token that ended the row
    ended: bool  # True when a stop token or stop string ended the row before max_tokens
    chosen_logprobs: list[float] | None = None  # one per generated token, raw distribution
    top_logprobs: list[list[tuple[int, float]]] | None = None  # (token id, logprob) pairs per token
    drawn_logprobs: list[float] | None = None  # one per generated token, distribution it was drawn from


class _EndTracker(StoppingCriteria):
    """Ends rows at a stop token or stop string; `ended_at[r]` is how many tokens row r had then."""

    def __init__(self, prompt_width: int, stop_token_ids: torch.Tensor, stop_strings: Sequence[str], decode):
        self.prompt_width = prompt_width
        self.stop_token_ids = stop_token_ids
        self.stop_strings = tuple(stop_strings)
        self.decode = decode
        # A stop string of L characters spans at most 4L byte-level tokens, plus one partly before it.
        self.window = 4 * max((len(s) for s in self.stop_strings), default=0) + 2
        self.ended_at: torch.Tensor | None = None  # -1 while the row is running

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.ended_at is None:
            self.ended_at = torch.full((input_ids.shape[0],), -1, dtype=torch.long, device=input_ids.device)
        running = self.ended_at < 0
        ends = torch.isin(input_ids[:, -1], self.stop_token_ids) & running
        if self.stop_strings:
            ends |= self._rows_ending_in_stop_string(input_ids, running)
        self.ended_at[ends] = input_ids.shape[1] - self.prompt_width
        return self.ended_at >= 0

    def _rows_ending_in_stop_string(self, input_ids: torch.LongTensor, running: torch.Tensor) -> torch.Tensor:
        start = max(self.prompt_width, input_ids.shape[1] - self.window)
        tails = input_ids[:, start:].tolist()
        hits = [is_running and any(s in self.decode(tail) for s in self.stop_strings)
                for is_running, tail in zip(running.tolist(), tails)]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


class _LogprobRecorder(LogitsProcessor):
    """Records log-probabilities of the next-token distribution as it stands where it is placed.

    Placed first among the processors, it sees the logits before temperature and filtering; placed
    just before the sampler, it sees the distribution the token is drawn from. Only one step's full
    distribution is kept: the token chosen from it is looked up on the next call, when it shows up
    at the end of `input_ids`.
    """

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.chosen: list[torch.Tensor] = []
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._previous: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._previous is not None:
            self.chosen.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        k = min(self.top_k, logprobs.shape[-1])
        values, indices = logprobs.topk(k, dim=-1)
        self.top.append((values, indices))
        self._previous = logprobs
        return scores

    def per_row(self, generated: torch.LongTensor) -> tuple[list[list[float]], list[list[list[tuple[int, float]]]]]:
        """Chosen-token and top-k log-probs for each row of `generated` (the new tokens only)."""
        steps = generated.shape[1]
        if len(self.chosen) < steps:  # the last chosen token never came back through __call__
            self.chosen.append(self._previous.gather(1, generated[:, steps - 1:steps]).squeeze(1))
        if steps == 0:
            return [[] for _ in range(generated.shape[0])], [[] for _ in range(generated.shape[0])]
        chosen = torch.stack(self.chosen[:steps], dim=1).tolist()
        values = torch.stack([v for v, _ in self.top[:steps]], dim=1).tolist()
        indices = torch.stack([i for _, i in self.top[:steps]], dim=1).tolist()
        top = [[list(zip(step_ids, step_values)) for step_ids, step_values in zip(row_ids, row_values)]
               for row_ids, row_values in zip(indices, values)]
        return chosen, top


def _warpers(params: SamplingParams) -> list[LogitsProcessor]:
    """Temperature, then top-k and top-p: what turns the model's distribution into the one sampled from."""
    warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


class _SeededSampler(LogitsProcessor):
    """Samples every row from its own random stream, then forces greedy decoding to pick that token.

    Inverse-transform sampling: one uniform number per row and step, looked up in the row's cumulative
    distribution. A row's tokens depend on its seed alone, whatever shares its batch, and the whole batch
    is searched at once: torch.multinomial with a generator per row drew one exponential per vocabulary
    entry, row after row, which cost more than a small model's decode step on CPU. The uniforms are
    float64, finer than the float32 sums, so no token's share of the sums is too small to be drawn.
    """

    def __init__(self, seeds: list[int]):
        self.streams = [random.Random(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cumulative = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1).double()
        total = cumulative[:, -1:]
        uniforms = torch.tensor([[stream.random()] for stream in self.streams], dtype=torch.float64,
                                device=scores.device)
        # Strictly below the total, so the first sum above it is always a token of non-zero probability.
        targets = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))
        picks = torch.searchsorted(cumulative, targets, right=True)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, picks, 0.0)
        return forced


def _row_seed(seed: int | None, prompt_ids: list[int], sample_index: int) -> int:
    if seed is None:  # still drawn from torch's global generator, so torch.manual_seed governs it
        return int(torch.randint(0, 2**62, (1,)).item())
    # Keyed on the prompt itself rather than its position: the same prompt with the same seed
    # gives the same samples in any call, batch or order.
    digest = hashlib.sha256(f"{seed}|{sample_index}|{prompt_ids}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # The model may be shared with a trainer (online RL): leave its train/eval mode as found.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stop]
    found = [p for p in positions if p >= 0]
    return min(found) if found else None


def streamable_text(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(the part of a growing `text` that no later token can change, whether a stop string ended it).

    Cut before the first stop string when there is one. Otherwise held back: a tail that is the
    start of a stop string (the next token may complete it, and then it must never have been
    sent), and trailing U+FFFD, which is how a character whose UTF-8 bytes are split across tokens
    decodes until its last byte arrives.
    """
    cut = _find_stop(text, stop)
    if cut is not None:
        return text[:cut], True
    hold = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:length]):
                hold = length
                break
    return text[:len(text) - hold].rstrip("\ufffd"), False


class _IncrementalText:
    """One row's text as its tokens arrive, handed out in pieces that are never taken back."""

    def __init__(self, decode, stop_ids: set[int], stop: Sequence[str]):
        self.decode, self.stop_ids, self.stop = decode, stop_ids, tuple(stop)
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False  # after a stop token or stop string; the padding that follows is ignored

    def add(self, token_id: int) -> str:
        """The text that can be sent now that `token_id` came ("" when none)."""
        if self.ended:
            return ""
        if token_id in self.stop_ids:
            self.ended = True
            return ""
        self.ids.append(token_id)
        # The whole text is decoded, not the new token alone: a token's text can depend on its
        # neighbours (merged bytes, spaces a decoder adds or drops).
        text, self.ended = streamable_text(self.decode(self.ids), self.stop)
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""  # a decoding that rewrote earlier text: wait for the final one
        piece, self.sent = text[len(self.sent):], text
        return piece

    def rest(self, final: str) -> str:
        """What remains to be sent of `final`, the row's finished text."""
        if not final.startswith(self.sent):
            raise RuntimeError(f"streamed text {self.sent[-40:]!r} is not the start of the final text "
                               f"{final[:len(self.sent) + 40]!r}; the tokenizer's decoding is not incremental")
        piece, self.sent = final[len(self.sent):], final
        return piece


class _TokenQueue(BaseStreamer):
    """The transformers streamer: passes each step's new tokens (one per row) to the reading thread."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        pass  # the generating thread reports the end itself, with the outputs


class _Cancelled(StoppingCriteria):
    """Ends every row once `event` is set: a streamed client went away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LocalBackend:
    """A transformers causal LM behind the `Backend` interface.

    Not thread-safe: call it from one thread (the server's batcher does). An open stream counts as a
    call: its generation runs in a helper thread until the iterator is exhausted or closed.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, model_id: str | None = None,
                 device: str | torch.device | None = None, overlong: str = "raise"):
        """`overlong`: what a prompt too long for the model's context (with max_tokens) gets: "raise" a
        ValueError naming it (the server answers 400), or "error", its completions come back as errors and
        the other prompts are answered, as an HTTP backend's would (a data job counts it and goes on)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if overlong not in ("raise", "error"):
            raise ValueError(f"overlong must be 'raise' or 'error', got {overlong!r}")
        self.overlong = overlong
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self._eos_ids = self._collect_eos_ids()
        if not self._eos_ids:
            raise ValueError(f"{self.model_id}: neither the tokenizer nor the generation config names an EOS token")
        # Padded positions are masked out, so any id works; pad may even equal EOS (SmolLM2).
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos_ids)
        self._piece_cache: dict[int, str] = {}

    # ----- Backend interface -----

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.model_id} has no chat template; use complete() for raw text")
        return self._generate([self._chat_ids(c, i) for i, c in enumerate(conversations)], params)

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self._generate(self._complete_ids(prompts), params)

    def stream_chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> Iterator[StreamDelta]:
        """`chat`, handed out as the tokens come (see `StreamingBackend`); input is checked before this returns."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.model_id} has no chat template; use complete() for raw text")
        return self._stream([self._chat_ids(c, i) for i, c in enumerate(conversations)], params)

    def stream_complete(self, prompts: Sequence[str], params: SamplingParams) -> Iterator[StreamDelta]:
        """`complete`, handed out as the tokens come; input is checked before this returns."""
        return self._stream(self._complete_ids(prompts), params)

    # ----- prompts -----

    def _complete_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        prompt_ids = []
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
            # Raw text gets the tokenizer's usual special tokens (BOS for Llama-style models),
            # unless the text already starts with BOS, as a rendered chat template does.
            ids = self.tokenizer(prompt)["input_ids"]
            bos = self.tokenizer.bos_token_id
            if bos is not None and ids[:2] == [bos, bos]:
                ids = ids[1:]
            prompt_ids.append(ids)
        return prompt_ids

    def _chat_ids(self, conversation: list[Message], index: int) -> list[int]:
        check_conversation(conversation, index)
        # The same rendering as training uses: BOS exactly once, whether the template renders it or not.
        return tokenize_prompt(self.tokenizer, conversation)

    def _collect_eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    def _stop_token_ids(self, stop: Sequence[str]) -> set[int]:
        """EOS ids plus stop strings that are themselves one special token (they never reach the text)."""
        added = self.tokenizer.get_added_vocab()
        return self._eos_ids | {added[s] for s in stop if s in added}

    def _overlong_prompts(self, prompt_ids: list[list[int]], max_tokens: int) -> dict[int, str]:
        """Index -> why, for each prompt too long for the context; raises on an empty prompt, and on a long
        one unless overlong="error"."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        overlong = {}
        for index, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {index} is empty after tokenization")
            if context is not None and len(ids) + max_tokens > context:
                overlong[index] = (f"prompt {index}: {len(ids)} prompt tokens + max_tokens {max_tokens} exceed "
                                   f"the model's context of {context} tokens")
                if self.overlong == "raise":
                    raise ValueError(overlong[index])
        return overlong

    # ----- generation -----

    def _generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        check_sampling_params(params)
        overlong = self._overlong_prompts(prompt_ids, params.max_tokens)
        sampling = params.temperature > 0
        draws = params.n if sampling else 1  # greedy samples are all alike: decode once, copy
        rows = [_Row(i, j, ids, _row_seed(params.seed, ids, j))
                for i, ids in enumerate(prompt_ids) if i not in overlong for j in range(draws)]
        rows.sort(key=lambda row: len(row.prompt_ids), reverse=True)  # longest first: memory errors show early
        stop_ids = self._stop_token_ids(params.stop)
        done: dict[tuple[int, int], Completion] = {}
        with torch.inference_mode(), _eval_mode(self.model):
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                for row, output in zip(batch, self._generate_batch(batch, params, stop_ids), strict=True):
                    done[(row.prompt_index, row.sample_index)] = self._to_completion(row, output, params, stop_ids)
        for i, why in overlong.items():
            for j in range(draws):
                done[(i, j)] = Completion("", finish_reason="error", prompt_tokens=len(prompt_ids[i]), error=why)
        # Deep copies: greedy samples share one result, and editing one must not edit the others.
        return [[Completion(**dataclasses.asdict(done[(i, j if sampling else 0)])) for j in range(params.n)]
                for i in range(len(prompt_ids))]

    def _generate_batch(self, rows: list[_Row], params: SamplingParams, stop_ids: set[int], *,
                        streamer: BaseStreamer | None = None,
                        cancel: threading.Event | None = None) -> list[_RowOutput]:
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            attention_mask[r, width - len(row.prompt_ids):] = 1

        stop_list = sorted(stop_ids)
        tracker = _EndTracker(width, torch.tensor(stop_list, device=self.device), params.stop, self._decode)
        stopping = StoppingCriteriaList([tracker] + ([_Cancelled(cancel)] if cancel is not None else []))
        processors = LogitsProcessorList()
        recorder = drawn = None
        if params.logprobs is not None:
            recorder = _LogprobRecorder(params.logprobs)
            processors.append(recorder)
        if params.temperature > 0:
            processors.extend(_warpers(params))
        if params.return_tokens:
            drawn = _LogprobRecorder(0)  # after the warpers: what the sampler below draws from
            processors.append(drawn)
        if params.temperature > 0:
            processors.append(_SeededSampler([row.seed for row in rows]))

        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        shared = self._shared_prompt_cache(rows, input_ids, attention_mask)
        # Greedy decoding throughout; sampling happens inside _SeededSampler. The penalties are
        # pinned because a model's generation_config would otherwise fill them in.
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            max_new_tokens=params.max_tokens, do_sample=False, num_beams=1,
            repetition_penalty=1.0, no_repeat_ngram_size=0,
            pad_token_id=self._pad_id, eos_token_id=stop_list,
            logits_processor=processors, stopping_criteria=stopping, streamer=streamer,
            **({"past_key_values": shared} if shared is not None else {}))
        generated = sequences[:, width:]
        ended_at = tracker.ended_at.tolist() if tracker.ended_at is not None else [-1] * len(rows)
        chosen, top = recorder.per_row(generated) if recorder is not None else (None, None)
        drawn_logprobs = drawn.per_row(generated)[0] if drawn is not None else None
        outputs = []
        for r, tokens in enumerate(generated.tolist()):
            end = ended_at[r] if ended_at[r] >= 0 else len(tokens)
            outputs.append(_RowOutput(
                token_ids=tokens[:end], ended=ended_at[r] >= 0,
                chosen_logprobs=chosen[r][:end] if chosen is not None else None,
                top_logprobs=top[r][:end] if top is not None else None,
                drawn_logprobs=drawn_logprobs[r][:end] if drawn_logprobs is not None else None))
        return outputs

    def _stream(self, prompt_ids: list[list[int]], params: SamplingParams) -> Iterator[StreamDelta]:
        check_sampling_params(params)
        if params.logprobs is not None or params.return_tokens:
            raise ValueError("streamed deltas carry text only: SamplingParams.logprobs must be None and "
                             "return_tokens False")
        overlong = self._overlong_prompts(prompt_ids, params.max_tokens)
        return self._stream_rows(prompt_ids, params, overlong)

    def _stream_rows(self, prompt_ids: list[list[int]], params: SamplingParams,
                     overlong: dict[int, str]) -> Iterator[StreamDelta]:
        for i, why in overlong.items():
            for j in range(params.n):
                yield StreamDelta(i, j, finish_reason="error", prompt_tokens=len(prompt_ids[i]), error=why)
        # The rows, seeds and batches of _generate, so that a streamed sample is the non-streamed one.
        sampling = params.temperature > 0
        rows = [_Row(i, j, ids, _row_seed(params.seed, ids, j))
                for i, ids in enumerate(prompt_ids) if i not in overlong for j in range(params.n if sampling else 1)]
        rows.sort(key=lambda row: len(row.prompt_ids), reverse=True)
        stop_ids = self._stop_token_ids(params.stop)
        for start in range(0, len(rows), self.batch_size):
            yield from self._stream_batch(rows[start:start + self.batch_size], params, stop_ids,
                                          1 if sampling else params.n)

    def _stream_batch(self, rows: list[_Row], params: SamplingParams, stop_ids: set[int],
                      copies: int) -> Iterator[StreamDelta]:
        """Deltas of one batch while `generate` runs in a helper thread; `copies`: greedy rows stand for all
        n samples of their prompt. Closing the iterator ends the generation at its next step."""
        streamer, cancel = _TokenQueue(), threading.Event()
        texts = [_IncrementalText(self._decode, stop_ids, params.stop) for _ in rows]

        def generate() -> None:
            try:
                with torch.inference_mode(), _eval_mode(self.model):  # inference mode is per thread
                    outputs = self._generate_batch(rows, params, stop_ids, streamer=streamer, cancel=cancel)
                streamer.queue.put(("done", outputs))
            except BaseException as error:  # noqa: BLE001 - raised again in the reading thread
                streamer.queue.put(("failed", error))

        def samples(row: _Row) -> range:
            return range(row.sample_index, row.sample_index + 1) if copies == 1 else range(copies)

        thread = threading.Thread(target=generate, name="alignkit-stream", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = streamer.queue.get()
                if kind == "failed":
                    raise value
                if kind == "tokens":
                    for row, text, token_id in zip(rows, texts, value):
                        piece = text.add(token_id)
                        for j in samples(row) if piece else ():
                            yield StreamDelta(row.prompt_index, j, piece)
                    continue
                for row, text, output in zip(rows, texts, value, strict=True):
                    final = self._to_completion(row, output, params, stop_ids)
                    rest = text.rest(final.text)
                    for j in samples(row):
                        yield StreamDelta(row.prompt_index, j, rest, final.finish_reason, final.prompt_tokens,
                                          final.completion_tokens)
                return
        finally:
            cancel.set()
            thread.join()

    def _shared_prompt_cache(self, rows: list[_Row], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """When rows repeat a prompt (n samples of it), the KV cache of the batch's prompts but their last
        column, computed once per distinct prompt and copied to each of its rows; else None.

        generate then runs only the last prompt token and the new ones. The n samples of a prompt would
        otherwise each pay the prompt's forward pass, a large share of sampling a GRPO group on CPU.
        Positions are those generate gives left-padded rows, so the cache is the one it would build.
        """
        first_row: dict[tuple[int, ...], int] = {}
        for r, row in enumerate(rows):
            first_row.setdefault(tuple(row.prompt_ids), r)
        if len(first_row) == len(rows) or input_ids.shape[1] < 2:
            return None
        distinct = list(first_row.values())
        slot = {key: k for k, key in enumerate(first_row)}
        # None for a model with a cache of its own kind: no sharing then
        return shared_prompt_cache(self.model, input_ids[distinct, :-1], attention_mask[distinct, :-1],
                                   torch.tensor([slot[tuple(row.prompt_ids)] for row in rows]))

    # ----- outputs -----

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _to_completion(self, row: _Row, output: _RowOutput, params: SamplingParams, stop_ids: set[int]) -> Completion:
        content_ids = output.token_ids
        if output.ended and content_ids and content_ids[-1] in stop_ids:
            content_ids = content_ids[:-1]
        text = self._decode(content_ids)
        finish_reason = "stop" if output.ended else "length"
        cut = _find_stop(text, params.stop)
        kept_tokens = len(content_ids)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
            kept_tokens = self._tokens_covering(content_ids, cut)
        top_logprobs = None
        if output.chosen_logprobs is not None:
            top_logprobs = [self._logprob_entry(content_ids[t], output.chosen_logprobs[t], output.top_logprobs[t])
                            for t in range(kept_tokens)]
        return Completion(text=text, finish_reason=finish_reason, prompt_tokens=len(row.prompt_ids),
                          completion_tokens=len(output.token_ids), top_logprobs=top_logprobs,
                          token_ids=list(output.token_ids) if params.return_tokens else None,
                          logprobs=output.drawn_logprobs)

    def _tokens_covering(self, ids: list[int], chars: int) -> int:
        """The fewest leading tokens of `ids` whose text reaches `chars` characters."""
        for count in range(len(ids) + 1):
            if len(self._decode(ids[:count])) >= chars:
                return count
        return len(ids)

    def _logprob_entry(self, chosen_id: int, chosen_logprob: float, top: list[tuple[int, float]]) -> dict[str, float]:
        entry = {self._piece(chosen_id): chosen_logprob}
        for token_id, logprob in top:
            if token_id == chosen_id:
                continue
            key = self._piece(token_id)
            if key in entry:  # two tokens with the same text: fall back to the vocabulary form
                key = self.tokenizer.convert_ids_to_tokens(token_id)
            if key not in entry:
                entry[key] = logprob
        return entry

    def _piece(self, token_id: int) -> str:
        """Readable text of one token; the vocabulary form when it is a partial UTF-8 byte."""
        if token_id not in self._piece_cache:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if not text or "\ufffd" in text:
                text = self.tokenizer.convert_ids_to_tokens(token_id)
            self._piece_cache[token_id] = text
        return self._piece_cache[token_id]


def generate_texts(backend: Backend, prompts: Sequence[Prompt], params: SamplingParams, *,
                   progress: bool = True, chunk_size: int = 64, desc: str = "generating") -> list[list[Completion]]:
    """Completions for a mix of raw prompts (str) and conversations, in order, with a progress bar.

    Prompts go to the backend in chunks of similar length; the bar shows prompts done,
    generated tokens per second and how many completions came back as errors.
    """
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt {index}: expected a string or a list of messages, got {type(prompt).__name__}")
    order = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])), reverse=True)
    results: list[list[Completion] | None] = [None] * len(prompts)
    generated_tokens = errors = 0
    started = time.perf_counter()
    with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), chunk_size):
            chunk = order[start:start + chunk_size]
            conversations = [i for i in chunk if isinstance(prompts[i], list)]
            raw = [i for i in chunk if isinstance(prompts[i], str)]
            for indices, call in ((conversations, backend.chat), (raw, backend.complete)):
                if not indices:
                    continue
                for i, completions in zip(indices, call([prompts[i] for i in indices], params), strict=True):
                    results[i] = completions
                    generated_tokens += sum(c.completion_tokens for c in completions)
                    errors += sum(c.finish_reason == "error" for c in completions)
            bar.update(len(chunk))
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(tok_s=f"{generated_tokens / elapsed:.1f}", errors=errors)
    return results
