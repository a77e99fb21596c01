"""The bundle: the artifact every stage reads and the device runtime loads. `bundle.py` owns
manifest.json (the only code that reads or writes it), `iospec.py` the graphs' IO as data, and
`chain.py` runs one step through a layout's graphs. Torch-free."""

from odelt.bundle.bundle import FORMAT, MANIFEST, Bundle, open_bundle
from odelt.bundle.chain import run_chain
from odelt.bundle.iospec import BatchRange, GraphSpec, LayoutSpec, TensorSpec, layout_spec

__all__ = ["FORMAT", "MANIFEST", "Bundle", "open_bundle", "run_chain", "BatchRange", "GraphSpec", "LayoutSpec",
           "TensorSpec", "layout_spec"]
