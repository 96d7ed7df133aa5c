"""Paper-table demos and experiments, kept apart from the library's trainers
(``mmfast.train``) and systems (``mmfast.systems``): what ``mmfast demo`` prints and the
benchmarks of the papers' tables run."""
