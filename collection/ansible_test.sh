#!/bin/bash
# Run ansible-test on a staged copy of the collection:
#
#   collection/ansible_test.sh sanity [ARGS...]   # ansible-test sanity --venv --python 3.11 ARGS
#   collection/ansible_test.sh units [ARGS...]    # ansible-test units --venv --python 3.11 ARGS
#
# ansible-test only runs inside .../ansible_collections/NS/NAME/ and uses
# `git ls-files` when it finds a repository above it, so a copy inside this
# (git) repository would be invisible: the collection is staged into a fresh
# temporary directory outside it, and that directory is removed afterwards.
# ANSIBLE_TEST (default: ansible-test on PATH) and PYTHON_VERSION (3.11) can
# be overridden.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 sanity|units|... [ansible-test arguments]" >&2
    exit 2
fi
command="$1"
shift

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ansible_test="${ANSIBLE_TEST:-ansible-test}"
python_version="${PYTHON_VERSION:-3.11}"

# --venv bootstraps pip in its fresh venvs with a get-pip script downloaded
# from ci-files.testing.ansible.com, which is not reachable from here (only
# PyPI is). ansible-test uses a cached copy when there is one: if there is
# none, cache a stand-in that bootstraps pip from the standard library's
# ensurepip, then installs what ansible-test asked for (pip==X) from PyPI.
ansible_test_python="$(head -1 "$(command -v "$ansible_test")" | sed 's/^#! *//')"
pip_version="$("$ansible_test_python" -c '
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="'"$python_version"'"))["pip"])')"
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -e "$get_pip" ]; then
    mkdir -p "$(dirname "$get_pip")"
    cat > "$get_pip" <<'STANDIN'
"""Stand-in for get-pip.py, written by snaplab's collection/ansible_test.sh
(ci-files.testing.ansible.com is not reachable): ensurepip, then pip install ARGS."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
STANDIN
fi

stage_dir="$(mktemp -d -t snaplab-ansible-test-XXXXXX)"
trap 'rm -rf "$stage_dir"' EXIT

collection="$(python3 "$here/stage.py" "$stage_dir")"
cd "$collection"
"$ansible_test" "$command" --venv --python "$python_version" "$@"
