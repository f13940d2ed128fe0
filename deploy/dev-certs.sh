#!/usr/bin/env bash
# Dev-only federation PKI made with `fedquilt certs`: a CA, the coordinator, an admin and N sites.
#
#   deploy/dev-certs.sh OUT_DIR [N_SITES]          (default 3 sites: site-1 .. site-N)
#
# Layout (one folder per holder, so each container mounts only its own):
#   OUT/ca/           ca.pem ca.key crl.pem index.json   the CA; ca.key never leaves this folder
#   OUT/coordinator/  coordinator.pem coordinator.key ca.pem crl.pem
#   OUT/admin/        admin.pem admin.key ca.pem          for `fedquilt pull` / admin RPCs
#   OUT/site-K/       site-K.pem site-K.key ca.pem
#
# Idempotent: an existing CA or certificate is kept, a larger N_SITES adds only the missing sites,
# and OUT/coordinator/crl.pem is refreshed from OUT/ca/crl.pem on every run (after a revoke, run
# this again and the coordinator picks up the new CRL on its next call).
#
# Environment:
#   COORDINATOR_HOSTS          subjectAltNames of the coordinator (default "coordinator localhost 127.0.0.1")
#   FEDQUILT                   the command to run (default: `fedquilt` if on PATH, else `python3 -m fedquilt.cli.main`)
#   FEDQUILT_DEV_CERTS_OWNER   uid:gid to chown the holder folders to (e.g. 10001:10001, the images' user)
set -euo pipefail

usage() {
    echo "usage: $0 OUT_DIR [N_SITES]" >&2
    exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
out=$1
sites=${2:-3}
if ! [[ $sites =~ ^[0-9]+$ ]]; then
    echo "$0: N_SITES must be a whole number, got '$sites'" >&2
    exit 2
fi

if [[ -n ${FEDQUILT:-} ]]; then
    read -r -a fq <<<"$FEDQUILT"
elif command -v fedquilt >/dev/null 2>&1; then
    fq=(fedquilt)
else
    fq=("${PYTHON:-python3}" -m fedquilt.cli.main)
fi

read -r -a hosts <<<"${COORDINATOR_HOSTS:-coordinator localhost 127.0.0.1}"
ca=$out/ca
mkdir -p "$out"

if [[ -f $ca/ca.pem && -f $ca/ca.key ]]; then
    echo "CA: kept $ca/ca.pem"
else
    "${fq[@]}" certs init --dir "$ca" --name "fedquilt dev CA"
fi

# issue NAME ROLE [--host H]...: keep NAME's certificate if it is there, else issue one.
issue() {
    local name=$1 role=$2
    shift 2
    if [[ -f $out/$name/$name.pem && -f $out/$name/$name.key ]]; then
        echo "$name: kept $out/$name/$name.pem"
        return
    fi
    # --force: the files are gone but the CA may still list NAME; issue it again (certs issue refuses otherwise)
    "${fq[@]}" certs issue --dir "$ca" --out "$out/$name" --name "$name" --role "$role" --force "$@"
}

host_args=()
for h in "${hosts[@]}"; do
    host_args+=(--host "$h")
done
issue coordinator coordinator "${host_args[@]}"
issue admin admin
holders=(coordinator admin)
for ((i = 1; i <= sites; i++)); do
    issue "site-$i" site
    holders+=("site-$i")
done

# The coordinator reads the CRL from its own folder, so the CA folder (ca.key) is never mounted into it.
cp "$ca/crl.pem" "$out/coordinator/.crl.pem.tmp"
mv -f "$out/coordinator/.crl.pem.tmp" "$out/coordinator/crl.pem"

if [[ -n ${FEDQUILT_DEV_CERTS_OWNER:-} ]]; then
    for holder in "${holders[@]}"; do
        chown -R "$FEDQUILT_DEV_CERTS_OWNER" "$out/$holder"
    done
fi
echo "dev PKI ready in $out: coordinator, admin, ${sites} site(s)"
