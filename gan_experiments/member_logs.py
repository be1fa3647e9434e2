"""A fused group's log lines in its members' own log files.

Hydra gives a job one log file, `<run dir>/<job name>.log`. A fused group is many jobs in one
process, so `per_member` puts one such file in each member's run folder in place of Hydra's
one, and `writing_to` says whose lines follow: a member's own (its set-up, resume, metrics,
divergence) go to its file only; lines about the whole group go to every member it trains.
A member whose start was refused or skipped gets no line it did not cause, so its folder is
left as it was."""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# The run folders whose logs the current lines belong to; None: every member's.
_writing_to: ContextVar[tuple[Path, ...] | None] = ContextVar("writing_to", default=None)


@contextmanager
def writing_to(run_dirs: Iterable[Path]) -> Iterator[None]:
    """Within this block, log lines go to these members' files (without `per_member`: nowhere
    else than they went)."""
    token = _writing_to.set(tuple(run_dirs))
    try:
        yield
    finally:
        _writing_to.reset(token)


class _MemberFiles(logging.Handler):
    """One file per member, written as `template` writes its one (format, level, encoding); each
    file is created at its first line, as Hydra's job log is (`delay`)."""

    def __init__(self, template: logging.FileHandler, run_dirs: list[Path]):
        super().__init__(template.level)
        name = Path(template.baseFilename).name
        self.files = {}
        for run_dir in run_dirs:
            handler = logging.FileHandler(run_dir / name, encoding=template.encoding, delay=True)
            handler.setFormatter(template.formatter)
            self.files[run_dir] = handler

    def emit(self, record: logging.LogRecord) -> None:
        to = _writing_to.get()
        for run_dir in self.files if to is None else to:
            if run_dir in self.files:
                self.files[run_dir].handle(record)

    def close(self) -> None:
        for handler in self.files.values():
            handler.close()
        super().close()


@contextmanager
def per_member(run_dirs: list[Path]) -> Iterator[None]:
    """Within this block, the root logger's file (Hydra's job log, configured for one of the
    group's jobs) is one file per member, in each member's run folder."""
    root = logging.getLogger()
    # Hydra's job_logging names its file handler "file"; other file handlers are left alone.
    hydra_files = [h for h in root.handlers if isinstance(h, logging.FileHandler) and h.name == "file"]
    if not hydra_files:
        yield
        return
    members = _MemberFiles(hydra_files[0], run_dirs)
    for handler in hydra_files:
        root.removeHandler(handler)
        handler.close()
    root.addHandler(members)
    try:
        yield
    finally:
        root.removeHandler(members)
        members.close()
