"""The admission webhook: it signs the caller's identity into ``kubectl exec``.

``decide`` is the pure core (AdmissionReview in, AdmissionReview out); ``server`` (Flask),
``wsgi`` (gunicorn), ``gworker`` (its gevent worker), ``podcache`` (the Kubernetes client)
and ``certs`` are its adapters. Like the package's ``__init__``, this one imports nothing.
"""
