# Throwaway TLS certificates for the demo and for local clusters
# (scripts/demo --tls, scripts/dev-cluster --tls DIR). Source it after
# common.sh; do not execute it.
# shellcheck shell=bash

# The files tp_tls_certs keeps in its directory.
#   ca.crt, ca.key             the throwaway CA (its key stays with the caller)
#   node.crt, node.key         the PostgreSQL nodes' certificate
#   tidepool.crt, tidepool.key tidepool's (client-facing) certificate
# Both server certificates name DNS:localhost and IP:127.0.0.1 (and
# 127.0.0.2-10, see TP_TLS_SAN). Run as root,
# node.key belongs to the server user ($TIDEPOOL_PG_USER), since PostgreSQL
# wants its key owned by itself and mode 0600; the other keys belong to the
# caller, mode 0600. Certificates are mode 0644.
TP_TLS_FILES="ca.crt ca.key node.crt node.key tidepool.crt tidepool.key"
# 127.0.0.2-127.0.0.10 too: test clusters whose nodes listen on their own
# loopback address (Aurora stand-ins) are reached there with verify-full.
TP_TLS_SAN="DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4,IP:127.0.0.5,IP:127.0.0.6,IP:127.0.0.7,IP:127.0.0.8,IP:127.0.0.9,IP:127.0.0.10"
TP_TLS_DAYS=365

# True when DIR holds a complete set that can still be used for a day:
# every certificate signed by DIR/ca.crt, unexpired, and matching its key.
tp_tls_certs_ok() {
    local dir="$1" f name
    for f in $TP_TLS_FILES; do
        [ -s "$dir/$f" ] || return 1
    done
    for name in ca node tidepool; do
        openssl x509 -in "$dir/$name.crt" -noout -checkend 86400 >/dev/null 2>&1 || return 1
        [ "$(openssl x509 -in "$dir/$name.crt" -noout -pubkey 2>/dev/null)" \
            = "$(openssl pkey -in "$dir/$name.key" -pubout 2>/dev/null)" ] || return 1
    done
    openssl verify -CAfile "$dir/ca.crt" "$dir/node.crt" "$dir/tidepool.crt" >/dev/null 2>&1
}

# tp_tls_issue DIR NAME: a key and a server certificate NAME.{key,crt} in
# DIR, signed by DIR/ca.{crt,key}.
tp_tls_issue() {
    local dir="$1" name="$2"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" \
        -subj "/O=tidepool throwaway/CN=localhost" || return 1
    printf '%s\n' \
        "basicConstraints = critical, CA:FALSE" \
        "keyUsage = critical, digitalSignature" \
        "extendedKeyUsage = serverAuth" \
        "subjectAltName = $TP_TLS_SAN" \
        "subjectKeyIdentifier = hash" \
        "authorityKeyIdentifier = keyid" > "$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$TP_TLS_DAYS" -sha256 \
        -extfile "$dir/$name.ext" -out "$dir/$name.crt" || return 1
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# tp_tls_certs DIR: make sure DIR holds the files above, making a new CA
# and both certificates unless a usable set is there already (idempotent).
# Logs on stderr when it makes them; prints nothing on stdout.
tp_tls_certs() {
    local dir="$1"
    command -v openssl >/dev/null 2>&1 || tp_die "openssl not found (apt-get install openssl)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    (
        exec 8>>"$dir/.tls.lock"
        flock -w 60 8 || tp_die "another command holds $dir/.tls.lock"
        if ! tp_tls_certs_ok "$dir"; then
            local tmp f
            tmp="$(mktemp -d "$dir/.tls.XXXXXX")"
            trap 'rm -rf "$tmp"' EXIT
            umask 077
            # openssl's chatter goes to a log, shown when it fails.
            if ! {
                openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -days "$TP_TLS_DAYS" -sha256 \
                    -subj "/O=tidepool throwaway/CN=tidepool throwaway CA $(openssl rand -hex 4)" \
                    -addext "basicConstraints = critical, CA:TRUE" \
                    -addext "keyUsage = critical, keyCertSign, cRLSign" \
                    && tp_tls_issue "$tmp" node \
                    && tp_tls_issue "$tmp" tidepool
            } >"$tmp/openssl.log" 2>&1; then
                cat "$tmp/openssl.log" >&2
                tp_die "openssl could not make the certificates in $dir"
            fi
            rm -f "$tmp/openssl.log"
            tp_tls_certs_ok "$tmp" || tp_die "the certificates made in $tmp do not verify"
            chmod 0644 "$tmp"/*.crt
            chmod 0600 "$tmp"/*.key
            for f in ca.key ca.crt node.key node.crt tidepool.key tidepool.crt; do
                mv -f "$tmp/$f" "$dir/$f"
            done
            tp_log "made a throwaway CA and certificates in $dir (ca.crt, node.crt, tidepool.crt)"
        fi
        chmod 0644 "$dir/ca.crt" "$dir/node.crt" "$dir/tidepool.crt"
        chmod 0600 "$dir/ca.key" "$dir/node.key" "$dir/tidepool.key"
        if tp_is_root; then
            tp_ensure_pg_user
            chown "$TIDEPOOL_PG_USER:" "$dir/node.key"
            runuser -u "$TIDEPOOL_PG_USER" -- test -r "$dir/ca.crt" -a -r "$dir/node.crt" -a -r "$dir/node.key" \
                || tp_die "$TIDEPOOL_PG_USER cannot read the certificates in $dir (a parent directory is not searchable?)"
        fi
    )
}

# A string for a URI's query or path: everything but unreserved characters
# and '/' percent-encoded.
tp_uri_escape() {
    local s="$1" out="" c i
    local LC_ALL=C
    for (( i = 0; i < ${#s}; i++ )); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9._~/-]) out+="$c" ;;
            *) out+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf '%s\n' "$out"
}
