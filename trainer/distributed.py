"""Several training processes on one run, with torch.distributed (DistributedDataParallel).

Launch (every process runs the same command line; torchrun sets RANK, WORLD_SIZE, ...):

    python -m trainer fit --nproc 2 --data digits --out runs/d2      # this machine: starts torchrun
    torchrun --nproc-per-node 2 -m trainer fit --data digits --out runs/d2      # the same, by hand
    torchrun --nnodes 2 --node-rank R --nproc-per-node 4 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m trainer fit ...            # several machines (README)

How the work is shared among the W processes ("ranks"; this one is rank r):
  - Every rank draws the same permutation and the same noise eps from the same generators,
    so each global batch (--batch-size samples) is exactly the batch one process would use,
    with the same eps for each sample. Rank r takes its contiguous share of the batch's rows.
  - A share's loss is -sum(objective) * W / b, b = the global batch's size. DDP averages the
    W ranks' gradients, which gives the gradient of -mean(objective) over the global batch:
    the single process's gradient, also for a last batch that does not split evenly.
  - After each step the ranks all-reduce two flags, "loss not finite" and "stop asked"
    (SIGTERM, the app's Cancel), so that all ranks stop at the same step.
  - Metrics: training sums are all-reduced. The test split is evaluated by elbo.evaluate with
    its batches dealt round-robin to the ranks, each rank drawing every batch's eps in order
    (a few numbers per sample), so the test numbers match one process up to rounding.
  - Rank 0 alone writes the run folder (api.fit). The other ranks read nothing from it: the
    resolved config, weights, Adam state, generators and counters come from rank 0 by
    broadcast when training starts, so --resume needs no file system shared between machines.

Backends: gloo on CPU; on CUDA nccl (with gloo beside it for the small CPU messages). On
CUDA each rank uses the GPU of its local rank, so a machine needs a GPU for each of its
processes: --device cuda refuses fewer, and --device auto then trains on the CPUs (see
rank_device_for). The ranks draw the same noise from the same seed on GPUs of one model;
on mixed models CUDA's random kernels may split the work differently, which changes the
noise but not the correctness of the gradient (each rank uses the eps of its own rows).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import RunConfig
from .data import Dataset, load_dataset
from .elbo import elbo_terms, evaluate
from .errors import TrainerError
from .model import VAE
from .train import NO_GPU, Callbacks, Trainer, pick_device, set_threads, test_metrics


class PeersLost(TrainerError):
    """Another process of the run stopped (its own message says why), or none could be reached."""


@dataclass
class Dist:
    rank: int  # this process, 0..world_size-1; rank 0 writes the run folder
    world_size: int  # processes training the run
    local_rank: int  # this process among those on its machine (its GPU with --device cuda)
    backend: str  # "gloo" or "cpu:gloo,cuda:nccl"
    device: torch.device  # where this rank trains: cuda:<local_rank>, or cpu

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


_current: Dist | None = None
_settings_sent = False  # rank 0 has sent the run's settings (make_trainer): training has begun


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_env(device_name: str = "auto") -> Dist | None:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Returns None in a single process (also under
    torchrun with one process), so that path stays exactly the plain one."""
    global _current
    if _current is not None:
        return _current
    if not launched_by_torchrun():
        return None
    rank, world = env_rank(), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = rank_device_for(device_name, local_rank, local_world, n_gpus)  # before joining: no peer waits
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as e:
        raise PeersLost(f"cannot join the other training processes ({_first_line(e)}): check "
                        "--rdzv-endpoint (or MASTER_ADDR/MASTER_PORT) and that every node started") from None
    atexit.register(shutdown)
    _current = Dist(rank, world, local_rank, backend, device)
    return _current


def current() -> Dist | None:
    """The process group this process joined, or None when it trains alone."""
    return _current


def shutdown() -> None:
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


def exit_process(status: int) -> None:
    """End a process of a group: leave the group, flush the output, and exit at once with
    `status`, without the interpreter's finalization. In finalization torch's C++ teardown
    sometimes aborted a rank after its run had ended well and its group was destroyed
    ("terminate called without an active exception", SIGABRT, no Python frame), and the
    launcher then reported the run failed: 4 of 121 two-process runs of the tests' settings
    on this machine, at 08889b7 and after it; none in 160 with this exit. Everything the run
    writes is already on disk (atomic writes): finalization has nothing left to do."""
    shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def rank_device_for(device_name: str, local_rank: int, local_world: int, n_gpus: int) -> torch.device:
    """The device of the rank `local_rank` of `local_world` processes on a machine with
    `n_gpus` GPUs, for --device `device_name`: its own GPU, cuda:<local_rank>, when the run
    trains on CUDA, else the CPU. CUDA needs a GPU for each process on the machine: --device
    cuda with fewer is refused (TrainerError), --device auto then takes the CPUs."""
    if device_name == "cuda" and local_world > n_gpus:
        if n_gpus == 0:
            raise TrainerError(NO_GPU)
        raise TrainerError(f"--device cuda with {local_world} processes on this machine needs a GPU for each, "
                           f"and it has {n_gpus}: use --nproc {n_gpus}, or --device cpu")
    if device_name != "cpu" and 0 < local_world <= n_gpus:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def run_device(device_name: str) -> torch.device:
    """Where this process trains: its rank's device in a process group, else pick_device's."""
    return _current.device if _current is not None else pick_device(device_name)


# -- collectives ---------------------------------------------------------------------------------

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


@contextmanager
def collective(what: str):
    """Turn a failed collective (a peer process died: gloo 'Connection closed by peer') into
    PeersLost, a one-line TrainerError, instead of a traceback."""
    try:
        yield
    except RuntimeError as e:
        raise PeersLost(f"{what}: another training process stopped ({_first_line(e)}); "
                        "its own message says why") from None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place (e.g. metric sums); returns it."""
    with collective("summing metrics"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(*flags: bool) -> list[bool]:
    """For each flag: whether it is set on at least one rank (an all-reduce of a CPU tensor)."""
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    with collective("exchanging stop flags"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def barrier() -> None:
    with collective("waiting for the other processes"):
        dist.barrier()


def broadcast_json(obj: Any, d: Dist) -> Any:
    """Rank 0's JSON-able `obj` on every rank (plain JSON bytes, nothing pickled)."""
    data = json.dumps(obj).encode() if d.rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    with collective("receiving the run's settings"):
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if d.rank == 0 else \
            torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.numpy()).decode())


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, d: Dist) -> dict[str, torch.Tensor]:
    """Rank 0's named CPU tensors on every rank (names, shapes and dtypes sent as JSON)."""
    header = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in (tensors or {}).items()}
    header = broadcast_json(header if d.rank == 0 else None, d)
    out = {}
    with collective("receiving the training state"):
        for name, (shape, dtype) in header.items():
            t = tensors[name].contiguous() if d.rank == 0 else torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(t, src=0)
            out[name] = t
    return out


def share(b: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of a b-row global batch that `rank` takes: contiguous, sizes differing
    by at most one (torch.tensor_split's rule); empty when b < world_size for some ranks."""
    q, extra = divmod(b, world_size)
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (1 if rank < extra else 0)


# -- training ------------------------------------------------------------------------------------

class _ElboTerms(nn.Module):
    """The VAE's ELBO terms as a forward() so that DistributedDataParallel can wrap them."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        return elbo_terms(self.vae, x, eps=eps)


class DistributedTrainer(Trainer):
    """A Trainer whose steps are shared by the ranks of the process group (see the module doc)."""

    fast_step_allowed = False  # each rank's share goes through DDP and autograd (reference_step)

    def __init__(self, cfg: RunConfig, data: Dataset, d: Dist):
        super().__init__(cfg, data, d.device)
        self.dist = d
        with collective("starting DistributedDataParallel"):
            self.ddp = DistributedDataParallel(
                _ElboTerms(self.model), device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sync_from_rank0(self) -> None:
        """Rank 0's weights, Adam state, generators and counters on every rank (after a
        resume rank 0 alone has read them from the run folder)."""
        state = broadcast_tensors(
            {**{f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()},
             **self.state_tensors()} if self.dist.rank == 0 else None, self.dist)
        counters = broadcast_json({"epoch": self.epoch, "step": self.step}, self.dist)
        if self.dist.rank != 0:
            self.model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
            self.load_state_tensors({k: v for k, v in state.items() if not k.startswith("model.")})
            self.epoch, self.step = counters["epoch"], counters["step"]

    # Trainer.run's loop, with each global batch shared out:
    def before_run(self) -> None:
        self.sync_from_rank0()

    def batch_terms(self, batch: torch.Tensor, eps: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """This rank's share of the global batch (and of its noise eps, drawn alike on every
        rank). A rank without rows this step still takes part in DDP's gradient all-reduce:
        it runs one row with weight 0 (a zero gradient). DDP averages the gradients over the
        W ranks, so a weight of W/b makes the result the gradient of the global batch mean."""
        b, W = len(batch), self.dist.world_size
        lo, hi = share(b, W, self.dist.rank)
        rows, weight = (slice(lo, hi), W / b) if hi > lo else (slice(0, 1), 0.0)
        xb = self.x_train.index_select(0, batch[rows])
        return self.ddp(xb, eps[:, rows]), weight

    def backward(self, loss: torch.Tensor) -> None:
        with collective("averaging gradients"):
            loss.backward()

    def agree(self, not_finite: bool, stop: bool) -> tuple[bool, bool]:
        not_finite, stop = any_rank(not_finite, stop)  # one all-reduce a step, both flags in it
        return not_finite, stop

    def end_of_epoch(self, sums: torch.Tensor) -> dict:
        all_reduce_sum(sums)
        share = evaluate(self.model, self.x_test, 1, seed=self.cfg.train.seed + 3,
                         share=(self.dist.rank, self.dist.world_size))
        return test_metrics(share.reduced(all_reduce_sum))


# -- the ranks other than 0 ----------------------------------------------------------------------

def follow(cfg: RunConfig, d: Dist, stop=None, handle_signals: bool = False) -> str:
    """What a rank other than 0 does in api.fit: take rank 0's settings, load the data,
    train its shares, write nothing. Returns "done" or "cancelled" as rank 0 does."""
    settings = broadcast_json(None, d)  # rank 0's settings (the saved ones on --resume), or why it stopped
    if "abort" in settings:
        raise TrainerError(f"stopped with rank 0: {settings['abort']}")
    cfg = RunConfig.from_dict(settings)
    stop = stop if stop is not None else threading.Event()
    if handle_signals:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    set_threads(cfg.train.threads)
    trainer = DistributedTrainer(cfg, load_dataset(cfg.data, cfg.train.seed), d)
    return trainer.run(Callbacks(should_stop=stop.is_set))


def make_trainer(cfg: RunConfig, data: Dataset, device: torch.device) -> Trainer:
    """api.fit's trainer: a plain Trainer in a single process; on rank 0 of a process group,
    send the settings to the other ranks (see follow) and return a DistributedTrainer."""
    global _settings_sent
    d = current()
    cfg.train.world_size = 1 if d is None else d.world_size  # recorded in config.json
    if d is None:
        return Trainer(cfg, data, device)
    broadcast_json(cfg.to_dict(), d)
    _settings_sent = True
    return DistributedTrainer(cfg, data, d)


@contextmanager
def stop_followers_on_error():
    """Around rank 0's part of api.fit: if it fails before sending the settings (a run folder
    already in use, bad data...), send the other ranks its message instead, so that they stop
    at once with the same exit status. A no-op in a single process."""
    try:
        yield
    except BaseException as e:
        d = current()
        if d is not None and d.rank == 0 and not _settings_sent:
            message = str(e) if isinstance(e, TrainerError) else f"stopped by an unexpected {type(e).__name__}"
            try:
                broadcast_json({"abort": message}, d)
            except PeersLost:
                pass
        raise


# -- python -m trainer fit --nproc N --------------------------------------------------------------

def launch(nproc: int, argv: list[str], threads: int = 0) -> int:
    """Run `python -m trainer ARGV` (a fit) in `nproc` processes on this machine through
    torchrun (torch.distributed.run, standalone rendezvous on a free local port). `threads`:
    each process's torch threads as the run's settings give them (0: the cores shared out).
    Returns the exit status: 0, or rank 0's (else the first failed process's) status; 130
    when cancelled."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):  # the workers speak for themselves
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its banner
    if not threads:
        # "all cores" in each of nproc processes would oversubscribe the CPU: share them out
        argv = [*argv, "--threads", str(max(1, (os.cpu_count() or 1) // nproc))]
    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--module", "trainer", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        # Rank 0 speaks for the run; else the process that failed first. A rank that torchrun
        # stopped (SIGTERM, exit code < 0) after another had failed is not the cause: when
        # rank 0 reported an error and exited a moment after rank 1, torchrun may have
        # signalled rank 0 on its way out.
        failures = e.failures
        exited = {r: f.exitcode for r, f in failures.items() if f.exitcode > 0}
        if not exited:
            return 1  # every failed process was killed by a signal
        return exited[0] if 0 in exited else exited[min(exited, key=lambda r: failures[r].timestamp)]
    except SignalException:  # Ctrl-C or SIGTERM to this launcher: torchrun passed it on to the ranks,
        return 130  # which stopped after the same step (rank 0 marked the run cancelled)
    return 0


def strip_nproc(argv: list[str]) -> list[str]:
    """argv without its --nproc N / --nproc=N (the workers' command line)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


__all__ = ["Dist", "DistributedTrainer", "PeersLost", "init_from_env", "current", "make_trainer", "follow",
           "launch", "share", "all_reduce_sum", "any_rank", "barrier", "broadcast_json"]
