"""hjax.protocols: training protocols over the objective registry.

``irm_cmnist``: the full-batch IRM-script protocol (ColoredMNIST, correlation and label
shift). ``domainbed``: DomainBed's minibatch protocol, sweeps and model selection.
``runs``: the run machinery they share (folder claims and guards, checkpoints, the member
axis, records). Data parallelism: ``hjax.data.sharding``.
"""
