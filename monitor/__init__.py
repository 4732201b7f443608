"""Drift detectors, flag correlation, parity reports and alerts (issue 5).

Pure functions over what ``storage`` returns; nothing here yet.
"""
