"""Summed completion log-probs from one packed forward, and the frozen reference's log-probs.

Every preference objective needs, per sequence, the sum of log p(token) over its completion
tokens. `sequence_logps` gets them for all sequences of a batch from a single padding-free
forward: logits only at completion positions, then a segment sum over the packed row.

The reference model never changes during training, so its log-probs are computed once, before
training (`attach_reference`), and cached on disk. The cache key hashes everything the numbers
depend on: the model (name plus a fingerprint of its weights), the token ids of every sequence
(which already encode the data, the chat template and the length limit; the template text and
max length are hashed too, so the key says so explicitly) and the precision. With LoRA the
reference is the same model with its adapter switched off, never a second copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from alignkit.atomic_write import atomic_file
from alignkit.data.chat import TokenSeq
from alignkit.data.packing import pack, target_positions
from alignkit.models.lora import is_peft
from alignkit.training.chunked_logprobs import chunked_scores, target_logprobs
from alignkit.training.forward import packed_logits
from alignkit.training.losses import token_logprobs
from alignkit.training.precision import model_device, resolve_precision

REFERENCE_MODES = ("precomputed", "live")


class HasSequences(Protocol):
    sequences: list[TokenSeq]
    reference: list[float] | None


def pack_sequences(sequences: Sequence[TokenSeq]) -> dict:
    """`pack` plus `segment_ids`: the index of the sequence each flat position belongs to."""
    batch = pack(sequences)
    lengths = torch.tensor(batch["seq_lens"])
    batch["segment_ids"] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    return batch


def sequence_logps(model, batch: dict, *, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [S], completion token counts [S]) for the S packed sequences; `chunk` > 0
    computes the logits that many positions at a time (training/chunked_logprobs.py, where the model allows)."""
    keep = target_positions(batch["targets"])
    scores = chunked_scores(model, batch, keep, batch["targets"][0, keep], chunk=chunk) if chunk else None
    if scores is not None:
        token_lp = scores.logprobs
    else:
        logits = packed_logits(model, batch, keep)
        token_lp = token_logprobs(logits, batch["targets"][0, keep].to(logits.device))
    segments = batch["segment_ids"].to(token_lp.device)[keep.to(token_lp.device)]
    count = len(batch["seq_lens"])
    sums = torch.zeros(count, dtype=token_lp.dtype, device=token_lp.device).index_add(0, segments, token_lp)
    return sums, torch.bincount(segments, minlength=count)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@contextmanager
def reference_mode(model) -> Iterator[None]:
    """Eval mode, no gradients and, for a peft model, the adapter switched off."""
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad(), (inner.disable_adapter() if is_peft(inner) else nullcontext()):
            yield
    finally:
        inner.train(was_training)


# ---------------------------------------------------------------- model fingerprint and cache key

_PEFT_PREFIX = "base_model.model."


def model_fingerprint(model, sample: int = 4096) -> str:
    """A hash of the weights the reference uses: cheap, and changed by any real edit to them.

    Per tensor it hashes name, shape, dtype, an evenly spaced sample of values and float64 sums,
    so a change anywhere moves the sums. LoRA parameters are left out and peft's name prefixes
    are removed, because the reference is the base model with the adapter off: a LoRA run and a
    full run of the same base share one fingerprint (and one cache entry).
    """
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, param in unwrap(model).named_parameters():
            if "lora_" in name:
                continue
            clean = name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // sample)
            values = flat[::step].float().cpu()
            wide = flat.double()
            digest.update(f"{clean}|{tuple(param.shape)}|{param.dtype}|{float(wide.sum())!r}|"
                          f"{float(wide.abs().sum())!r}".encode())
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def reference_key(*, model_id: str, fingerprint: str, template: str, max_length: int, precision: str,
                  examples: Sequence[HasSequences]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps({"model": model_id, "fingerprint": fingerprint, "template": template,
                              "max_length": max_length, "precision": precision}).encode())
    for example in examples:
        digest.update(b"|ex")
        for ids, labels in example.sequences:
            digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
            digest.update(b"/")
            digest.update(torch.tensor(labels, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """One safetensors file per key: `logps` (every sequence, example by example) and `counts`
    (sequences per example), so a file written for other data can never be misread."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, counts: list[int]) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                logps, stored = f.get_tensor("logps"), f.get_tensor("counts")
        except Exception:  # a truncated or foreign file is a miss, and gets rewritten
            return None
        if stored.tolist() != counts or logps.numel() != sum(counts):
            return None
        return logps

    def save(self, key: str, logps: torch.Tensor, counts: list[int], metadata: dict[str, str]) -> None:
        with atomic_file(self.path(key)) as tmp:  # readers never see a half-written file
            save_file({"logps": logps.detach().float().cpu().contiguous(), "counts": torch.tensor(counts)},
                      str(tmp), metadata=metadata)


def default_cache_dir() -> str:
    from alignkit.models.loading import cache_dir

    return str(cache_dir() / "reference")


# ---------------------------------------------------------------- computing and attaching

@contextmanager
def compute_precision(model, precision: str) -> Iterator[None]:
    """Run `model` the way the training loop does: when precision is (or `auto` means) bf16 its fp32 weights
    are replaced by bf16 copies (the loop trains bf16 weights against fp32 masters), restored after."""
    precision = resolve_precision(precision, model_device(unwrap(model)))
    originals = [(p, p.data) for p in unwrap(model).parameters() if p.dtype == torch.float32] \
        if precision == "bf16" else []
    try:
        for param, data in originals:
            param.data = data.to(torch.bfloat16)
        yield
    finally:
        for param, data in originals:
            param.data = data


def forward_logps(model, batch: dict) -> torch.Tensor:
    """Summed completion log-probs [S] of a packed batch, forward only: the logits exist a chunk of positions
    at a time (training/chunked_logprobs.py) where the model allows it."""
    keep = target_positions(batch["targets"])
    token_lp = target_logprobs(model, batch, keep, batch["targets"][0, keep])
    if token_lp is None:
        return sequence_logps(model, batch)[0].float()
    segments = batch["segment_ids"].to(token_lp.device)[keep.to(token_lp.device)]
    return torch.zeros(len(batch["seq_lens"]), device=token_lp.device).index_add(0, segments, token_lp)


def compute_logps(model, examples: Sequence[HasSequences], *, batch_size: int, precision: str = "fp32",
                  progress: bool = False) -> torch.Tensor:
    """Reference log-probs of every sequence (example by example), `batch_size` examples per packed forward."""
    device = next(unwrap(model).parameters()).device
    out = []
    bar = tqdm(total=sum(len(s[0]) for ex in examples for s in ex.sequences), unit="tok", desc="reference",
               disable=not progress)
    with reference_mode(model), compute_precision(model, precision), torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            sequences = [seq for ex in examples[start:start + batch_size] for seq in ex.sequences]
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in pack_sequences(sequences).items()}
            out.append(forward_logps(model, batch).cpu())
            bar.update(batch["num_tokens"])
    bar.close()
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class ReferenceReport:
    key: str
    path: str
    hit: bool
    seconds: float
    sequences: int

    def summary(self) -> str:
        what = "loaded from cache" if self.hit else "computed and cached"
        return f"reference log-probs for {self.sequences} sequences {what} in {self.seconds:.1f}s ({self.path})"


def attach_reference(model, examples: Sequence[HasSequences], *, model_id: str, template: str, max_length: int,
                     cache_dir: str = "", batch_size: int = 32, precision: str = "fp32",
                     needed: Sequence[int] | None = None, progress: bool = False) -> ReferenceReport:
    """Fill `example.reference` from the cache, or compute and cache it: for every example, or only for the
    examples at the indices `needed` (those a run will visit; the others keep reference None, and a batch
    holding one fails loudly rather than train without its reference)."""
    start = time.perf_counter()
    precision = resolve_precision(precision, model_device(unwrap(model)))  # the key names what was computed
    if needed is not None:
        examples = [examples[i] for i in sorted(set(needed))]
    counts = [len(ex.sequences) for ex in examples]
    key = reference_key(model_id=model_id, fingerprint=model_fingerprint(model), template=template,
                        max_length=max_length, precision=precision, examples=examples)
    cache = ReferenceCache(cache_dir or default_cache_dir())
    logps = cache.load(key, counts)
    hit = logps is not None
    if logps is None:
        logps = compute_logps(model, examples, batch_size=batch_size, precision=precision, progress=progress)
        cache.save(key, logps, counts, {"model": model_id, "max_length": str(max_length), "precision": precision,
                                        "examples": str(len(examples))})
    values = logps.tolist()
    offset = 0
    for example, count in zip(examples, counts):
        example.reference = values[offset:offset + count]
        offset += count
    return ReferenceReport(key, str(cache.path(key)), hit, time.perf_counter() - start, len(values))


class LiveReference:
    """Reference log-probs computed at every step, as TRL does by default (kept for comparison).

    A peft policy is its own reference (adapter switched off); any other model gets a frozen
    copy taken now, before training changes the policy, in the precision the loop computes in.
    """

    def __init__(self, model, precision: str = "fp32", *, chunk: int = 0):
        import copy

        self.chunk = chunk  # train.loss_chunk_size: logits this many positions at a time (0: all at once)
        inner = unwrap(model)
        self.copy = None
        if not is_peft(inner):
            self.copy = copy.deepcopy(inner).eval()
            self.copy.requires_grad_(False)
            # parameters only: buffers (rotary frequencies) stay fp32, as in the loop
            if resolve_precision(precision, model_device(inner)) == "bf16":
                for param in self.copy.parameters():
                    param.data = param.data.to(torch.bfloat16)

    def logps(self, policy, batch: dict) -> torch.Tensor:
        target = self.copy if self.copy is not None else policy
        with reference_mode(target):
            return sequence_logps(target, batch, chunk=self.chunk)[0]
