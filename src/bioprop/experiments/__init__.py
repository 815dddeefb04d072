"""Experiments over presets: multi-seed reproduction, reports with plots, random search.

* :mod:`bioprop.experiments.reproduce`: ``plan_runs`` / ``reproduce``, the cells x seeds runner;
* :mod:`bioprop.experiments.report`: ``write_report``, the paper's tables with ours beside them;
* :mod:`bioprop.experiments.search`: ``Search``, the paper's random search with Optuna;
* :mod:`bioprop.experiments.runs`: reading runs back and aggregating over seeds;
* :mod:`bioprop.experiments.plan`: ``plan``, memory and FLOPs of a run before it starts.
"""
