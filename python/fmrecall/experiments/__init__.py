"""Experiments behind ``fmrecall demo --movielens`` and examples/: the MovieLens-100K comparison
(``experiments.movielens``) against classic recall channels (``experiments.baselines``) and against
the two-stage pipeline those channels feed (``experiments.two_stage``); ids vs collaborative vectors
as ``Vector`` fields (``experiments.collab_vectors``). Not part of the library API:
nothing in fmrecall imports them except the CLI; ``python -m fmrecall.experiments`` runs them."""
