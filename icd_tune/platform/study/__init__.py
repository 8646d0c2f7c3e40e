"""Study files and their checks: YAML in, a validated study, its trials and its teachers out, before anything runs."""
