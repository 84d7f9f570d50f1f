"""Reliability and security: each fault, bad input or hostile file from issue 8 as a test.

Where each item is proven (tests here, or the earlier test that already proves it):

1. worker SIGKILLed mid-trial, study rerun: tests/study/test_study.py::
   test_a_worker_killed_mid_trial_is_recovered_and_the_grid_finishes_without_duplicates
2. a trial that always crashes, max_retry=2: tests/study/test_study.py::
   test_a_trial_that_always_fails_is_retried_max_retry_times_then_the_study_goes_on
3. 8 workers x 40 trials on the embedded storages: test_study_faults.py
4. non-finite loss in a study: test_study_faults.py
5. SIGKILL during checkpoint writes, then resume: test_checkpoint_faults.py
6. SIGTERM / Ctrl-C mid-training: test_signals.py (and tests/tracking/test_tracking.py's
   resume-after-SIGTERM test)
7. tracking server down at start: tests/tracking/test_tracking.py::
   test_unreachable_tracking_server_fails_fast; down mid-run: test_tracking_outage.py
8. full disk, unusable mlruns/: test_checkpoint_faults.py
9. bad configs and specs, creating nothing: test_hostile_input.py; random YAML mappings
   (hypothesis): tests/test_config.py
10. broken dataset folders: test_hostile_input.py
11. pickle payloads in checkpoints, no unsafe load anywhere: test_checkpoint_faults.py
12. !!python tags in YAML: test_hostile_input.py
13. ui and server bind to 127.0.0.1; foreign Host headers refused: test_hostile_input.py
14. duplicate registry names, broken plugins: test_hostile_input.py, tests/test_registry.py,
    tests/data/test_plugins.py
"""
