"""The session explorer (``whoexec ui``): a read-only web app over the session store.

``timeline`` lays out one session as a picture (pure); ``app`` is the Flask adapter.
"""
