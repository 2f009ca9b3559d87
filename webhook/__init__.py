"""whoexec: which Kubernetes user ran that command in the pod.

This package's ``__init__`` imports nothing on purpose: the pure cores (``identity``,
``admission.decide``, ``attribution.lineage``, ``attribution.falco``, ``errors``) must be
importable without pulling in Flask, gunicorn or the Kubernetes client. The three wings
(``admission``, ``attribution``, ``sessions``) are described in docs/architecture.md.
"""
