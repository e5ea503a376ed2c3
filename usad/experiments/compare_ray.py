"""``usad.compare --ray [ADDRESS]``: the (method, category) jobs as Ray tasks (requirements-ray.txt).

Each job is one task asking for one GPU when the run is on CUDA (``device`` cuda, or auto on a cluster that
has GPUs) and one CPU otherwise; Ray places them. A task runs ``compare_jobs.run_one``: the same job as a
serial run, with the same stamp, so finished jobs are not submitted at all and a task interrupted halfway
reruns next time. Each task returns its stamp; the driver gathers the rows into table1.json.

ADDRESS: none (``--ray``) starts a local Ray instance on this machine (all its CPUs and GPUs); ``auto``
joins the cluster running here (``ray start --head``); ``ray://HOST:10001`` a remote one through Ray Client.
The tasks read the data and write predictions and model files by path, so on a cluster of several machines
``data.root``, ``paths.models``, ``paths.results`` and this repository must be at the same path on every
node (a shared file system). Workers find the ``usad`` package through ``PYTHONPATH`` (this repository) and
run in the driver's working directory, so relative paths in the config mean what they mean here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from usad.core.config import REPO_ROOT
from usad.core.errors import UsadError

log = logging.getLogger("usad")

LOCAL = "local"   # --ray without an address


class RayError(UsadError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def job_task(cfg, name: str, retrain: bool, cwd: str, where: dict) -> dict:
    """The body of one Ray task (in a worker process): ``run_one`` in the driver's working directory."""
    from usad.core.cli import setup_logging
    from usad.experiments.compare_jobs import run_one

    setup_logging()
    if Path(cwd).is_dir():
        os.chdir(cwd)
    return run_one(cfg, name, retrain, where)


def connect(address: str):
    """The ``ray`` module, initialised (an instance already initialised in this process is used as it is)."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install -r requirements-ray.txt") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == LOCAL else address, runtime_env=runtime_env(),
                     log_to_driver=True, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayError(f"cannot start or reach Ray at {address!r}: {e}") from None
    return ray


def runtime_env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def wants_gpu(cfg, ray) -> bool:
    """One GPU per task when the run is on CUDA: ``device`` cuda[:N], or auto on a cluster with GPUs."""
    if cfg.device.startswith("cuda"):
        return True
    return cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0


def run_on_ray(address: str, jobs: dict, retrain: bool, where: dict, stop_on_error: bool = True) -> dict:
    """Run ``jobs`` ({key: (cfg, method name)}) as Ray tasks; returns {key: stamp} once every task is done.
    A task's UsadError is raised here as itself (one message) and the tasks still running are cancelled;
    without ``stop_on_error`` it is returned as that key's result and the other tasks go on."""
    if not jobs:
        return {}
    ray = connect(address)
    first_cfg = next(iter(jobs.values()))[0]
    gpu = wants_gpu(first_cfg, ray)
    task = ray.remote(job_task).options(num_gpus=1 if gpu else 0, num_cpus=1, runtime_env=runtime_env(),
                                        max_retries=0)
    cwd = os.getcwd()
    refs = {task.remote(cfg, name, retrain, cwd, where): key for key, (cfg, name) in jobs.items()}
    log.info("ray: %d jobs submitted (%s per job)", len(refs), "1 GPU" if gpu else "1 CPU")
    done, pending = {}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        key = refs[ready[0]]
        try:
            done[key] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, UsadError) and not stop_on_error:
                done[key] = cause
                continue
            for ref in pending:
                ray.cancel(ref)
            if isinstance(cause, UsadError):
                raise cause from None
            raise
        log.info("ray: job %s finished (%d of %d)", key, len(done), len(refs))
    return done
