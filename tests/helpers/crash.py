"""A crash on purpose: what a test raises to stand for a kill part-way through a write or a run."""


class Crash(RuntimeError):
    """A type of its own, so that pytest.raises(Crash) lets any real error through."""


def crash_at(at):
    """An on_step callback that crashes the run when step `at` has finished."""
    def on_step(step, record):
        if step == at:
            raise Crash()
    return on_step
