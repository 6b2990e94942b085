"""Messages to the user, the way Keras prints its own.

With Keras' interactive logging on (the default) a message goes to standard
output, as Keras' progress bars do; after `keras.utils.
disable_interactive_logging()` it goes to the `hypersparse_tf` logger instead.
"""

import logging
import sys

import keras

logger = logging.getLogger("hypersparse_tf")


def print_msg(message):
    """Prints `message` (one line) as Keras' own messages are printed."""
    if keras.utils.is_interactive_logging_enabled():
        sys.stdout.write(f"{message}\n")
        sys.stdout.flush()
    else:
        logger.info(message)
