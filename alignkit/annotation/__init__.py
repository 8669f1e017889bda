"""Human preferences: the annotation web app, the blind arena, exports and agreement (`alignkit annotate`).

    tasks.py           task files: pairwise, ranking and rating items, and task files made from
                       `alignkit generate` outputs of several models
    answers.py         each annotator's shown order of an item's responses, and answers mapped back to it
    store.py           the SQLite (WAL) store: annotators and their tokens, items, claims (k annotators per
                       item), votes, arena battles
    web.py             the FastAPI app: server-rendered pages (templates/, static/) and a JSON API
    security.py        tokens, cross-site request checks, the Content-Security-Policy
    markdown.py        model output as Markdown rendered and sanitised
    arena.py           the blind arena: two random contestants answer the annotator's prompt
    export.py          TRL pairs, rankings, leaderboard battles, raw votes and LLMBar gold pairs
    agreement.py       Cohen's kappa per annotator pair, Fleiss' kappa, Krippendorff's alpha, agreement with
                       the majority; agreement_report.py applies them to the votes of each kind of task
    commands.py        the `alignkit annotate` commands as functions

The package uses generation/, data/ and evaluation/ (report, leaderboard and meta-eval read its
exports); nothing beneath it imports it.
"""
