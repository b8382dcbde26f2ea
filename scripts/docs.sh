#!/usr/bin/env bash
# Build the collection's docs site (antsibull-docs + Sphinx) into build/docs, offline, with no warnings.
#
# Usage: scripts/docs.sh            (no root needed; the venv from scripts/setup.sh)
# Environment: VENV (default <repo>/.venv)
# Result: build/docs/html/index.html
#
#   1. build/docs/collections/ansible_collections/nucleus/criu -> this repo, and only that collection
#      is visible (ANSIBLE_COLLECTIONS_PATH, no sys.path scan);
#   2. `antsibull-docs sphinx-init` writes the Sphinx project (conf.py, rst/index.rst), to which this
#      script appends the offline settings below and replaces the index page;
#   3. `antsibull-docs collection` writes the module and role pages and the extra docs
#      (docs/docsite/extra-docs.yml, docs/docsite/rst/*.rst) with --fail-on-error;
#   4. each extra doc page is a stub naming its Markdown source (docs/*.md, SECURITY.md): it is
#      replaced by that file (rendered by myst-parser), with its links between those files rewritten
#      to the pages; a relative link to anything that is not a page of the site is an error;
#   5. `sphinx-build -W --keep-going` (nitpicky): any warning fails the build.
# Intersphinx is disabled (no network). The few references the generated pages make into the
# Ansible documentation (common return values, configuration settings, ansible.builtin plugins)
# are resolved by a missing-reference handler to their docs.ansible.com address; any other
# unresolved reference stays a warning.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
VENV="${VENV:-$REPO/.venv}"
readonly OUT="$REPO/build/docs"
readonly COLLECTION=nucleus.criu

if [[ ! -x "$VENV/bin/antsibull-docs" || ! -x "$VENV/bin/sphinx-build" ]]; then
    echo "docs.sh: no antsibull-docs or sphinx-build in $VENV (run scripts/setup.sh, or pip install -r requirements/test.txt)" >&2
    exit 2
fi
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$OUT/collections" ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_NOCOLOR=1 NO_COLOR=1

rm -rf -- "$OUT"
mkdir -p "$OUT/collections/ansible_collections/nucleus" "$OUT/site/rst"
ln -s "$REPO" "$OUT/collections/ansible_collections/nucleus/criu"
# antsibull-docs wants its output directories writable by their owner only.
chmod 0755 "$OUT/site"
chmod 0755 "$OUT/site/rst"

# --- 2. the Sphinx project ----------------------------------------------------------------------------
antsibull-docs sphinx-init --use-current --fail-on-error --no-add-antsibull-docs-version \
    --project "$COLLECTION" --copyright "$COLLECTION contributors" --title "$COLLECTION" \
    --dest-dir "$OUT/site" "$COLLECTION" >/dev/null

cat >>"$OUT/site/conf.py" <<'EOF'

# --- appended by scripts/docs.sh: an offline build -----------------------------------------------
extensions = [e for e in extensions if e != 'sphinx.ext.intersphinx'] + ['myst_parser']
intersphinx_mapping = {}
# Anchors for the Markdown headings, as GitHub makes them (docs/*.md link to sections of each other).
myst_heading_anchors = 3
# The Markdown docs show abbreviated JSON ("...") in json blocks; Pygments then falls back to its
# relaxed mode and the block still renders. Nothing else is suppressed.
suppress_warnings = ['misc.highlighting_failure']

_ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/devel/'
_ANSIBLE_LABELS = {
    'common_return_values': 'reference_appendices/common_return_values.html',
    'ansible_configuration_settings': 'reference_appendices/config.html',
    'action_plugins': 'plugins/action.html',
}
_BUILTIN = 'ansible_collections.ansible.builtin.'


def _ansible_docs_reference(app, env, node, contnode):
    """Resolve the generated pages' references into the Ansible docs without intersphinx."""
    from docutils import nodes

    if node.get('refdomain') != 'std' or node.get('reftype') != 'ref':
        return None
    target = node.get('reftarget', '')
    path = _ANSIBLE_LABELS.get(target)
    if path is None and target.startswith(_BUILTIN) and '_' in target[len(_BUILTIN):]:
        plugin, _, kind = target[len(_BUILTIN):].rpartition('_')
        path = 'collections/ansible/builtin/%s_%s.html' % (plugin, kind)
    if path is None:
        return None
    reference = nodes.reference('', '', internal=False, refuri=_ANSIBLE_DOCS + path)
    reference += contnode
    return reference


def setup(app):
    app.connect('missing-reference', _ansible_docs_reference)
EOF

cat >"$OUT/site/rst/index.rst" <<'EOF'
.. _docsite_root_index:

nucleus.criu
============

Checkpoint, verify, restore and migrate live Linux process trees with `CRIU <https://criu.org>`_, from Ansible.

The collection's modules and roles, and its guides: the operator guide, the checkpoint directory format,
the threat model, the benchmark and the security policy.

.. toctree::
   :maxdepth: 2
   :caption: Collection:

   collections/nucleus/criu/index

.. toctree::
   :maxdepth: 1
   :caption: Plugin indexes:
   :glob:

   collections/index_*

.. toctree::
   :maxdepth: 1
   :caption: Reference indexes:

   collections/environment_variables
EOF

# --- 3. module, role and extra docs pages --------------------------------------------------------------
antsibull-docs --config-file "$OUT/site/antsibull-docs.cfg" collection --use-current --fail-on-error \
    --no-add-antsibull-docs-version --cleanup everything --dest-dir "$OUT/site/rst" "$COLLECTION"

# --- 4. the Markdown sources in place of the stubs ---------------------------------------------------
"$VENV/bin/python" - "$REPO" "$OUT/site/rst/collections/nucleus/criu/docsite" <<'PY'
import os
import re
import sys

repo, docsite = sys.argv[1:3]
# page (docs/docsite/rst/PAGE.rst) -> its Markdown source, relative to the repo
PAGES = {
    "guide": "docs/guide.md",
    "format": "docs/format.md",
    "threat-model": "docs/threat-model.md",
    "benchmark": "docs/benchmark.md",
    "security": "SECURITY.md",
}
LINK = re.compile(r"\]\(([^()\s]+)\)")
by_source = {source: page for page, source in PAGES.items()}
stubs = {name[:-4] for name in os.listdir(docsite) if name.endswith(".rst")}
if stubs != set(PAGES):
    sys.exit("docs.sh: the extra docs pages %s differ from the Markdown sources known here %s: "
             "update PAGES in scripts/docs.sh" % (sorted(stubs), sorted(PAGES)))
errors = []
for page, source in PAGES.items():
    with open(os.path.join(repo, source), encoding="utf-8") as f:
        text = f.read()

    def relink(match, source=source):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        path, sep, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
        if resolved not in by_source:
            errors.append("%s links to %s, which is not a page of the docs site" % (source, target))
            return match.group(0)
        return "](%s.md%s%s)" % (by_source[resolved], sep, anchor)

    text = LINK.sub(relink, text)
    os.remove(os.path.join(docsite, page + ".rst"))
    with open(os.path.join(docsite, page + ".md"), "w", encoding="utf-8") as f:
        # The stub's label, and plain text for code blocks without a language (command output).
        f.write("(ansible_collections.nucleus.criu.docsite.%s)=\n\n```{highlight} none\n```\n\n%s" % (page, text))
if errors:
    sys.exit("docs.sh: " + "\n".join(errors))
PY

# --- 5. the site ------------------------------------------------------------------------------------
sphinx-build -b html -q -W --keep-going -c "$OUT/site" "$OUT/site/rst" "$OUT/html"
echo "docs.sh: $OUT/html/index.html"
