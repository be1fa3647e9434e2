"""What a person at a terminal sees while a run works: the phase it is in (loading data, training
the evaluation classifier, training, evaluating), with a bar and an ETA for the long ones.

Only on a terminal: in a log file or a sweep's job the bars would be noise, so they are off
there (and `trainer.progress=false` turns them off everywhere)."""

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = bool(enabled) and sys.stderr.isatty()

    def bar(self, desc: str, total: int, initial: int = 0, unit: str = "step") -> tqdm:
        """A bar with rate and ETA; a disabled one still counts, silently."""
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not self.enabled,
                    dynamic_ncols=True, leave=True)

    @contextmanager
    def phase(self, what: str):
        """A short phase without a count: one line when it starts and how long it took."""
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        print(f"{what} ...", end="", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
