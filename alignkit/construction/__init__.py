"""Data construction: instruction and preference data built by templates and by models (`alignkit data`).

    templates.py       NLP datasets turned into instructions (FLAN / T0 style), mixed, with held-out tasks;
                       task_templates.py reads and renders the task template files
    self_instruct.py   instructions bootstrapped from seed tasks, filtered, then answered
    evolve.py          evol-instruct: instructions rewritten deeper or broader, failed evolutions eliminated
    labels.py          AI preference labels (RLAIF): a judge in both orders, disagreements dropped
    critique.py        constitutional critique and revision against a principles file
    contrast.py        contrastive prompts (RLCD): a positive and a negative variant make the pair
    dedup.py, decontaminate.py, stats.py   exact and near-duplicate removal, n-gram decontamination against
                       evaluation sets, length and language statistics (quality.py: their shared input reading)
    filters.py         the rules that keep or drop an instruction or a reply, as short pure functions

The shared pieces: `generator.py` (the model section every generating command has, opened behind the
SQLite cache), `journal.py` (results appended as they arrive with stable ids, so a killed job resumes
where it stopped), `counts.py` (what each step kept and dropped, and why), `prompt_files.py` (the YAML
prompts, principles and directions, alignkit's own in resources/), `inputs.py` (input records, each
conversation once) and `rows.py` (the SFT and preference layouts written). The package uses generation/, judges/ and data/; nothing beneath it imports it.
"""
