"""Kubernetes placement of steps: GPU tags for the model steps, and the executor choice.

On Kubernetes, ``k8s_job_executor`` runs each step in its own pod and honours the step's
``dagster-k8s/config`` tag; locally the tag is inert. The GPU node selector and toleration
follow the usual NVIDIA device-plugin conventions and can be changed without editing code:

| variable                      | default                                  |
|-------------------------------|------------------------------------------|
| FASHION_GPU_NODE_SELECTOR     | (none)  e.g. ``nvidia.com/gpu.present=true`` |
| FASHION_GPU_TOLERATION_KEY    | ``nvidia.com/gpu``                       |
| FASHION_GPU_CPU / _MEMORY     | ``4`` / ``16Gi`` (requests for the step's container) |
| FASHION_GPU_COUNT             | ``1``; ``0`` runs the model steps on CPU nodes |
| FASHION_EXECUTOR              | ``multiprocess``; ``k8s`` in the cluster |
| FASHION_K8S_MAX_CONCURRENT    | ``16``: step pods per run at once        |

These are read when the code location loads (the tags are part of the definitions), so the
Helm values set them on the user-code deployment.
"""

from __future__ import annotations

import os

GPU_TAG = "fashion-assets/gpu"
GPU_POOL = "gpu"  # Dagster concurrency pool of the GPU steps: caps how many run at once


def gpu_k8s_config() -> dict:
    """The ``dagster-k8s/config`` for a step that needs one GPU."""
    cpu = os.environ.get("FASHION_GPU_CPU", "4")
    memory = os.environ.get("FASHION_GPU_MEMORY", "16Gi")
    pod_spec: dict = {
        "tolerations": [
            {"key": os.environ.get("FASHION_GPU_TOLERATION_KEY", "nvidia.com/gpu"), "operator": "Exists",
             "effect": "NoSchedule"}
        ]
    }
    selector = os.environ.get("FASHION_GPU_NODE_SELECTOR", "")
    if selector:
        key, eq, value = selector.partition("=")
        if not (key.strip() and eq):
            raise ValueError(f"FASHION_GPU_NODE_SELECTOR={selector}: expected label=value")
        pod_spec["node_selector"] = {key.strip(): value.strip()}
    return {
        "container_config": {
            "resources": {
                # Extended resources such as GPUs must have limit == request.
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
                "limits": {"memory": memory, "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": pod_spec,
    }


def gpu_op_tags() -> dict:
    """Tags for an asset whose step should run on a GPU node in the cluster.

    FASHION_GPU_COUNT=0 (a cluster without GPU nodes) keeps the steps on ordinary nodes, where
    TensorFlow uses the CPU; otherwise they would wait forever for a GPU that never comes."""
    if os.environ.get("FASHION_GPU_COUNT", "1") == "0":
        return {}
    return {"dagster-k8s/config": gpu_k8s_config(), GPU_TAG: "true"}


def executor_from_env():
    """``k8s_job_executor`` when FASHION_EXECUTOR=k8s (the Helm values set it), else Dagster's default."""
    choice = os.environ.get("FASHION_EXECUTOR", "multiprocess")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(
            {"max_concurrent": int(os.environ.get("FASHION_K8S_MAX_CONCURRENT", "16"))}, name="k8s_job_executor"
        )
    if choice == "multiprocess":
        return None  # Definitions' default: multiprocess, in-process for dg.materialize
    raise ValueError(f"FASHION_EXECUTOR={choice}: expected 'multiprocess' or 'k8s'")
