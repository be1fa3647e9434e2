"""Stopping a run on request (SIGTERM from a scheduler, SIGINT from Ctrl-C, SIGUSR2 that
submitit asks SLURM to send before a job's time limit or at preemption).

While the run sets up (loading data, training the evaluation classifier) there is nothing to
checkpoint, so the first signal stops it at once. Once it trains, the first signal asks the loop
to stop at the next step boundary, after writing a checkpoint; a second signal stops at once,
for a step or an evaluation that takes too long to wait for."""

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


# Set by any stop signal in this process. A sweep whose jobs run in this process (Hydra's basic
# launcher) starts no further job once it is set: one Ctrl-C ends the whole sweep.
STOPPED = threading.Event()


MARKER = ".stopped"  # in a sweep dir: a signal stopped that sweep; one line per signal


def sweep_stopped(sweep_dir: Path | None = None) -> bool:
    """Whether a signal stopped this sweep: in this process, or, for jobs in other processes
    (Ray's workers, on this host or another), through the marker that `forward_stops` leaves
    in the sweep dir."""
    return STOPPED.is_set() or (sweep_dir is not None and (Path(sweep_dir) / MARKER).exists())


def _mark_stop(sweep_dir: Path, signal_name: str) -> None:
    with open(Path(sweep_dir) / MARKER, "a") as marker:
        marker.write(signal_name + "\n")


def forward_stops(sweep_dir: Path) -> None:
    """For a sweep whose jobs run in other processes (the Ray launcher, locally or on a
    cluster): the signals of this driver are blocked, so that the Ray processes it starts
    inherit the block and a Ctrl-C in the terminal does not kill them and their jobs mid-step.
    A thread takes each signal and adds a line to the sweep dir's marker. Every running job
    watches the marker (`stop_requests`) and takes each new line as a signal of its own: the
    first checkpoints and ends it `interrupted`, a second stops it at once. Jobs not started yet
    see the marker and do not start. This reaches every host that shares the sweep dir, as a
    Ray cluster's nodes must (README, Sweeps). Call from the main thread before the launcher
    starts Ray."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def forward():
        while True:
            signum = signal.sigwait(SIGNALS)
            STOPPED.set()
            _mark_stop(sweep_dir, signal.Signals(signum).name)

    threading.Thread(target=forward, name="forward-stops", daemon=True).start()


def restore_signals() -> None:
    """The driver takes signals again once its sweep's jobs have returned."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def stop_between_jobs(sweep_dir: Path) -> None:
    """Between a sweep's jobs no run holds the signals: a signal there stops the sweep, and
    leaves the marker that the next run of it sees as soon as it takes the signals."""
    def stop_sweep(signum, frame):
        STOPPED.set()
        _mark_stop(sweep_dir, signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, stop_sweep)


class StopNow(BaseException):
    """Raised from the signal handler. A BaseException, so that no `except Exception` between
    the signal and the runner can swallow it. `signal_name`: the signal, "" for a sweep's stop."""

    def __init__(self, message: str, signal_name: str = ""):
        super().__init__(message)
        self.signal_name = signal_name


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
            raise StopNow(f"{self.signal_name} during set-up", self.signal_name)
        if self.is_set():
            raise StopNow(f"a second {self.signal_name}", self.signal_name)
        self.set()


@contextmanager
def stop_requests(sweep_dir: Path | None = None):
    """A StopRequest that SIGTERM, SIGINT and SIGUSR2 drive while the block runs (main thread only: a
    run started from another thread leaves the process's signals alone). A run whose sweep
    (`sweep_dir`) was stopped before it took the signals stops at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, request.handle)
    # A Ray worker inherits its driver's blocked signals (forward_stops): a run takes them.
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    done = threading.Event()
    try:
        if sweep_dir is not None and (Path(sweep_dir) / MARKER).exists():
            raise StopNow("a stop of its sweep")
        if sweep_dir is not None:
            threading.Thread(target=_watch, args=(Path(sweep_dir) / MARKER, done),
                             name="watch-sweep-stop", daemon=True).start()
        yield request
    finally:
        done.set()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(marker: Path, done: threading.Event, every_s: float = 0.5) -> None:
    """Each line added to the sweep's marker is a SIGTERM to this process, which the run's
    handler takes as any other signal: the sweep's driver may be on another host."""
    seen = 0
    while not done.wait(every_s):
        try:
            lines = marker.read_text().count("\n")
        except OSError:  # no stop yet
            continue
        for _ in range(lines - seen):
            os.kill(os.getpid(), signal.SIGTERM)
        seen = lines
