"""A trained model at work: one loader (``load``), evaluation, the zoom sweep and gate, prediction on image files,
pictures of where it zooms, plots."""
