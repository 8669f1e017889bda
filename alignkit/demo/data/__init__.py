"""The demo's JSONL files (installed as package data) and the scripts that write them: `build`, then `build_pref`."""
