"""The `alignkit annotate` commands as functions: serve, add an annotator, make tasks, export, agreement."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from alignkit.annotation.export import Export, ExportPolicy, export
from alignkit.annotation.store import Store
from alignkit.annotation.tasks import make_tasks, read_tasks
from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.data.errors import DataError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_contestants(specs: Sequence[str]) -> dict[str, str]:
    """`NAME=MODEL` pairs (MODEL: any backend spec) into {name: spec}."""
    contestants: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise DataError(f"--arena {spec!r}: expected NAME=MODEL, e.g. base=embedded or sft=runs/sft/final")
        if name in contestants:
            raise DataError(f"--arena: model name {name!r} given twice")
        contestants[name.strip()] = model.strip()
    if contestants and len(contestants) < 2:
        raise DataError("--arena: the arena needs at least two models")
    return contestants


def serve_annotation(db: str, tasks: Sequence[str] = (), *, k: int | None = None, host: str = "127.0.0.1",
                     port: int = 8600, arena: Sequence[str] = (), arena_max_tokens: int = 512,
                     arena_temperature: float = 0.7, claim_ttl: float = 1800.0, title: str = "alignkit annotate") -> None:
    """Serve the annotation app until interrupted. Task files and arena specs are checked before any
    model loads; items already in `db` stay, with their votes."""
    import uvicorn

    from alignkit.annotation.arena import Arena
    from alignkit.annotation.web import create_app
    from alignkit.generation.backend import SamplingParams
    from alignkit.generation.specs import open_backend

    items = read_tasks(list(tasks)) if tasks else []
    contestants = parse_contestants(arena)
    if not items and not contestants:
        raise DataError("nothing to serve: give --tasks FILE, or --arena NAME=MODEL twice or more")
    store = Store(db, k=k, claim_ttl=claim_ttl)
    added = store.load_items(items)
    if not store.annotators():
        raise DataError(f"{db}: no annotators yet; create them first: alignkit annotate add-annotator NAME --db {db}")
    contest = None
    if contestants:
        backends = {name: open_backend(spec) for name, spec in contestants.items()}
        contest = Arena(backends, SamplingParams(max_tokens=arena_max_tokens, temperature=arena_temperature))
    if host not in LOOPBACK:
        print(f"warning: serving on {host}: tokens travel as plain HTTP; put a TLS proxy in front", file=sys.stderr)
    print(f"{len(items)} items in the task files ({added} new), each for {store.k} annotator(s); "
          f"{len(store.annotators())} annotators; open http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(store, contest, title=title), host=host, port=port, log_level="warning")


def add_annotator(db: str, name: str, *, admin: bool = False, new_token: bool = False) -> str:
    return Store(db).add_annotator(name, admin=admin, new_token=new_token)


def write_tasks(outputs: Sequence[str], out: str, kind: str = "pairwise", question: str | None = None) -> int:
    records, missing = make_tasks(outputs, kind, question)
    write_jsonl_atomic(out, records)
    if missing:
        print(f"{missing} prompts are missing from at least one file and were left out", file=sys.stderr)
    return len(records)


def _existing_store(db: str) -> Store:
    if not Path(db).is_file():
        raise DataError(f"{db}: no such annotation database")
    return Store(db)


def write_export(db: str, what: str, out: str, policy: ExportPolicy = ExportPolicy()) -> Export:
    """Writes one export (`gold` as a JSON list, as LLMBar files are; the others as JSONL)."""
    result = export(_existing_store(db), what, policy)
    if not result.rows:
        raise DataError(f"{db}: nothing to export as {what} ({dict(result.counts) or 'no votes'})")
    if what == "gold":
        write_json_atomic(out, result.rows)
    else:
        write_jsonl_atomic(out, result.rows)
    return result


def write_agreement(db: str, out_dir: str) -> dict:
    """agreement.json (every figure) and report.json (the report's agreement section) in out_dir."""
    from alignkit.annotation.agreement_report import agreement_results

    results = agreement_results(_existing_store(db))
    write_json_atomic(Path(out_dir) / "agreement.json", results)
    from alignkit.evaluation.report import write_report

    write_report({"title": f"Annotator agreement: {Path(db).name}", "agreement": results["agreement"]}, out_dir)
    return results


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
