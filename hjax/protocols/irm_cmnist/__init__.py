"""hjax.protocols.irm_cmnist: the IRM / Fishr / authors' ColoredMNIST protocol (full batch).

``train``: the compiled train step and one restart; ``experiment``: a config in, results
files out (restarts, resume); ``transfer_study``: the transfer measure over a run's restarts.
"""
