"""The names of the files a run folder holds, in one place for every stage and adapter that reads them."""

STATE_FILE = "study_state.json"  # the fingerprint, the planned trials and what --resume added
RESOLVED_STUDY_FILE = "study_resolved.json"  # the study as resolved, with every default filled in
OPTUNA_DB = "optuna.db"  # a search's Optuna storage (sqlite)
TRACKING_KEY = "tracking"  # in the state file: whether MLflow got every record, and what --sync-tracking needs
