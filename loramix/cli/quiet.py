"""Keeping the libraries' own output out of the command line's."""

from __future__ import annotations


def quiet_libraries() -> None:
    """The command line shows its own progress and errors: not the libraries' loading bars and notices (a
    missing optional CPU kernel for bitsandbytes, deprecations), which would bury its output."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Critical only: the libraries log errors that loramix then reports as its own one-line error (diffusers
    # logs a failed fetch before raising), and a second line would break that promise.
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity(logging.CRITICAL)
        library.disable_progress_bar()
