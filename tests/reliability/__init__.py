"""Reliability and security: each fault, bad input or hostile file from issue 8 as a test.

Where each item is proven (tests here, or the earlier test that already proves it):

1. worker SIGKILLed mid-trial, study rerun: tests/study/test_study.py::
   test_a_worker_killed_mid_trial_is_recovered_and_the_grid_finishes_without_duplicates
2. a trial that always crashes, max_retry=2: tests/study/test_study.py::
   test_a_trial_that_always_fails_is_retried_max_retry_times_then_the_study_goes_on
3. 8 workers x 17 trials on the embedded storages: test_study_faults.py
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

Issue 15 (faults and first impressions), item by item:

1. two stores: tests/study/test_study.py::test_the_default_journal_is_the_tracking_stores_
   so_two_stores_never_disagree, ::test_a_study_relaunched_against_another_tracking_store_
   is_refused, ::test_a_study_left_in_the_older_shared_journal_is_pointed_at
2. a killed train resumed in place: test_checkpoint_faults.py::test_a_run_whose_process_was_
   killed_is_resumed_in_place, ::test_a_run_resumed_from_a_checkpoint_file_records_where_it_
   came_from
3. orphaned workers: test_study_faults.py::test_workers_whose_launch_is_killed_take_no_more_
   trials_and_a_relaunch_finishes
4. a half-created store: test_store_creation.py
5. a damaged journal: tests/study/test_journal_damage.py
6. a full disk under the artifacts: test_checkpoint_faults.py::test_a_full_disk_under_the_
   artifacts_is_one_line_and_exit_code_3
7. a report on a read-only store: tests/report/test_report.py::test_a_report_on_a_read_only_
   store_is_written_and_says_it_could_not_attach_itself
8. cross-field config errors: tests/test_config.py::test_a_cross_field_error_names_each_key_
   and_where_its_value_came_from, ::test_keys_across_sections_and_defaults_are_cited
9, 15. the UI links and their model-training view: tests/tracking/test_ui_browser.py
10. a size cap above a real dataset: tests/data/test_folder.py::test_a_size_cap_larger_than_
    the_split_takes_the_whole_split_and_says_so
11. Ctrl-C on a study: tests/study/test_study.py::test_ctrl_c_stops_every_worker_cleanly_
    and_counts_nothing_interrupted_as_finished, ::test_a_relaunch_with_nothing_queued_starts_
    no_worker; test_signals.py::test_nested_stops_share_the_first_signal_and_a_late_one_
    starts_stopped
12. huge images: tests/data/test_large_images.py
13. temp folders: tests/tracking/test_tracking.py::test_resume_and_load_model_leave_nothing_
    in_the_temp_folder
14. local checkpoints: test_local_checkpoints.py
16. datasets in MLflow: tests/tracking/test_datasets_inputs.py (and the run page in
    tests/tracking/test_ui_browser.py)
17. VOC and Oxford-IIIT Pet without torchvision: tests/data/test_torchvision.py
"""
