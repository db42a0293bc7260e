# run-as: user
# The setuid shim answers the version handshake for an unprivileged user, and doctor trusts it.
"$LOCALD_SHIM" --shim-version | grep -q '^locald-shim .* protocol [0-9]*$'
locald doctor | grep -q '^ok    shim.version'
locald doctor | grep -q '^ok    shim.mode'
