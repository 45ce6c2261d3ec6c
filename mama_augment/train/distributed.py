"""Training on several processes: the torchrun launch, the process group, and the
collectives that the loss and the meta step differentiate through.

One convention makes a run on W processes compute what one process computes on the
same global batch (``tests/test_train_distributed.py`` checks it step by step):

* every global batch is cut into W equal, contiguous slices, rank r taking slice r
  (:func:`local_slice`), so concatenating the ranks' rows in rank order gives the
  single-process batch;
* each rank's objective is the *mean over its own rows*, and every gradient of a
  replicated parameter (model, logit scale, weighting net) is *averaged* across ranks,
  as DDP does;
* embeddings are gathered with :func:`all_gather_with_grad`, whose backward sums the
  gradient that every rank's loss sends to this rank's rows. Negatives are global, and
  a rank's embeddings receive the gradient of *all* ranks' losses, not only its own
  rows' (open_clip's ``gather_with_grad=True``; gathering without a gradient and
  putting the local rows back, with each rank's loss over its own rows, loses the
  terms where this rank's embeddings are another rank's negatives).

With these, sum over ranks of the local objectives = W x the global-batch mean, so the
averaged gradients are exactly the single-process gradients. The collectives' backward
passes are themselves differentiable (they are built from the same autograd
functions), which the meta step's second-order graph needs: the virtual step averages
its gradient with :func:`mean_across_ranks_with_grad` and keeps the graph to ``phi``.

No DistributedDataParallel: the meta step takes ``torch.autograd.grad`` through the
model's sub-modules and through ``functional_call``, which DDP's hooks do not see, so
the real step's gradients are averaged by hand in one flat all-reduce
(:func:`average_gradients`) after the backward.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Sequence

import torch
from torch import nn

from mama_augment.errors import MamaError, UsageError

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500
# How long a rank that finished waits at the end for the others (rank 0 writes the
# run's last files after the last collective); past it, it warns and leaves (gloo's
# teardown still waits, up to its own timeout, for the barrier it left pending).
SHUTDOWN_WAIT_S = 1800.0
# The gloo group the ranks wait in before leaving (see ``shutdown_distributed``); None
# with a gloo default group, which serves itself.
_LEAVE_GROUP: dict = {}


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits, as torchrun describes it in the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_from_environ(environ: dict | None = None) -> DistributedEnv:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` as set by torchrun (one process without them)."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise MamaError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from exc
    if world_size < 1 or not 0 <= rank < world_size:
        raise MamaError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    return DistributedEnv(rank, world_size, local_rank)


def init_distributed(device: str = "auto", environ: dict | None = None) -> DistributedEnv:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU) and pin this
    process to its GPU; one process (no torchrun) returns rank 0 of 1 and does nothing."""
    env = env_from_environ(environ)
    if not env.is_distributed:
        return env
    import torch.distributed as dist

    if not dist.is_available():
        raise MamaError("this PyTorch build has no torch.distributed; train on one process")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available")
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs: "
                "--nproc-per-node must not exceed the GPUs of a node"
            )
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    else:
        backend = dist.get_backend()
    if backend != "gloo" and "group" not in _LEAVE_GROUP:
        # Made now, while every rank is here: at the end a rank may wait longer than
        # NCCL's watchdog allows, and gloo waits as long as it is told.
        try:
            _LEAVE_GROUP["group"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=SHUTDOWN_WAIT_S))
        except Exception as exc:  # noqa: BLE001 - ranks then leave without waiting
            log.warning("no gloo group to leave together (%s); ranks will leave one by one", exc)
    return DistributedEnv(env.rank, env.world_size, env.local_rank, backend)


def shutdown_distributed(wait: bool = True, timeout_s: float = SHUTDOWN_WAIT_S) -> None:
    """Leave the process group; with ``wait`` (a run that finished), first wait up to
    ``timeout_s`` for every rank to get here.

    Without the wait, a rank that finished first tore its group down while rank 0 was
    still writing its last files, and once (in a test suite run of many) gloo's
    teardown then aborted that finished rank (SIGABRT, "terminate called without an
    active exception"), a teardown beside a peer still at work (the race inside gloo
    did not reproduce). Ranks that leave together rule it out. The wait runs on
    gloo (the default group, or one made at ``init_distributed`` beside NCCL), whose
    timeout is ours: NCCL's watchdog would kill a rank that waits longer than its own.
    A run that failed passes ``wait=False``: its peers may never get here.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait and dist.get_world_size() > 1:
        _wait_for_every_rank(dist, timeout_s)
    _LEAVE_GROUP.clear()
    dist.destroy_process_group()


def _wait_for_every_rank(dist, timeout_s: float) -> None:
    group = _LEAVE_GROUP.get("group")
    if group is None and dist.get_backend() != "gloo":
        return  # no group to wait in without NCCL's watchdog (warned at init)
    try:
        # wait(timeout) bounds every rank's wait (monitored_barrier bounds only rank 0's).
        dist.barrier(group=group, async_op=True).wait(timeout=timedelta(seconds=timeout_s))
    except RuntimeError as exc:  # a rank that never came: leave anyway, nothing is left to compute
        log.warning("not every rank finished within %.0f s; leaving without them (%s)", timeout_s,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def launched_by_torchrun(environ: dict | None = None) -> bool:
    """True inside a process that torchrun (the elastic agent) started."""
    environ = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in environ or "LOCAL_RANK" in environ


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def local_slice(size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``size`` rows."""
    if size % world_size:
        raise UsageError(f"a batch of {size} pairs does not split evenly over {world_size} processes")
    share = size // world_size
    return slice(rank * share, (rank + 1) * share)


# ------------------------------------------------------------------- collectives
class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Its adjoint is again a sum over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone().contiguous()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad.contiguous())


class _AllGather(torch.autograd.Function):
    """y = concatenation of every rank's x (equal shapes), on every rank.

    The adjoint for this rank's x is the sum over ranks of the gradient at this rank's
    rows: an all-reduce of the whole gradient, then this rank's slice. (A
    reduce-scatter would move less data, but gloo lacks it; the gathered tensors are
    embeddings, small next to the parameter gradients.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        import torch.distributed as dist

        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        summed = _AllReduceSum.apply(grad.contiguous())
        return summed[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def all_gather_with_grad(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Every rank's rows in rank order; gradients (to any order) flow back to the rank
    that owns each row. The identity on one process."""
    if world_size == 1:
        return tensor
    return _AllGather.apply(tensor, rank, world_size)


def mean_across_ranks_with_grad(tensors: Sequence[torch.Tensor | None], world_size: int) -> list[torch.Tensor | None]:
    """Element-wise mean over ranks of each tensor, differentiable, in one collective.
    ``None`` entries (unused parameters: the same on every rank) stay ``None``."""
    tensors = list(tensors)
    if world_size == 1:
        return tensors
    present = [t for t in tensors if t is not None]
    if not present:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in present])
    flat = _AllReduceSum.apply(flat) / world_size
    out, offset = [], 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


@torch.no_grad()
def mean_across_ranks_(tensors: Iterable[torch.Tensor], world_size: int) -> None:
    """Replace each tensor by its mean over ranks, in place, in one flat all-reduce."""
    tensors = [t for t in tensors if t is not None]
    if world_size == 1 or not tensors:
        return
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` across ranks (what DDP would do), in one flat all-reduce.

    Parameters without a gradient (unused by the loss) keep none, as on one process,
    where AdamW then skips them; the ranks run the same graph, so the same parameters
    have gradients everywhere and the flat buffers line up.
    """
    if world_size == 1:
        return
    mean_across_ranks_([p.grad for p in params if p.grad is not None], world_size)


@torch.no_grad()
def sum_across_ranks(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum over ranks (a copy; no gradient)."""
    if world_size == 1:
        return tensor
    import torch.distributed as dist

    out = tensor.detach().clone().contiguous()
    dist.all_reduce(out)
    return out


@torch.no_grad()
def gather_rows(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's rows in rank order (a copy; no gradient): the global batch's
    per-sample values, for logging and recording on rank 0."""
    if world_size == 1:
        return tensor
    import torch.distributed as dist

    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def broadcast_module(module: nn.Module, world_size: int, src: int = 0) -> None:
    """Make every rank's parameters and buffers rank ``src``'s (the model is seeded
    identically everywhere; this guards against any non-determinism of the init)."""
    if world_size == 1:
        return
    import torch.distributed as dist

    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src)


# ------------------------------------------------------------------- launch
def torchrun_arguments(
    train_args: Sequence[str],
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    command: str = "train",
) -> list[str]:
    """The torchrun command line (after ``torchrun``) for ``mama-augment COMMAND``
    (``train``, or ``qa``) with the arguments ``train_args``.

    One node without an address: ``--standalone`` (a local rendezvous on a free port).
    Otherwise a static rendezvous at ``master_addr:master_port``, which every node
    passes with its own ``--node-rank``.
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise UsageError("--nproc-per-node and --nnodes must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank must be in [0, {nnodes}), not {node_rank}")
    args = [f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and master_addr is None and master_port is None:
        args.append("--standalone")
    else:
        if nnodes > 1 and master_addr is None:
            raise UsageError("--nnodes > 1 needs --master-addr (the host of node rank 0)")
        args += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr or '127.0.0.1'}",
            f"--master-port={master_port or DEFAULT_MASTER_PORT}",
        ]
    return [*args, "-m", "mama_augment", command, *train_args]


def launch(train_args: Sequence[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None, command: str = "train") -> None:
    """Start ``nproc_per_node`` processes of ``mama-augment COMMAND`` on this node with
    torchrun (the elastic agent of ``torch.distributed.run``) and wait for them. Raises
    :class:`MamaError` when a process fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = torchrun_arguments(train_args, nproc_per_node, nnodes, node_rank, master_addr, master_port, command)
    log.info("torchrun %s", " ".join(argv))
    parser = get_args_parser()
    # Our options go to the command unread; with abbreviations on, torchrun's parser took
    # qa's --run for an ambiguous abbreviation of its own --run-path and stopped.
    parser.allow_abbrev = False
    try:
        run(parser.parse_args(argv))
    except ChildFailedError as exc:
        failures = exc.failures
        codes = sorted({f.exitcode for f in failures.values()})
        error = MamaError(
            f"{len(failures)} training process(es) failed (exit codes {codes}); their errors are printed above"
        )
        if len(codes) == 1 and codes[0] > 0:  # e.g. 2 for a usage error in every process
            error.exit_code = codes[0]
        raise error from None
