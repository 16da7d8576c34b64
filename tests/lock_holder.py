"""Hold the output lock of PATH until killed: ``python tests/lock_holder.py PATH``.

Prints ``held`` once the lock is taken, so a test can start a real writer against it.
"""

from __future__ import annotations

import sys
import time

from infoplane.io.files import exclusive

if __name__ == "__main__":
    with exclusive(sys.argv[1]):
        print("held", flush=True)
        while True:
            time.sleep(1)
