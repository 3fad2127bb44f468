"""Cambrian-1 (cambrian-mllm/cambrian) in its original checkpoint layout: the SVA connector family.

``family`` registers the adapter; ``configuration``, ``encoders``, ``sva``, ``modeling`` and
``processing`` each follow the original file named in their docstrings; ``tiny`` writes tiny
checkpoints with the real key names.
"""
