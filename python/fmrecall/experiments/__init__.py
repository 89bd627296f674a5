"""Experiments behind ``fmrecall demo --movielens`` and examples/: the MovieLens-100K comparison
(``experiments.movielens``) against classic recall channels (``experiments.baselines``). Not part of
the library API: nothing in fmrecall imports them except the CLI."""
