"""What the processes of a run decide and end together: a decision made on the main process for all, a failure
on any process that every process stops on, and a common exit."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from harness.errors import LaunchError, UserError, one_line

T = TypeVar("T")


def on_main(accelerator: Accelerator, compute: Callable[[], T]) -> T:
    """``compute()`` on the main process only; every process gets its result (the same object), or raises
    the UserError it raised. For decisions that must be identical everywhere (the data, the run lock)."""
    if accelerator.num_processes == 1:
        return compute()
    box: list = [None]
    if accelerator.is_main_process:
        try:
            box = [(compute(), None)]
        except UserError as error:
            box = [(None, error)]
    broadcast_object_list(box)
    result, error = box[0]
    if error is not None:
        raise error
    return result


def first_failure(accelerator: Accelerator, action: Callable[[], T]) -> tuple[T | None, str | None]:
    """``action()`` on every process: its result, and the first failure on any process (as one line), the
    same on every process (a collective), so that all of them stop together and say the same."""
    try:
        result, failure = action(), None
    except Exception as error:  # libraries raise their own types for damaged files and failed writes
        result, failure = None, one_line(error)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]
    return result, next((message for message in failures if message), None)


# What gloo says when a process of the group has gone (NCCL waits for its watchdog instead).
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure because another process of the group has ended."""
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in LOST_PEER)


def timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a collective that waited the group's timeout for another process (gloo; NCCL's
    watchdog ends the process itself)."""
    return isinstance(error, RuntimeError) and "Timed out waiting" in str(error)


def leave_together(accelerator: Accelerator) -> None:
    """Every process waits for the others, then the process group is torn down. A process that exits while
    another still writes reports can take the job down with it (DeepSpeed's shared-memory transport aborts).

    They meet in the rendezvous store, not in a collective. A gloo barrier holds every collective still in flight
    when it was called and frees them when it completes, on gloo's own thread, while the process goes on to exit:
    freeing their tensors needs the interpreter, which may be finalizing by then, and the process aborts
    ("terminate called without an active exception"; seen at the end of FSDP2 runs, whose device mesh keeps the
    group, and its threads, alive past ``destroy_process_group``)."""
    if accelerator.num_processes > 1:
        store, rank = dist.distributed_c10d._get_default_store(), dist.get_rank()
        try:
            store.set(f"harness/leave/{rank}", "1")
            store.wait([f"harness/leave/{other}" for other in range(dist.get_world_size())])
        except RuntimeError as error:  # the store's timeout (the collective timeout), or the store gone
            raise LaunchError(f"another process of the run did not reach its end (its error, if any, is above): "
                              f"{one_line(error)}") from None
    accelerator.end_training()
