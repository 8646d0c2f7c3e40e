"""MLflow: the parent and child runs, lineage, the students as artifacts, the study record, compare links."""
