"""The stages of a study run, in order, each with its own typed input and output.

    plan     (plan.py)     which trials, on what resources, in which folder, fresh or resumed
    prepare  (prepare.py)  checks, Ray, data, teacher, teacher-output cache
    track    (track.py)    the study's MLflow parent run
    tune     (tune.py)     the trials on Ray Tune: grid or Optuna, ASHA, callbacks, restore
    record   (record.py)   trial records, report files, the parent run's summary

``icd_tune.platform.runner.run_study`` runs them one after the other; ``sync.py``
(``--sync-tracking``) fills MLflow from a run folder whose records did not all reach it. Planning
needs no Ray; neither does the cache decision of the prepare stage.
"""
