"""What the side-by-side benches share: each trainer runs in a child process of its own, so the
peak RSS it reports is its own."""
from __future__ import annotations

import json
import resource


def child(a, runners: dict) -> None:
    """Run `runners[a.run](a)` and print its result with this process's peak RSS on a RESULT line."""
    import torch

    torch.set_num_threads(a.threads)
    out = runners[a.run](a)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)
