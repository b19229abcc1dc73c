"""hjax.protocols.domainbed: the DomainBed protocol (ColoredMNIST, RotatedMNIST) over the
objective registry.

Modules, one job each: ``hparams`` (the one hyperparameter registry), ``data`` (in/out
splits, in-graph minibatch sampling), ``algorithms`` (the DomainBed step of every registered
objective: penalty weights, schedules, Adam resets, Fish's inner loop), ``trainer`` (compiled
step, evaluation), ``checkpoint`` (orbax), ``run`` (one resumable job), ``vmapped`` (several
jobs as one program), ``jobs`` (sweep job lists), ``launchers`` and ``selection`` (model
selection, tables). Command lines: ``python -m hjax.cli.domainbed_train``, ``hjax.cli.sweep``
and ``hjax.cli.collect_results`` (experiments/ holds the same as scripts).
"""
