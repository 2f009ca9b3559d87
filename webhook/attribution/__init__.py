"""The Falco path: each alert attributed to the user of its exec session.

``falco`` (alert shapes and parsing), ``lineage`` (the process table and the attribution)
and ``plugin_fields`` (alerts the Falco plugin enriched) are the pure core; ``procfs``,
``pipeline``, ``app``, ``apitoken``, ``intake``, ``inbox`` and ``spool`` are its adapters.
It writes to ``webhook.sessions.store``. Like the package's ``__init__``, this one imports
nothing.
"""
