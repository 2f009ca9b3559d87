"""The exec-session records: the store, the Kubernetes audit log, the CLI's readers, the UI.

``audit`` (audit events) is the pure core; ``store/``, ``auditlog``, ``report`` and
``ui/`` are its adapters. Like the package's ``__init__``, this one imports nothing.
"""
