"""Stopping a run on request (SIGTERM from a scheduler, SIGINT from Ctrl-C).

While the run sets up (loading data, training the evaluation classifier) there is nothing to
checkpoint, so the first signal stops it at once. Once it trains, the first signal asks the loop
to stop at the next step boundary, after writing a checkpoint; a second signal stops at once,
for a step or an evaluation that takes too long to wait for."""

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


# Set by any stop signal in this process. A sweep whose jobs run in this process (Hydra's basic
# launcher) starts no further job once it is set: one Ctrl-C ends the whole sweep.
STOPPED = threading.Event()


def stop_between_jobs() -> None:
    """Between a sweep's jobs no run holds the signals: a signal there only stops the sweep."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, lambda signum, frame: STOPPED.set())


class StopNow(BaseException):
    """Raised from the signal handler. A BaseException, so that no `except Exception` between
    the signal and the runner can swallow it."""


class StopRequest(threading.Event):
    """Set by the first signal once training runs; `setting_up` until then."""

    def __init__(self):
        super().__init__()
        self.setting_up = True
        self.signal_name = ""

    def handle(self, signum, frame) -> None:
        STOPPED.set()
        self.signal_name = signal.Signals(signum).name
        if self.setting_up:
            raise StopNow(f"{self.signal_name} during set-up")
        if self.is_set():
            raise StopNow(f"a second {self.signal_name}")
        self.set()


@contextmanager
def stop_requests():
    """A StopRequest that SIGTERM and SIGINT drive while the block runs (main thread only: a
    run started from another thread leaves the process's signals alone)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, request.handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
