"""``latentseg bench``: speed and memory of the fast path against the tutorial's reference
implementation of the same model, measured side by side in one run, plus the costs around
training (data, tracking, studies, reports).

- :mod:`~latentseg.bench.harness`: the timing harness (alternated windows, medians, ratios,
  a stopwatch); every benchmark here and in ``benchmarks/`` times with it.
- :mod:`~latentseg.bench.machine`: the machine's ISA and fp32 matmul speed.
- :mod:`~latentseg.bench.model_speed`: the model benchmark (fast path vs reference).
- :mod:`~latentseg.bench.overheads`: data, tracking, study, report and bf16 costs, one
  module a section.
- :mod:`~latentseg.bench.run`: the command's sections, in order (:func:`run_bench`).

Only the command line and ``benchmarks/`` import the bench; no room of the library does.
"""

from latentseg.bench.run import SECTIONS, run_bench

__all__ = ["SECTIONS", "run_bench"]
