"""Paper-table demos and experiments, kept apart from the library's trainers
(``mmfast.train``) and systems (``mmfast.systems``): what ``mmfast demo`` prints and the
benchmarks of the papers' tables run."""


def ordering(claim: str, holds: bool) -> str:
    """The line a paper table ends with: whether the paper's ``claim`` holds on our data."""
    return f"paper's ordering: {claim}: {'holds' if holds else 'does NOT hold'} here"
