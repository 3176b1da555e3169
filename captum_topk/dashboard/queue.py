r"""Dashboard mining jobs in the background, one at a time per runs root.

A Streamlit page must not block while a job mines (minutes) and must not let a user start a
dozen jobs that exhaust the machine. :class:`JobQueue` (one per runs root in this process,
:func:`job_queue`) runs submitted jobs on one worker thread, in order; at most
:data:`MAX_PENDING` wait behind the running one (more are refused with the reason). While a job
mines, the worker holds the runs root's job lock (:class:`~captum_topk.runs.lock.RunLock` on
``<runs>/.jobs.lock``), so a second dashboard process on the same root waits its turn (its job
says whose). A job can be cancelled: it stops before its next batch, leaving its snapshot; the
same job submitted again resumes from it.

Two kinds of jobs share the queue: a :class:`~.spec.JobSpec` mines a run
(:func:`~.jobs.mine_job`); a :class:`~.concepts.ConceptJobSpec` learns concepts of a run's
layer (:func:`~.concepts.learn_job`: progress over the images, a cancelled one saves nothing).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..runs.lock import RunLock, RunLockedError
from .concepts import ConceptJobSpec, learn_job
from .jobs import mine_job
from .roots import Roots
from .spec import JobSpec

__all__ = ["Job", "JobQueue", "JobRefused", "job_queue", "MAX_PENDING"]

#: Jobs that may wait behind the running one, per runs root.
MAX_PENDING = 3
_IDS = itertools.count(1)


class JobRefused(RuntimeError):
    r"""The queue is full (the message says what runs and what waits)."""


@dataclass
class Job:
    r"""One submitted job and where it stands.

    Attributes:
        id (int): unique in this process.
        spec (JobSpec or ConceptJobSpec): what it mines, or which concepts it learns.
        status (str): ``"queued"``, ``"waiting"`` (another process mines in this root),
            ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        phase (str), done (int), total (int or None): the last progress report.
        folder (Path or None): the run folder once done (the concepts file of a learning job).
        error (str or None): why it failed, or whom it waits for.
    """

    id: int
    spec: Union[JobSpec, ConceptJobSpec]
    status: str = "queued"
    phase: str = ""
    done: int = 0
    total: Optional[int] = None
    folder: Optional[Path] = None
    error: Optional[str] = None
    submitted: float = field(default_factory=time.time)
    finished: Optional[float] = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "waiting", "running")

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


class JobQueue:
    r"""The background jobs of one runs root (see the module docstring).

    Args:
        roots (Roots): the dashboard's roots.
        retry_s (float): how often a job waiting for another process's lock retries.
    """

    def __init__(self, roots: Roots, retry_s: float = 2.0) -> None:
        self.roots = roots
        self.retry_s = retry_s
        self._jobs: List[Job] = []
        self._cv = threading.Condition()
        self._worker: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ the page's side
    def submit(self, spec: Union[JobSpec, ConceptJobSpec]) -> Job:
        r"""Queue ``spec``; the same spec already queued or running is returned instead.

        Raises:
            JobRefused: :data:`MAX_PENDING` jobs already wait.
        """
        with self._cv:
            for job in self._jobs:
                if job.active and job.spec == spec:
                    return job
            pending = [j for j in self._jobs if j.status in ("queued", "waiting")]
            if len(pending) >= MAX_PENDING:
                running = next((j for j in self._jobs if j.status == "running"), None)
                raise JobRefused(
                    f"{len(pending)} jobs already wait" + (f" behind {running.spec.run_name()}" if running else "")
                    + ": wait for them or cancel one (one job mines at a time per runs root).")
            job = Job(next(_IDS), spec)
            self._jobs.append(job)
            self._cv.notify_all()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name=f"captum-topk jobs {self.roots.runs}",
                                                daemon=True)
                self._worker.start()
            return job

    def jobs(self) -> List[Job]:
        r"""Every job of this process, newest first."""
        with self._cv:
            return list(reversed(self._jobs))

    def cancel(self, job_id: int) -> bool:
        r"""Cancel a queued job, or stop a running one before its next batch. Returns whether
        a job was found still active."""
        with self._cv:
            for job in self._jobs:
                if job.id == job_id and job.active:
                    job.cancel_event.set()
                    if job.status in ("queued", "waiting"):
                        job.status, job.finished = "cancelled", time.time()
                    self._cv.notify_all()
                    return True
        return False

    def wait(self, job: Job, timeout: Optional[float] = None) -> Job:
        r"""Block until ``job`` is no longer active (tests, scripts)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while job.active:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job.id} still {job.status}")
                self._cv.wait(left if left is not None else 1.0)
        return job

    # ------------------------------------------------------------------ the worker
    def _next(self) -> Optional[Job]:
        with self._cv:
            while True:
                job = next((j for j in self._jobs if j.status in ("queued", "waiting")), None)
                if job is not None:
                    return job
                if not self._cv.wait(timeout=60.0):
                    return None  # idle for a minute: the thread ends (a later submit starts another)

    def _set(self, job: Job, **kw) -> None:
        with self._cv:
            for k, v in kw.items():
                setattr(job, k, v)
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                with RunLock(self.roots.runs, ".jobs.lock"):
                    if job.cancel_event.is_set():
                        continue
                    self._set(job, status="running", error=None)

                    def report(phase, done, total, job=job):
                        self._set(job, phase=phase, done=int(done or 0), total=total)

                    if isinstance(job.spec, ConceptJobSpec):
                        folder = learn_job(job.spec, self.roots, progress=report, should_stop=job.cancel_event.is_set)
                        stopped = folder is None
                    else:
                        folder = mine_job(job.spec, self.roots, progress=report, should_stop=job.cancel_event.is_set)
                        stopped = job.cancel_event.is_set() and not (folder / "result.pt").is_file()
                    self._set(job, status="cancelled" if stopped else "done", folder=folder, finished=time.time())
            except RunLockedError as exc:  # another process mines in this root: wait for it
                self._set(job, status="waiting", error=f"waiting: {exc.owner.get('command', '?')} "
                                                          f"(pid {exc.owner.get('pid')}) mines in this root")
                job.cancel_event.wait(self.retry_s)
            except Exception as exc:  # reported on the page, never raised into Streamlit
                self._set(job, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())


_QUEUES: Dict[Path, JobQueue] = {}
_LOCK = threading.Lock()


def job_queue(roots: Roots) -> JobQueue:
    r"""The queue of ``roots.runs`` in this process (created on first use)."""
    key = Path(roots.runs).resolve()
    with _LOCK:
        queue = _QUEUES.get(key)
        if queue is None or queue.roots != roots:
            queue = _QUEUES[key] = JobQueue(roots)
        return queue
