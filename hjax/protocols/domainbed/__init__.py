"""hjax.protocols.domainbed: the DomainBed protocol (ColoredMNIST, RotatedMNIST) over the
objective registry.

Modules, one job each: ``config`` (the job's settings, validation, the one translator from
flags or sweep settings), ``hparams`` (the one hyperparameter registry), ``data`` (in/out
splits, in-graph minibatch sampling), ``algorithms`` (the DomainBed step of every registered
objective: penalty weights, schedules, Adam resets, Fish's inner loop), ``trainer`` (compiled
step, evaluation), ``programs`` (a job's data, model and member program), ``loop`` (the one
host loop), ``run`` (one resumable job, or a group of one shape), ``vmapped`` (the group
program), ``identity``, ``jobs`` (sweep job lists), ``launchers`` and ``selection`` (model
selection, tables). Checkpoints, folder claims and records: hjax.protocols.runs. Command lines: ``python -m hjax.cli.domainbed_train``, ``hjax.cli.sweep``
and ``hjax.cli.collect_results`` (experiments/ holds the same as scripts).
"""
