#!/usr/bin/env bash
# A private certificate authority and the certificates the TLS tests need (openssl from Debian's packages).
# Usage: scripts/servers/certs.sh [DIR]     (default DIR: .servers/tls; idempotent: an existing,
#                                            still valid set is kept)
# Writes, all PEM:
#   ca.pem ca.key                  the test CA every client is told to trust (tls_ca_file)
#   server.pem server.key          a server certificate for DNS:localhost only (not 127.0.0.1, so
#                                  connecting to 127.0.0.1 with host-name verification is the
#                                  "wrong host name" case), signed by the CA
#   server-key.pem                 server.key followed by server.pem (Cassandra's PEM keystore)
#   client.pem client.key          a client certificate with CN=persistence_cert (PostgreSQL's
#                                  certificate authentication maps the CN to the role of that name)
#   expired.pem expired.key        a server certificate for localhost that expired in 2020
#   other-ca.pem                   a second CA that signed nothing here (the "wrong CA" case)
#   env                            PERSISTENCE_TEST_TLS_DIR=<DIR>
set -euo pipefail

SERVER_NAME=certs # log prefix, read by common.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR="${1:-$SERVERS_REPO_ROOT/.servers/tls}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
require_cmd openssl "apt-get install -y openssl"

# Kept when present and valid for at least another day.
if [[ -f $DIR/env && -f $DIR/server.pem ]] && openssl x509 -checkend 86400 -noout -in "$DIR/server.pem" >/dev/null 2>&1; then
    cat "$DIR/env"
    exit 0
fi

cd "$DIR"
rm -f ./*.pem ./*.key ./*.csr ./*.srl ./*.cnf env index.txt* serial*
quiet() { "$@" >/dev/null 2>&1 || { log "ERROR: $* failed"; "$@"; exit 1; }; }

quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=persistence test CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=some other CA" -keyout other-ca.key -out other-ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
rm -f other-ca.key

cat > leaf.cnf <<'EOF'
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF

# leaf NAME CN SECTION [openssl x509 args...]
leaf() {
    local name=$1 cn=$2 section=$3; shift 3
    quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$cn" -keyout "$name.key" -out "$name.csr"
    quiet openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile leaf.cnf -extensions "$section" -out "$name.pem" "$@"
    rm -f "$name.csr"
}
leaf server localhost server -days 3650
leaf client persistence_cert client -days 3650

# An expired certificate: `openssl ca` takes explicit start and end dates.
mkdir -p ca.db
: > ca.db/index.txt
echo 1000 > ca.db/serial
cat > ca.cnf <<EOF
[ca]
default_ca = test
[test]
dir = $DIR/ca.db
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
certificate = $DIR/ca.pem
private_key = $DIR/ca.key
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
EOF
quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout expired.key -out expired.csr
quiet openssl ca -batch -config ca.cnf -startdate 20190101000000Z -enddate 20200101000000Z \
    -extfile leaf.cnf -extensions server -in expired.csr -out expired.pem -notext
rm -rf expired.csr ca.db ca.cnf leaf.cnf ca.srl

# Servers read keys in PKCS#8 (PostgreSQL and Java both do); the server key must not be
# readable by others for PostgreSQL.
for k in server client expired; do
    quiet openssl pkcs8 -topk8 -nocrypt -in "$k.key" -out "$k.key.p8"
    mv "$k.key.p8" "$k.key"
done
cat server.key server.pem > server-key.pem
chmod 600 ./*.key server-key.pem
chmod 644 ./*.pem
chmod 600 server-key.pem

echo "PERSISTENCE_TEST_TLS_DIR=$DIR" > env
log "certificates in $DIR (CA: ca.pem)"
cat env
