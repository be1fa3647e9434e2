"""Stopping a run on request (SIGTERM from a scheduler, SIGINT from Ctrl-C, SIGUSR2 that
submitit asks SLURM to send before a job's time limit or at preemption, SIGHUP when the
terminal or SSH session that started it closes).

While the run sets up (loading data, training the evaluation classifier) there is nothing to
checkpoint, so the first signal stops it at once. Once it trains, the first signal asks the loop
to stop at the next step boundary, after writing a checkpoint; a second signal stops at once,
for a step or an evaluation that takes too long to wait for."""

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP)


# Set by any stop signal in this process. A sweep whose jobs run in this process (Hydra's basic
# launcher) starts no further job once it is set: one Ctrl-C ends the whole sweep.
STOPPED = threading.Event()


MARKER = ".stopped"  # in a sweep dir: a signal stopped that sweep; one line per signal


def sweep_stopped(sweep_dir: Path | None = None) -> bool:
    """Whether a signal stopped this sweep: in this process, or, for jobs in other processes
    (Ray's workers, on this host or another), through the marker that `stop_sweep_on_signals` leaves
    in the sweep dir."""
    return STOPPED.is_set() or (sweep_dir is not None and (Path(sweep_dir) / MARKER).exists())


def _mark_stop(sweep_dir: Path, signal_name: str) -> None:
    with open(Path(sweep_dir) / MARKER, "a") as marker:
        marker.write(signal_name + "\n")


_DRIVER_HANDLERS: dict = {}  # what stop_sweep_on_signals replaced, for restore_signals


def stop_sweep_on_signals(sweep_dir: Path) -> None:
    """A signal to a sweep's driver process, while no run holds the signals, stops the whole
    sweep: it adds a line to the sweep dir's marker. Every running job watches the marker
    (`stop_requests`) and counts each line as a signal to it: the first checkpoints and ends it
    `interrupted`, a second stops it at once. Jobs not started yet see the marker and do
    not start. Through the sweep dir this reaches the jobs of every host that shares it, as a
    Ray cluster's nodes must (README, Sweeps).

    For the driver process only: Hydra's basic launcher (between its jobs, which run in it) and
    the Ray launcher's driver (for the whole sweep; call it after ray.init, which installs a
    SIGTERM handler that exits). Ray blocks SIGINT in its own processes, so a Ctrl-C in the
    terminal leaves them running."""
    terminal = terminal_fds()

    def stop_sweep(signum, frame):
        STOPPED.set()
        if signum == signal.SIGHUP:
            leave_the_terminal(terminal)
        _mark_stop(sweep_dir, signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in taken_signals():
            _DRIVER_HANDLERS.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, stop_sweep)


def restore_signals() -> None:
    """The handlers stop_sweep_on_signals replaced, once the sweep's jobs have returned."""
    if threading.current_thread() is threading.main_thread():
        while _DRIVER_HANDLERS:
            signal.signal(*_DRIVER_HANDLERS.popitem())


class StopNow(BaseException):
    """Raised from the signal handler. A BaseException, so that no `except Exception` between
    the signal and the runner can swallow it. `signal_name`: the signal, "" for a sweep's stop."""

    def __init__(self, message: str, signal_name: str = ""):
        super().__init__(message)
        self.signal_name = signal_name


def terminal_fds() -> list[int]:
    """Which of stdout and stderr are a terminal, asked while it is there: once it hangs up,
    isatty() says no."""
    return [fd for fd in (1, 2) if os.isatty(fd)]


def leave_the_terminal(fds: list[int]) -> None:
    """After SIGHUP the terminal is gone, and a write to it (a progress bar, a log line) fails
    with EIO: output that went to it (`fds`) goes nowhere from now on, as under nohup. The
    run's log file keeps every line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def taken_signals() -> list[signal.Signals]:
    """SIGNALS, less SIGHUP where it is ignored: a run started under nohup outlives its terminal."""
    return [sig for sig in SIGNALS if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN]


class StopRequest(threading.Event):
    """Set by the first signal once training runs; `setting_up` until then. `count`: the
    signals taken, which the sweep-stop watcher compares with its marker's lines."""

    def __init__(self):
        super().__init__()
        self.setting_up = True
        self.signal_name = ""
        self.count = 0
        self.closing = False  # the block is ending: a late signal changes nothing
        self.terminal = terminal_fds()

    def handle(self, signum, frame) -> None:
        STOPPED.set()
        if signum == signal.SIGHUP:
            leave_the_terminal(self.terminal)
        if self.closing:
            return
        self.count += 1
        self.signal_name = signal.Signals(signum).name
        if self.setting_up:
            raise StopNow(f"{self.signal_name} during set-up", self.signal_name)
        if self.is_set():
            raise StopNow(f"a second {self.signal_name}", self.signal_name)
        self.set()


@contextmanager
def stop_requests(sweep_dir: Path | None = None):
    """A StopRequest that SIGTERM, SIGINT, SIGUSR2 and SIGHUP drive while the block runs (main thread only: a
    run started from another thread leaves the process's signals alone). For a job of a sweep
    (`sweep_dir`), a stop of the sweep counts as a signal: one made before the block stops it at
    once, and each one made during it (a line of the sweep's marker) is a SIGTERM to this process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    signals = taken_signals()
    previous = {sig: signal.getsignal(sig) for sig in signals}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask as it is
    done, sending = threading.Event(), threading.Lock()
    try:
        for sig in signals:
            signal.signal(sig, request.handle)
        # A Ray worker inherits a blocked SIGINT from Ray's raylet: a run takes it.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        if sweep_dir is not None and (Path(sweep_dir) / MARKER).exists():
            raise StopNow("a stop of its sweep")
        if sweep_dir is not None:
            threading.Thread(target=_watch, args=(Path(sweep_dir) / MARKER, request, done, sending),
                             name="watch-sweep-stop", daemon=True).start()
        yield request
    finally:
        with sending:  # no SIGTERM from the watcher after this
            done.set()
        request.closing = True
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(marker: Path, request: StopRequest, done: threading.Event, sending: threading.Lock,
           every_s: float = 0.5) -> None:
    """Each line of the sweep's marker stands for a signal to the sweep, whose driver may be
    on another host. Where the run has taken fewer signals than that, it gets a SIGTERM, which
    its handler takes as any other signal. A Ctrl-C in a terminal reaches a local job directly
    as well as through the marker: counting, not forwarding each line, keeps that one signal."""
    while not done.wait(every_s):
        try:
            lines = marker.read_text().count("\n")
        except OSError:  # no stop yet
            continue
        if lines > request.count:
            with sending:
                if not done.is_set():
                    os.kill(os.getpid(), signal.SIGTERM)
