"""Long operations as jobs: queued in the store, run as asyncio tasks, with progress and cancel.

A job kind is data (name, parameter check, coroutine). The runner persists every state change
and progress line before anyone can observe it, so `cloudctl job watch` and a restarted daemon
see the same history. Jobs that were running when the daemon died are marked failed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudctl.state import Conflict, Job, JobState, NotFound, StateStore
from cloudctl.state.store import Change

log = logging.getLogger(__name__)


class JobError(Exception):
    """A job failed for a reason the operator can act on; the message is shown as its error."""


class JobContext:
    """What a running job may use: its id, the store, and a progress reporter."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.job = job
        self.store = runner.store
        self._runner = runner

    async def progress(self, line: str) -> None:
        await self.store.add_progress(self.job.id, line)
        self._runner.notify(self.job.id)


@dataclass(frozen=True)
class JobKind:
    name: str
    check_params: Callable[[dict[str, Any]], dict[str, Any]]
    run: Callable[[JobContext, dict[str, Any]], Awaitable[Any]]
    # Kinds the API may start directly by name; others are started by their own endpoints.
    submittable: bool = False


def _check_test_params(params: dict[str, Any]) -> dict[str, Any]:
    allowed = {"steps", "interval", "fail_at"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for a test job")
    steps = params.get("steps", 5)
    interval = params.get("interval", 1.0)
    fail_at = params.get("fail_at")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise ValueError("steps must be an integer from 1 to 10000")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not 0 <= interval <= 60
    ):
        raise ValueError("interval must be a number of seconds from 0 to 60")
    if fail_at is not None and (isinstance(fail_at, bool) or not isinstance(fail_at, int)):
        raise ValueError("fail_at must be an integer step number")
    return {"steps": steps, "interval": float(interval), "fail_at": fail_at}


async def _run_test(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Counts steps slowly: exercises progress, watch, cancel and failure end to end."""
    steps = params["steps"]
    for step in range(1, steps + 1):
        if step == params["fail_at"]:
            raise JobError(f"failed at step {step} as asked (fail_at={step})")
        await ctx.progress(f"step {step}/{steps}")
        await asyncio.sleep(params["interval"])
    return {"steps": steps}


TEST_JOB = JobKind("test", _check_test_params, _run_test, submittable=True)


class JobRunner:
    def __init__(self, store: StateStore, kinds: list[JobKind]) -> None:
        self.store = store
        self.kinds = {kind.name: kind for kind in kinds}
        self._tasks: dict[int, asyncio.Task] = {}
        self._changed: dict[int, asyncio.Event] = {}
        self._cancel_notes: dict[int, str] = {}

    async def recover(self) -> list[int]:
        """Mark jobs left unfinished by a previous daemon as failed; return their ids."""
        ids = await self.store.fail_unfinished_jobs(
            "cloudctld stopped while this job was unfinished; check what it left and run it again"
        )
        for job_id in ids:
            log.warning("job %d was unfinished when cloudctld stopped; marked failed", job_id)
        return ids

    async def submit(self, kind_name: str, params: dict[str, Any], change: Change) -> Job:
        kind = self.kinds.get(kind_name)
        if kind is None:
            raise NotFound(
                f"no job kind {kind_name!r}; known kinds: {', '.join(sorted(self.kinds))}"
            )
        checked = kind.check_params(params)
        job = await self.store.create_job(kind.name, checked, change)
        self._tasks[job.id] = asyncio.create_task(self._run(kind, job), name=f"job-{job.id}")
        log.info("job %d (%s) queued by %s", job.id, kind.name, change.actor)
        return job

    async def _run(self, kind: JobKind, job: Job) -> None:
        try:
            job = await self.store.set_job_state(job.id, JobState.RUNNING)
            self.notify(job.id)
            result = await kind.run(JobContext(self, job), job.params)
        except asyncio.CancelledError:
            note = self._cancel_notes.pop(job.id, "cancelled")
            await self._finish(job.id, JobState.CANCELLED, error=note)
        except JobError as exc:
            await self._finish(job.id, JobState.FAILED, error=str(exc))
        except Exception as exc:
            log.exception("job %d (%s) crashed", job.id, kind.name)
            await self._finish(job.id, JobState.FAILED, error=f"internal error: {exc!r}")
        else:
            await self._finish(job.id, JobState.SUCCEEDED, result=result)
        finally:
            self._tasks.pop(job.id, None)

    async def _finish(self, job_id: int, state: JobState, **outcome: Any) -> None:
        job = await self.store.set_job_state(job_id, state, **outcome)
        log.info("job %d %s%s", job_id, state.value, f": {job.error}" if job.error else "")
        self.notify(job_id)

    async def cancel(self, job_id: int, change: Change) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        task = self._tasks.get(job_id)
        if job.state.finished or task is None:
            raise Conflict(f"job {job_id} is already {job.state.value}")
        note = f"cancelled by {change.actor}" + (f": {change.reason}" if change.reason else "")
        self._cancel_notes[job_id] = note
        task.cancel()
        await asyncio.wait([task])
        return self.store.get_job(job_id) or job

    def notify(self, job_id: int) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_for_change(self, job_id: int, after: int, timeout: float) -> None:
        """Return when the job has progress past `after`, has finished, or `timeout` passed."""
        event = self._changed.setdefault(job_id, asyncio.Event())
        job = self.store.get_job(job_id)
        if job is None or job.state.finished or self.store.job_progress(job_id, after=after):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def shutdown(self) -> None:
        tasks = list(self._tasks.items())
        for job_id, task in tasks:
            self._cancel_notes[job_id] = "cancelled: cloudctld was shut down"
            task.cancel()
        if tasks:
            await asyncio.wait([task for _, task in tasks])
