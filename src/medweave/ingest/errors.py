"""The errors of ingestion, in a module of their own so that readers of a source format (the VQA
JSON reader the evaluation harness uses) can raise them without importing the store (pandas, DuckDB)."""


class IngestError(Exception):
    """A source that cannot be ingested. The message says what was expected; the runner adds the path.

    The message is the tool's own text and is shown as written. Text it quotes from a library or from
    the file itself (which may hold identifiers) goes through ``quoted``, or is the text of the
    exception this one is raised ``from``: only that part is scrubbed before anything is stored.
    """


class NotADataFile(Exception):
    """Raised by an adapter (in ``units`` or ``read``) for a file that is not a data file at all: a
    DICOMDIR, a README, a checksum list, a FHIR resource of a kind that holds no patient data. The
    runner reports it as "skipped, not a data file (reason)", which does not make the exit code 1.
    The message is the reason, e.g. ``"a DICOMDIR (an index of the files beside it)"``."""
