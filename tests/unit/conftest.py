"""Make ``ansible_collections.nucleus.criu`` importable from the repo checkout.

build/collections/ansible_collections/nucleus/criu is a symlink to the repo root
(build/ is gitignored); recreate it if missing and put build/collections on sys.path.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "nucleus", "criu")

if not os.path.lexists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(os.path.relpath(ROOT, os.path.dirname(LINK)), LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
