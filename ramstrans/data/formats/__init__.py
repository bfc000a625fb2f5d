"""One module per distributed data-set format, each with a ``load_<name>(root) -> DatasetIndex``; a new format is a
module here and a line in ``ramstrans.data.DATASETS``."""
