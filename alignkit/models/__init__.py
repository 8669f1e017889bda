"""Models: load a causal LM and its tokenizer from whatever the user names (`load_model`), LoRA
adapters (`apply_lora`, `merge_lora`), reward models (`load_reward_model`) and built-in chat
templates. Names are imported on first use (lazy_exports), so the package costs nothing until then.
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("ModelConfig",),
    "loading": ("load_model", "load_tokenizer", "embedded_model_dir", "ModelLoadError"),
    "lora": ("apply_lora", "merge_lora", "save_model"),
    "reward": ("RewardModel", "load_reward_model"),
    "templates": ("TEMPLATES",),
})
