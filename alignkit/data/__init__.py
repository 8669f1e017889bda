"""Training and evaluation data: read records from files, folders or the hub (`read_records`),
normalise instruction formats to chat messages (`load_conversations`), preference pairs,
rankings and feedback (`load_pairs`, ...), mixtures (`load_mix`), and tokenize them
(`tokenize_conversation`, `build_sft_examples`, `build_examples` for preference data) under one
length policy (`LengthReport`). Names are imported on first use (lazy_exports).
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "readers": ("DataSpec", "Record", "read_records"),
    "formats": ("Conversation", "load_conversations", "to_conversation"),
    "prompts": ("PromptRecord", "read_prompt_records"),
    "preference": ("PreferencePair", "Ranking", "Feedback", "load_pairs", "load_rankings", "load_feedback"),
    "mixing": ("load_mix",),
    "chat": ("tokenize_conversation", "tokenize_prompt"),
    "sft": ("SFTExample", "build_sft_examples"),
    "errors": ("DataError", "RecordError", "SkipReport"),
    "pref_examples": ("PrefExample", "build_examples", "pair_items", "ranking_items", "feedback_items"),
    "lengths": ("LengthReport", "OVERLONG_POLICIES"),
})
