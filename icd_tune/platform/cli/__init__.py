"""The command line: options, the dry run, the exit status, and the quiet console."""
