"""The user-facing shells: the ``logprobe`` CLI and the Streamlit dashboard.

Nothing imports ``app``; it only lays out what ``storage`` and ``monitor`` return, and starts the
trainer-side code it fronts (the demo, replays) as child processes, never importing it.
"""
