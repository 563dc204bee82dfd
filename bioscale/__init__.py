"""bioscale: biologically-motivated learning rules vs backprop on locally-connected nets.

One namespace over the project's folders: `bioscale.models`, `bioscale.data_pipeline`,
`bioscale.algorithms`, `bioscale.distributed`, `bioscale.training`, `bioscale.cluster`,
`bioscale.experiments` and `bioscale.configs` (mapped in pyproject.toml). The modules of
this folder itself — the thin command-line layer (`cli`, `commands`) and the benchmarks
(`bench`) — sit on top: nothing imports them.
"""

__version__ = "0.1.0"
