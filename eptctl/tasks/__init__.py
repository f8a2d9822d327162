"""The parts behind :mod:`eptctl.data`; import from there.

``spec``: the dataclasses and the fingerprint; ``rows``: raw rows to labelled examples; ``splits``: deterministic
splits and subsamples; ``packaged``: the builtin tasks read from asset packages; ``tables``: user files and hub
datasets.
Only ``tables`` imports ``datasets``, and only when a custom task is read.
"""
