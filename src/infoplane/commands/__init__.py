"""Sub-commands of the ``infoplane`` CLI, one module each (see :mod:`infoplane.cli`)."""
