"""The user-facing shells: the ``logprobe`` CLI now, the Streamlit dashboard later.

Nothing imports ``app``; it only lays out what ``storage`` (and later ``monitor``) return.
"""
