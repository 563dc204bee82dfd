"""bioscale: biologically-motivated learning rules vs backprop on locally-connected nets.

This package is the thin command-line layer on top of the project's packages
(`models`, `data_pipeline`, `algorithms`, `distributed`, `training`, `cluster`).
Nothing imports it.
"""

__version__ = "0.1.0"
