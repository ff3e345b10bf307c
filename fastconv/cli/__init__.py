"""The commands: ``fastconv-train`` (:mod:`fastconv.cli.train`, a command over
:func:`fastconv.training.fit`) and ``fastconv-predict`` (:mod:`fastconv.cli.predict`).

Each is also ``python -m fastconv.cli.train`` / ``python -m fastconv.cli.predict``."""
