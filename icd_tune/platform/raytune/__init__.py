"""The Ray Tune adapter: the trainable, the Optuna searcher and its warm start, the watchdog, the live display, node sizes, and the one module that reaches into Ray's private attributes."""
