"""Free TCP ports on the loopback interface, and TF_CONFIG for local clusters.

Only 127.0.0.1 is ever used: multi-worker tests never send traffic elsewhere.
"""

import json
import socket


def pick_unused_ports(count: int) -> list[int]:
    """Ports that were free on 127.0.0.1 a moment ago (kept bound until all
    are picked, so the same port is never returned twice)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def cluster_tf_config(jobs: dict[str, list[int]], task_type: str, index: int):
    """TF_CONFIG for one task of a cluster on loopback: jobs maps a job name
    (chief, worker, ps) to its tasks' ports."""
    return json.dumps(
        {
            "cluster": {
                job: [f"127.0.0.1:{p}" for p in job_ports]
                for job, job_ports in jobs.items()
            },
            "task": {"type": task_type, "index": index},
        }
    )
