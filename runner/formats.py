"""The table formats ``runner export`` and ``runner compare`` write (``compare`` adds ``text``), named
once for the tables and the command line (a module without pandas, so ``runner --help`` stays quick)."""

from __future__ import annotations

TABLE_FORMATS = ("csv", "md", "latex")
