"""One engine switch: work that fans out (ingest parsing and de-identification, encoding) runs in this
process (``local``) or on Ray (``ray``), with identical results.

Ray is an optional dependency (``pip install 'medweave[ray]'``), imported only when the Ray engine is
used; its absence is a clear error. Without an address a local Ray instance starts (``num_cpus``
caps it); with ``address`` (``ray://host:10001``, ``host:6379`` or ``auto``) medweave joins an existing
cluster. Only the driver (the process running the command) opens the store for writing; tasks and
actors read the files they are given (ingest) or the store's blobs (encoding), so on several nodes
those paths must be on a shared file system mounted at the same place.

Results come back in submission order, through a bounded window of tasks in flight (memory does not
grow with the number of tasks), so a Ray run commits exactly what a local run commits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

ENGINES = ("local", "ray")
RAY_HINT = "pip install 'medweave[ray]' (or: pip install 'ray>=2.40')"


class EngineError(RuntimeError):
    """An engine that cannot be used (unknown name, Ray missing, a cluster that cannot be joined)."""


def import_ray():
    """The ``ray`` module, or an EngineError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"--engine ray needs the Ray package, which is not installed: {RAY_HINT}") from exc
    return ray


@dataclass(frozen=True)
class Engine:
    """Where fan-out work runs. ``kind``: ``local`` or ``ray``; ``address``: a Ray cluster to join
    (None: start a local instance); ``num_cpus``: CPUs of a local instance (None: all)."""

    kind: str = "local"
    address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise EngineError(f"unknown engine {self.kind!r}; allowed values: {', '.join(ENGINES)}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise EngineError(f"num_cpus {self.num_cpus}: a local Ray instance needs at least 1 CPU")
        if self.address and self.kind != "ray":
            raise EngineError("an address joins a Ray cluster: use it with --engine ray "
                              "(in a config: kind = \"ray\" in its engine section)")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def ray(self):
        """The ``ray`` module, initialised (joining ``address`` or starting a local instance) once."""
        ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                                      "log_to_driver": False}
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.num_cpus, **kwargs)
            except Exception as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise EngineError(f"cannot start or join {where}: {exc}") from exc
        return ray

    def cpus(self) -> int:
        """CPUs this engine can use: the Ray cluster's total, or this machine's."""
        if self.is_ray:
            return max(1, int(self.ray().cluster_resources().get("CPU", 1)))
        import os

        return os.cpu_count() or 1

    def tasks(self, fn: Callable, shared: Any = None) -> "RayTasks":
        """Submit ``fn(shared, *args)`` as Ray tasks: ``.submit(*args)`` gives a handle whose
        ``.result()`` waits for it. ``shared`` is put in the object store once, not sent per task."""
        ray = self.ray()
        return RayTasks(ray, ray.remote(num_cpus=1, max_retries=2)(fn), ray.put(shared))

    def map_ordered(self, fn: Callable, items: Iterable[tuple], window: int | None = None,
                    shared: Any = None) -> Iterator[Any]:
        """``fn(shared, *args)`` for each ``args`` of ``items``, results in order; on Ray each call is a
        task, at most ``window`` in flight (default: 4 per CPU)."""
        if not self.is_ray:
            for args in items:
                yield fn(shared, *args)
            return
        tasks = self.tasks(fn, shared)
        window = window or 4 * self.cpus()
        pending: deque = deque()
        for args in items:
            pending.append(tasks.submit(*args))
            while len(pending) > window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


    def map_actors(self, cls: type, init_args: tuple, method: str, items: Iterable[tuple],
                   n: int | None = None) -> Iterator[Any]:
        """``getattr(worker, method)(*args)`` for each ``args`` of ``items``, results in order, where
        ``worker = cls(*init_args)`` is built once: here (local), or once in each of ``n`` Ray actors
        (default: one per CPU) that take the items in turn, at most two each in flight."""
        if not self.is_ray:
            worker = cls(*init_args)
            for args in items:
                yield getattr(worker, method)(*args)
            return
        ray = self.ray()
        n = max(1, n or self.cpus())
        actor_cls = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(cls)
        actors: list = []
        pending: deque = deque()
        try:
            for i, args in enumerate(items):
                if len(actors) < n:
                    actors.append(actor_cls.remote(*init_args))
                pending.append(getattr(actors[i % n], method).remote(*args))
                while len(pending) > 2 * n:
                    yield ray.get(pending.popleft())
            while pending:
                yield ray.get(pending.popleft())
        finally:
            for a in actors:
                ray.kill(a)


class _RayHandle:
    def __init__(self, ray, ref):
        self._ray, self._ref = ray, ref

    def result(self):
        return self._ray.get(self._ref)


class RayTasks:
    """A remote function bound to a shared value (see ``Engine.tasks``)."""

    def __init__(self, ray, remote, shared_ref):
        self._ray, self._remote, self._shared = ray, remote, shared_ref

    def submit(self, *args) -> _RayHandle:
        return _RayHandle(self._ray, self._remote.remote(self._shared, *args))


LOCAL = Engine()


def engine_from(kind: str | None = None, address: str | None = None, num_cpus: int | None = None) -> Engine:
    """An Engine from command-line or config values (``kind`` None: ``ray`` when an address is given)."""
    kind = kind or ("ray" if address else "local")
    return Engine(kind, address or None, num_cpus)
