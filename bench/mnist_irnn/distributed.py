"""The process group when launched by torchrun, else one process."""
import importlib
import os

import torch
import torch.distributed as dist

from .errors import ConfigError


class Dist:
    """Rank, world size and device; collectives that are no-ops alone."""

    def __init__(self, device_choice):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_choice == "auto":
            device_choice = "cuda" if torch.cuda.is_available() else "cpu"
        if device_choice == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("--device cuda but no CUDA GPU is visible")
            self.device = torch.device("cuda", self.local_rank
                                       % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        if self.enabled:
            # DistributedDataParallel imports torch._dynamo when it is
            # built. Imported after the process group exists, torch._dynamo
            # (through torch.distributed.fsdp) keeps 10 references to the
            # group that destroy_process_group does not drop, so the group
            # outlived close(): gloo's threads ran on into the interpreter's
            # finalization, where they now and then ended a finished run
            # with "terminate called without an active exception". Imported
            # first, it holds none, and close() joins those threads
            # (tests/test_seq_mnist.py checks that none is left).
            importlib.import_module("torch._dynamo")
            dist.init_process_group(
                "nccl" if self.device.type == "cuda" else "gloo",
                device_id=self.device if self.device.type == "cuda" else None)

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, tensor):
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        shared = [obj if self.main else None]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def close(self, succeeded):
        """Leaves the process group.

        After a success every rank waits at a barrier first, so that none
        tears the group down while another still has work in flight. After
        a failure there is no barrier: the failing rank leaves at once, and
        torchrun stops the others (gloo peers also see the closed group),
        instead of every rank waiting for one that will not come.
        """
        if not self.enabled:
            return
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()
