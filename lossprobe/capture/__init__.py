"""Capture: what every backend shares -- the statistics' specification, the primitive ops
each framework supplies, the statistics written once against them, the packing of a flush
and its decoding into StepRecords, and the facts a backend learns while training runs.

A backend (``lossprobe/backends/``) keeps only its hooks and step boundaries.
"""
