"""Cost ledger primitives: FLOPs, latency, memory, energy and provenance.

Usage: ``from leankd.metering import count_flops, measure_latency, EnergyMeter`` and
``from leankd.metering.provenance import provenance``. The `provenance` function is
deliberately not re-exported here: it would shadow the `provenance` submodule.
"""

from .energy import EnergyMeter
from .flops import count_flops, format_flops, preserved_state
from .latency import measure_latency
from .memory import cuda_peak_mb, current_rss_mb, peak_rss_mb, reset_cuda_peak, run_child_measured
from .provenance import now_iso

__all__ = [
    "EnergyMeter", "count_flops", "format_flops", "preserved_state", "measure_latency",
    "cuda_peak_mb", "current_rss_mb", "peak_rss_mb", "reset_cuda_peak", "run_child_measured",
    "now_iso",
]
