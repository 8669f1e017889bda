"""Verifiable instruction following, scored like IFEval, entirely offline.

    prompts = load_ifeval_prompts("input_data.jsonl")
    result = score_ifeval(prompts, read_responses("responses.jsonl"))
    result.prompt_level_strict, result.to_dict()

`check_instruction` checks a single response against one instruction type, `run_ifeval` is
`alignkit eval ifeval` (answer with a model or read answers, score, write), and
`python -m alignkit.evaluation.ifeval` scores a response file from the command line.
"""
from alignkit.evaluation.ifeval.data import IFEvalFormatError, IFEvalPrompt, load_ifeval_prompts, read_responses
from alignkit.evaluation.ifeval.registry import (
    INSTRUCTION_TYPES,
    InstructionError,
    check_instruction,
    validate_kwargs,
)
from alignkit.evaluation.ifeval.run import run_ifeval
from alignkit.evaluation.ifeval.scoring import (IFEvalResult, PromptOutcome, Tally, coverage_note, score_ifeval,
                                                score_prompt)
from alignkit.evaluation.ifeval.text import count_sentences, count_words, split_paragraphs, split_sentences
from alignkit.evaluation.ifeval.variants import response_variants

__all__ = [
    "INSTRUCTION_TYPES",
    "IFEvalFormatError",
    "IFEvalPrompt",
    "IFEvalResult",
    "InstructionError",
    "PromptOutcome",
    "Tally",
    "check_instruction",
    "coverage_note",
    "count_sentences",
    "count_words",
    "load_ifeval_prompts",
    "read_responses",
    "response_variants",
    "run_ifeval",
    "score_ifeval",
    "score_prompt",
    "split_paragraphs",
    "split_sentences",
    "validate_kwargs",
]
