"""Importers of the EMO family's open weights (EchoMimic v1, Hallo v1) into EMO checkpoint folders.

Public API:
    import_echomimic, import_hallo, import_checkpoint   source files → checkpoint folder (+ import_report.json)
    ImportReport                                         what was filled, dropped and left at initialisation
    tables                                               the explicit key tables (source key → part, our key)
"""

from emo_stream.importers import tables
from emo_stream.importers.core import (
    REPORT_FILE,
    ImportReport,
    import_checkpoint,
    import_echomimic,
    import_hallo,
    load_tensor_file,
)

__all__ = ["REPORT_FILE", "ImportReport", "import_checkpoint", "import_echomimic", "import_hallo",
           "load_tensor_file", "tables"]
