"""What a backend raises when a role's process dies: raised by the backends, handled by the engine and the CLI."""


class WorkerLost(RuntimeError):
    """Client workers died; `workers` are their indices. Raised by a backend's `get`, after every call of
    the round has settled, so the server is idle."""

    def __init__(self, workers: list[int]):
        self.workers = list(workers)
        super().__init__(f"client worker(s) {self.workers} died")


class ServerLost(RuntimeError):
    """The server died: its state is gone, the run cannot go on."""


class ClusterLost(ServerLost):
    """The Ray cluster can no longer hold the run: its head is gone, or no live node takes a replacement worker."""
