"""`alignkit annotate <command>`: collect human preferences (alignkit/annotation).

    alignkit annotate tasks --outputs base.jsonl sft.jsonl --out tasks.jsonl
    alignkit annotate add-annotator alice --db votes.db           prints alice's token
    alignkit annotate serve --tasks tasks.jsonl --db votes.db --k 2
    alignkit annotate export --db votes.db --what pairs --out pairs.jsonl
    alignkit annotate agreement --db votes.db --out runs/agreement
"""
from __future__ import annotations


def cmd_serve(a) -> None:
    from alignkit.annotation.commands import serve_annotation

    serve_annotation(a.db, a.tasks or (), k=a.k, host=a.host, port=a.port, arena=a.arena or (),
                     arena_max_tokens=a.arena_max_tokens, arena_temperature=a.arena_temperature,
                     claim_ttl=a.claim_ttl, title=a.title)


def cmd_add_annotator(a) -> None:
    from alignkit.annotation.commands import add_annotator

    token = add_annotator(a.db, a.name, admin=a.admin, new_token=a.new_token)
    print(f"annotator {a.name}{' (admin)' if a.admin else ''}; token (shown once, keep it safe):\n{token}")


def cmd_tasks(a) -> None:
    from alignkit.annotation.commands import write_tasks
    from alignkit.paths import check_output_file

    check_output_file(a.out, "--out")
    count = write_tasks(a.outputs, a.out, a.kind, a.question)
    print(f"{count} {a.kind} items: {a.out}")


def cmd_export(a) -> None:
    from alignkit.annotation.commands import write_export
    from alignkit.annotation.export import ExportPolicy
    from alignkit.paths import check_output_file

    check_output_file(a.out, "--out")
    policy = ExportPolicy(aggregate=a.aggregate, ties=a.ties, both_bad=a.both_bad, pair_rule=a.pair_rule,
                          threshold=a.threshold)
    result = write_export(a.db, a.what, a.out, policy)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
    print(f"{len(result.rows)} {a.what} rows: {a.out} ({counts})")


def cmd_agreement(a) -> None:
    from alignkit.annotation.commands import write_agreement
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")
    results = write_agreement(a.db, a.out)
    for entry in results["agreement"]:
        def fmt(value):
            return "n/a" if value is None else f"{value:.3f}"
        print(f"{entry['task']}: {entry['n_items']} units, {len(entry['annotators'])} annotators, "
              f"Fleiss kappa {fmt(entry['fleiss_kappa'])}, Krippendorff alpha {fmt(entry['krippendorff_alpha'])}")
    print(f"report: {a.out}/report.html\ndata:   {a.out}/agreement.json")


def add_annotate(sub) -> None:
    from alignkit.annotation.export import AGGREGATES, BOTH_BAD_POLICIES, EXPORTS, TIE_POLICIES
    from alignkit.data.preference import PAIR_RULES

    top = sub.add_parser("annotate", help="collect human preferences: a web app for pairwise, ranking and rating "
                                          "tasks, a blind arena, exports and agreement")
    cmds = top.add_subparsers(dest="annotate_command", required=True)

    p = cmds.add_parser("serve", help="the annotation web app (and, with --arena, the blind arena)")
    p.add_argument("--db", required=True, help="SQLite file holding annotators, items and votes (created if missing)")
    p.add_argument("--tasks", nargs="+", help="task files (JSONL: prompt, responses, kind; see alignkit.annotation.tasks)")
    p.add_argument("--k", type=int, default=None, help="annotators per item (default: as stored, else 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8600, help="port to listen on")
    p.add_argument("--arena", action="append", metavar="NAME=MODEL",
                   help="an arena contestant (any backend: embedded, a folder, openai:<model>@<url>); give two or more")
    p.add_argument("--arena-max-tokens", type=int, default=512, help="longest arena answer in tokens")
    p.add_argument("--arena-temperature", type=float, default=0.7, help="arena sampling temperature (0: greedy)")
    p.add_argument("--claim-ttl", type=float, default=1800.0,
                   help="seconds an unanswered item stays reserved for the annotator it was given to")
    p.add_argument("--title", default="alignkit annotate", help="shown at the top of every page")
    p.set_defaults(func=cmd_serve)

    p = cmds.add_parser("add-annotator", help="create an annotator and print their token")
    p.add_argument("name", help="the annotator's name, as exports and agreement tables show it")
    p.add_argument("--db", required=True, help="the app's SQLite file (created if missing)")
    p.add_argument("--admin", action="store_true", help="may see the admin page (progress of everyone)")
    p.add_argument("--new-token", action="store_true", help="replace an existing annotator's token")
    p.set_defaults(func=cmd_add_annotator)

    p = cmds.add_parser("tasks", help="a task file comparing several models' `alignkit generate` outputs")
    p.add_argument("--outputs", nargs="+", required=True, help="generate output files, one per model (or one "
                                                               "file of `generate --n` samples for ranking)")
    p.add_argument("--out", required=True, help="the task file to write (JSONL)")
    p.add_argument("--kind", default="pairwise", choices=["pairwise", "ranking"],
                   help="pairwise: two files, one response each; ranking: all responses of every file")
    p.add_argument("--question", help="shown above the responses (default: 'Which response is better?')")
    p.set_defaults(func=cmd_tasks)

    p = cmds.add_parser("export", help="votes as TRL pairs, rankings, leaderboard battles, raw votes or "
                                       "LLMBar gold pairs")
    p.add_argument("--db", required=True, help="the app's SQLite file")
    p.add_argument("--what", required=True, choices=EXPORTS,
                   help="pairs (TRL prompt/chosen/rejected), rankings, battles (for leaderboard), votes (raw), "
                        "gold (LLMBar pairs for meta-eval)")
    p.add_argument("--out", required=True, help="the file to write (gold: a JSON list; the others: JSONL)")
    p.add_argument("--aggregate", default="majority", choices=AGGREGATES,
                   help="one record per item by majority (rankings: mean Borda points, ratings: mean score), "
                        "or one per vote")
    p.add_argument("--ties", default="drop", choices=TIE_POLICIES, help="pairs and gold: leave ties out, or stop")
    p.add_argument("--both-bad", default="drop", choices=BOTH_BAD_POLICIES,
                   help="'both bad' answers: leave out, count as a tie, or stop")
    p.add_argument("--pair-rule", default="all_pairs", choices=PAIR_RULES,
                   help="pairs from ranking and rating items")
    p.add_argument("--threshold", type=float, default=0.0, help="score gap a pair must exceed (--pair-rule margin)")
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("agreement", help="Cohen's kappa per annotator pair, Fleiss' kappa, Krippendorff's alpha, "
                                          "agreement with the majority; HTML report")
    p.add_argument("--db", required=True, help="the app's SQLite file")
    p.add_argument("--out", required=True, help="folder for agreement.json, report.html and report.json")
    p.set_defaults(func=cmd_agreement)
