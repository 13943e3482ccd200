"""Before a launch across nodes, one process on each node (``harness/preflight.py``, from
slurm/launch_machine.sh): this node reaches the main node's port, and every node exchanges a tensor with every
other (a gloo all-reduce, over the addresses the training will use), each within a short time. A node that cannot
gets one line naming it and the cause, at once, where the training's own rendezvous would wait many minutes for a
timeout and then say little."""

from __future__ import annotations

import argparse
import socket
from datetime import timedelta

from harness.errors import LaunchError, one_line


def preflight(args: argparse.Namespace) -> int:
    """The command's body: ``check_nodes`` with its arguments."""
    check_nodes(args.main_host, args.port, args.machine_rank, args.machines, args.timeout)
    return 0


def check_nodes(main_host: str, port: int, rank: int, machines: int, timeout_s: float) -> None:
    """Raise LaunchError naming this node and the cause unless all ``machines`` meet within ``timeout_s``."""
    import torch
    import torch.distributed as dist

    node, where, limit = socket.gethostname(), f"{main_host}:{port}", timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(main_host, port, machines, is_master=rank == 0, timeout=limit, wait_for_workers=False)
    except RuntimeError as error:  # DistNetworkError and DistStoreError are RuntimeErrors
        if rank == 0:
            raise LaunchError(f"node {node}: cannot listen on port {port} for the other nodes ({one_line(error)}): "
                              "set MAIN_PROCESS_PORT to a free port") from None
        raise LaunchError(f"node {node}: cannot reach the main node at {where} within {timeout_s:g} s "
                          f"({one_line(error)}): is {main_host} up, its name the address the nodes share, and the port "
                          "open between nodes?") from None
    _meet(store, rank, machines, limit, node, where, "arrived", "did not reach the main node at")
    try:
        dist.init_process_group("gloo", store=dist.PrefixStore("gloo", store), rank=rank, world_size=machines,
                                timeout=limit)
        total = torch.ones(1)
        dist.all_reduce(total)
    except RuntimeError as error:
        raise LaunchError(f"node {node}: the nodes reached {where} but could not exchange data with each other within "
                          f"{timeout_s:g} s ({one_line(error)}): each node is reached at the address its own name "
                          f"resolves to ({_address(node)}), or of the interface GLOO_SOCKET_IFNAME names: check "
                          "that these addresses are reachable between the nodes") from None
    if int(total.item()) != machines:
        raise LaunchError(f"node {node}: the all-reduce of {machines} nodes gave {total.item():g}: another job "
                          f"uses {where}: set MAIN_PROCESS_PORT to a port of this job's own")
    # The main node holds the store: it leaves last, once every node has its result.
    _meet(store, rank, machines, limit, node, where, "done", "did not finish the exchange through")
    dist.destroy_process_group()


def _meet(store, rank: int, machines: int, limit: timedelta, node: str, where: str, step: str, failed: str) -> None:
    """Each node says it reached ``step``; the main node waits until all have."""
    store.set(f"{step}/{rank}", node)
    if rank != 0:
        return
    keys = [f"{step}/{other}" for other in range(machines)]
    try:
        store.wait(keys, limit)
    except RuntimeError:
        missing = [str(other) for other, key in enumerate(keys) if not store.check([key])]
        raise LaunchError(f"node {node}: machine(s) {', '.join(missing)} of {machines} {failed} {where} within "
                          f"{limit.total_seconds():g} s: their own lines say why (if they started at all)") from None


def _address(name: str) -> str:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return "none"
