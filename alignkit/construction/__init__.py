"""Data construction: instruction and preference data built by templates and by models.

    templates.py      NLP datasets turned into instructions (FLAN / T0 style), mixed, with held-out tasks
    self_instruct.py  instructions bootstrapped from seed tasks, filtered, then answered
    evolve.py         evol-instruct: instructions rewritten deeper or broader, failed evolutions eliminated
    labels.py         AI preference labels (RLAIF): a judge in both orders, disagreements dropped
    critique.py       constitutional critique and revision against a principles file
    contrast.py       contrastive prompts (RLCD): a positive and a negative variant make the pair
    quality.py        exact and near-duplicate removal, decontamination, length and language statistics

The shared pieces: `generator.py` (the model section every generating command has, opened behind the
SQLite cache), `journal.py` (results appended as they arrive with stable ids, so a killed job resumes
where it stopped) and `counts.py` (what each step kept and dropped, and why). The package uses
generation/, judges/ and data/; nothing beneath it imports it.
"""
