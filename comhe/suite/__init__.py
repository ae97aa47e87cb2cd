"""The reproduction suite: paper tables and figures from experiment files, through runs, to rendered results.

    experiments/<target>.yaml -> experiments.plan -> runner (launchers: local, torchrun, SLURM) -> run records
                              -> report (tables, claims) and figures

==================  ==============================================================================
module              what
==================  ==============================================================================
``experiments.py``  an experiment file -> the runs that fill its cells (rows x columns x seeds)
``runner.py``       plan, train what is missing (waiting for runs other processes hold), render
``launchers.py``    how a run is executed: in process, worker processes, torchrun, submitit / SLURM
``overrides.py``    command-line overrides against a table's layout: refused, or printed as protocol changes
``progress.py``     live progress of the runs (bars, log lines), the table's ETA, partial runs for DRY=1
``report.py``       tables (csv, md, tex) from the run records
``claims.py``       the paper's claims, checked across seeds (exact permutation test)
``scorecard.py``    every claim of every table and figure on one page (``make report``)
``figures.py``      the papers' figures and a dot plot per table
``precheck.py``     every check of a command that needs no torch (files, overrides, keys, types, ranges), first
``costs.py``        ``DRY=1``'s cost and whether a GPU is needed
``labels.py``       notes where a profile changes what a row or column label names
``cli.py``          ``python -m comhe.run table1 ...`` (``make table1``)
==================  ==============================================================================

This layer imports everything below it (library, data, models, train) and is imported by nothing but the entry
point ``comhe/run.py``.
"""
