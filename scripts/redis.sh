# Sourced by test.sh: Debian's redis-server (the cluster tests start their own servers on
# free ports, tests/redis_harness.py), pinned, installed with apt-get where missing.
# The package's postinst starts its system service (invoke-rc.d, or systemd where it runs)
# unless a policy-rc.d forbids it: a server the tests did not start, listening on 6379, is
# stopped again here, so the install leaves nothing running.
REDIS_VERSION=5:7.0.15-1~deb12u10
if ! command -v redis-server >/dev/null 2>&1; then
    echo "corral: installing Debian's redis-server $REDIS_VERSION…" >&2
    if ! apt-cache show "redis-server=$REDIS_VERSION" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "redis-server=$REDIS_VERSION" "redis-tools=$REDIS_VERSION" >/dev/null ||
    # a security update replaces the pinned build in Debian's archive (its security
    # suite keeps only the newest): take the current build of the same release
    case "$(apt-cache policy redis-server | awk '/Candidate:/ {print $2}')" in
        "${REDIS_VERSION%%-*}"-*) ;;
        *) echo "corral: no redis-server ${REDIS_VERSION%%-*} in apt's sources" >&2; false ;;
    esac &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-tools >/dev/null
    # only the package's own service, by its pid file: never a server someone else runs
    if [ -s /run/redis/redis-server.pid ] &&
        kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null; then
        echo "corral: stopping the redis-server service the package started" >&2
        if [ -d /run/systemd/system ]; then
            systemctl stop redis-server.service || true
        else
            invoke-rc.d --force redis-server stop >/dev/null 2>&1 ||
                kill "$(cat /run/redis/redis-server.pid)" || true
        fi
    fi
fi
