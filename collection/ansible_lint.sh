#!/bin/bash
# Lint the collection as it ships, and the Molecule scenarios that use it:
#
#   collection/ansible_lint.sh [ansible-lint arguments]
#
# 1. antsibull-changelog lint: the fragments in changelogs/fragments/ and
#    changelogs/changelog.yaml (run at the repository's top, beside galaxy.yml);
# 2. ansible-lint --profile production on a staged copy of the collection, in
#    a fresh temporary directory outside this repository (as ansible_test.sh
#    does: the collection is what galaxy.yml, collection/ and roles/ make, and
#    ansible-lint in the repository would lint its layout, not the collection's);
# 3. ansible-lint --profile production on molecule/, its playbooks resolving
#    snaplab.snapshots to that staged copy.
#
# Nothing is excluded or skipped. --offline: ansible-lint installs no
# collection dependencies (galaxy.ansible.com is not reachable from here; the
# ansible package provides ansible.posix and community.general). The staged
# copy is removed afterwards. ANSIBLE_LINT and ANTSIBULL_CHANGELOG (default: on
# PATH) can be overridden.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
ansible_lint="${ANSIBLE_LINT:-ansible-lint}"
antsibull_changelog="${ANTSIBULL_CHANGELOG:-antsibull-changelog}"

(cd "$repo" && "$antsibull_changelog" lint && "$antsibull_changelog" lint-changelog-yaml changelogs/changelog.yaml)

stage_dir="$(mktemp -d -t snaplab-ansible-lint-XXXXXX)"
trap 'rm -rf "$stage_dir"' EXIT
collection="$(python3 "$here/stage.py" "$stage_dir/collections")"

# --project-dir: without it ansible-lint, finding no .git or config above a
# directory in /tmp, takes / as the project. ANSIBLE_COLLECTIONS_PATH: the
# roles' calls of the collection's own modules (snaplab.snapshots.*) resolve
# only when the staged collection is on the collections path (--offline
# installs nothing, not even the collection being linted).
export ANSIBLE_COLLECTIONS_PATH="$stage_dir/collections"
(cd "$collection" && "$ansible_lint" --profile production --offline --project-dir . "$@")

cp -r "$repo/molecule" "$stage_dir/molecule"
(cd "$stage_dir/molecule" && "$ansible_lint" --profile production --offline --project-dir . "$@")
