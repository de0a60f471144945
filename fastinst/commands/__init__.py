"""Sub-commands of the ``fastinst`` CLI (one module each, see ``fastinst.cli``)."""
