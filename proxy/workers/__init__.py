"""`sidecache serve --workers N`: a supervisor, N workers sharing the ports, and the mesh that
lets them sum their metrics and share admin actions."""

from proxy.workers.mesh import Mesh
from proxy.workers.place import WorkerPlace, stop_when_orphaned
from proxy.workers.supervisor import Supervisor, make_run_dir

__all__ = ["Mesh", "Supervisor", "WorkerPlace", "make_run_dir", "stop_when_orphaned"]
