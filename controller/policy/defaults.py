"""Deployment defaults of the chunk policy, shared by the inference config, ``sim.evaluate`` and
``benchmarks/sim_success.py`` (measured closed loop in the simulator; see the README's Status).

* ``NUM_SAMPLES``: chunks denoised per observation from independent noise, averaged
  (:class:`controller.policy.chunk_runner.ChunkPolicy`, ``num_samples``).
* ``TEMPORAL_ENSEMBLE_DECAY``: per-step weight decay of the temporal ensemble of overlapping
  chunks (:class:`controller.policy.temporal_ensemble.TemporalEnsemble`); with 6 actions executed
  per chunk, the previous chunk weighs ~1/2 of the newest.
"""

NUM_SAMPLES = 4
TEMPORAL_ENSEMBLE_DECAY = 0.115
