"""Training: the criterion, mixing, the fixed engine loop, the one ``build`` that reads the training config, the
run's checkpoints and logs (``monitor``) and the run itself (``run``)."""
