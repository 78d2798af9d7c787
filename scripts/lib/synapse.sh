# Sourced by scripts/test and scripts/demo: the pinned Synapse in a cached venv.
# Sets SYNAPSE_VERSION, synapse_venv and SYNAPSE_PYTHON; installs on first use.
SYNAPSE_VERSION=1.163.2
synapse_cache=${LETTA_MATRIX_TEST_CACHE:-$HOME/.cache/letta-matrix}
synapse_venv=$synapse_cache/synapse-$SYNAPSE_VERSION

install_synapse() {
    if [ "$("$synapse_venv/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null)" != "$SYNAPSE_VERSION" ]; then
        command -v python3 >/dev/null || { echo "python3 is needed to install Synapse" >&2; return 1; }
        rm -rf "$synapse_venv"
        python3 -m venv "$synapse_venv" || { echo "cannot create a venv (Debian: apt-get install python3-venv)" >&2; return 1; }
        "$synapse_venv/bin/pip" install --quiet "matrix-synapse==$SYNAPSE_VERSION"
    fi
    export SYNAPSE_PYTHON=$synapse_venv/bin/python
}
