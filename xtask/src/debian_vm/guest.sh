#!/bin/bash
# The Debian VM scenarios of issue 13, run inside the guest under systemd by
# sdmvm.service (a oneshot baked into the image) from the payload disk
# mounted at /payload. `cargo xtask debian-vm` writes the payload and reads
# the results from the serial console:
#   SDMVM: PASS <scenario> (<detail>)
#   SDMVM: FAIL <scenario>: <why>
#   SDMVM: DONE <passed> passed, <failed> failed
# The run spans a reboot: the phase is kept in /var/lib/sdmvm on the guest's
# disk (qemu's snapshot overlay keeps it across the reset).
#
# Also run as `sdmvm-guest net` by sdmvm-net.service, at every boot before
# sdm-proxy: the addresses the stand-in connects to.
set -u

P=/payload
STATE=/var/lib/sdmvm
LOG=$STATE/proxy.log
CONSOLE=/dev/ttyS0
AGENT=/usr/bin/sdm-agent
CONFIG=/etc/sdm-agent/config.toml
DROP_IN=/etc/systemd/system/sdm-proxy.service.d/sdm-agent.conf
EXAMPLE=/usr/share/doc/sdm-agent/examples/sdm-proxy-sdm-agent.conf
SLICE_CG=/sys/fs/cgroup/sdm.slice/sdm-proxy.slice
# The most `systemd-analyze security` may rate the agent (issue 13).
MAX_EXPOSURE=2.5

say() {
    echo "SDMVM: $*"
    echo "SDMVM: $*" >"$CONSOLE"
}

# The network the stand-in reaches: a veth into namespace "far", which
# holds the allowed 10.77.0.2 and the denied 198.51.100.7 (TEST-NET-2, routed
# only here); the listener is started by sdmvm-net.service in "far".
net() {
    ip netns add far
    ip link add sdmvm0 type veth peer name sdmvm1 netns far
    ip addr add 10.77.0.1/24 dev sdmvm0
    ip link set sdmvm0 up
    ip -n far link set lo up
    ip -n far addr add 10.77.0.2/24 dev sdmvm1
    ip -n far addr add 198.51.100.7/32 dev sdmvm1
    ip -n far link set sdmvm1 up
    ip route add 198.51.100.7/32 via 10.77.0.2
}

if [ "${1:-}" = net ]; then
    net
    exit $?
fi

# ---------------------------------------------------------------- helpers

WHY=
INFO=
PASSED=0
FAILED=0

# scenario NAME FUNCTION: runs it, prints PASS or FAIL with $INFO or $WHY.
scenario() {
    WHY=
    INFO=
    echo "=== scenario $1"
    if "$2" && [ -z "$WHY" ]; then
        say "PASS $1${INFO:+ ($INFO)}"
        PASSED=$((PASSED + 1))
    else
        say "FAIL $1: ${WHY:-failed}"
        FAILED=$((FAILED + 1))
    fi
    echo "$PASSED $FAILED" >"$STATE/counts"
}

# no WHY: sets the failure reason and fails.
no() {
    WHY="$*"
    return 1
}

# until_true SECS 'CONDITION': evaluates the shell CONDITION (quoted, so
# that it is expanded afresh each time; it sees the caller's locals) every
# half second for up to SECS.
until_true() {
    local end=$((SECONDS + $1))
    while ! eval "$2" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.5
    done
}

# count_since MARK PID PATTERN: lines of pid PID after line MARK matching PATTERN.
count_since() { log_since "$1" "$2" | grep -c -- "$3"; }

lines() { wc -l <"$LOG"; }

# The proxy log after line $1 (a count from `lines`), for pid $2.
log_since() { tail -n +"$(($1 + 1))" "$LOG" | awk -v pid="$2" '$2 == pid'; }

proxy_pid() { systemctl show -p MainPID --value sdm-proxy.service; }

# A value of `sdm-agent status --json`, by a Python expression on `s`.
status_value() {
    "$AGENT" status --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}

# Checks common to every scenario that leaves the agent running: active,
# enforcing, on sdm-proxy.slice, policy live.
agent_enforcing() {
    [ "$(systemctl is-active sdm-agent.service)" = active ] ||
        no "sdm-agent.service is $(systemctl is-active sdm-agent.service)" || return 1
    local out
    out=$("$AGENT" policed --cgroup unit:sdm-proxy.slice --enforce 2>&1) ||
        no "sdm-agent policed: $out" || return 1
    INFO="$out"
}

# No connect of pid $2 to the denied address succeeded after line $1, and
# at least $3 were tried (the window was covered).
none_got_through() {
    local after
    after=$(log_since "$1" "$2")
    local tried ok
    tried=$(echo "$after" | grep -c ' denied ')
    ok=$(echo "$after" | grep -c ' denied OK')
    [ "$ok" -eq 0 ] || no "$ok connects to the denied address succeeded" || return 1
    [ "$tried" -ge "$3" ] || no "only $tried connects were tried in the window" || return 1
    echo "$tried"
}

journal_since() { journalctl --no-pager -o cat --since "@$1" "${@:2}"; }

# ---------------------------------------------------------------- phase 1

setup() {
    mkdir -p "$STATE"
    : >"$LOG"
    install -m 0755 "$P/guest.sh" /usr/local/sbin/sdmvm-guest
    install -m 0755 "$P/proxy.py" /usr/local/bin/sdm-proxy-standin
    cat >/usr/local/bin/sdmvm-listen <<'EOF'
import socket
server = socket.create_server(("0.0.0.0", 443), backlog=128)
while True:
    server.accept()[0].close()
EOF
    cat >/etc/systemd/system/sdmvm-net.service <<'EOF'
[Unit]
Description=sdmvm: the addresses the stand-in sdm-proxy connects to
Before=sdm-proxy.service
[Service]
ExecStartPre=/usr/local/sbin/sdmvm-guest net
ExecStart=/usr/bin/ip netns exec far /usr/bin/python3 /usr/local/bin/sdmvm-listen
[Install]
WantedBy=multi-user.target
EOF
    # A stand-in for StrongDM's sdm-proxy.service: what matters is the
    # drop-in the package ships, added below as an operator would.
    cat >/etc/systemd/system/sdm-proxy.service <<'EOF'
[Unit]
Description=stand-in sdm-proxy
StartLimitIntervalSec=0
[Service]
ExecStart=/usr/local/bin/sdm-proxy-standin
Restart=on-failure
RestartSec=3s
[Install]
WantedBy=multi-user.target
EOF
    mkdir -p /etc/sdm-agent "$(dirname "$DROP_IN")"
    install -m 0644 "$P/config.toml" "$CONFIG"
    systemctl daemon-reload
    systemctl enable sdm-proxy.service sdmvm-net.service
    systemctl start sdmvm-net.service
    # With cgroup = "unit:sdm-proxy.slice" the agent waits for the slice's
    # cgroup before it reports ready; sdm-proxy's start creates it at boot.
    # Here sdm-proxy is not started yet: start the (empty) slice.
    systemctl start sdm-proxy.slice
}

install_pkg() {
    [ ! -e /sys/fs/bpf/sdm ] || no "/sys/fs/bpf/sdm exists before the install (not a fresh host)" || return 1
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold --force-confdef "$P/$DEB" ||
        no "dpkg -i $DEB failed" || return 1
    agent_enforcing || return 1
    local cg
    cg=$(status_value 's["cgroup"]')
    [ "$cg" = "$SLICE_CG" ] || no "the agent polices $cg, not $SLICE_CG" || return 1
}

first_connect() {
    cmp -s "$P/sdm-proxy-sdm-agent.conf" "$EXAMPLE" ||
        no "the package's example drop-in differs from deploy/debian" || return 1
    install -m 0644 "$EXAMPLE" "$DROP_IN"
    systemctl daemon-reload
    local mark
    mark=$(lines)
    systemctl start sdm-proxy.service || no "systemctl start sdm-proxy failed" || return 1
    local pid
    pid=$(proxy_pid)
    until_true 20 '[ "$(count_since "$mark" "$pid" " allowed OK")" -ge 3 ]' ||
        no "the stand-in made no allowed connect: $(log_since "$mark" "$pid" | tail -n 3 | tr '\n' ' ')" ||
        return 1
    local first
    first=$(log_since "$mark" "$pid" | grep -v ' start$' | head -n 1 | cut -d' ' -f3-)
    [ "$first" = "denied EPERM" ] || no "first connect: $first, expected denied EPERM" || return 1
    none_got_through "$mark" "$pid" 1 >/dev/null || return 1
    local cg
    cg=$(systemctl show -p ControlGroup --value sdm-proxy.service)
    [ "$cg" = /sdm.slice/sdm-proxy.slice/sdm-proxy.service ] ||
        no "sdm-proxy runs in $cg" || return 1
    # Counted: the allowed rule's packets and the refused connects.
    local counted
    counted=$(status_value '"%d %d" % (sum(r["egress"]["packets"] for r in s["rules"] if r["name"] == "allow/peer"), sum(d["packets"] for d in s["denied"]))')
    local allowed=${counted% *} denied=${counted#* }
    [ "$allowed" -gt 0 ] || no "allow/peer counted no egress packet" || return 1
    [ "$denied" -gt 0 ] || no "no denied packet counted" || return 1
    journalctl --no-pager -o cat -u sdm-proxy.service | grep -q '^policed: ' ||
        no "sdm-proxy's ExecStartPre= did not report its cgroup policed" || return 1
    INFO="first connect EPERM; allow/peer egress $allowed packets, $denied denied counted"
}

restart_agent() {
    local pid mark before
    pid=$(proxy_pid)
    mark=$(lines)
    before=$(date +%s)
    systemctl restart sdm-agent.service || no "systemctl restart sdm-agent failed" || return 1
    sleep 2
    [ "$(proxy_pid)" = "$pid" ] || no "sdm-proxy was restarted with the agent" || return 1
    local tried
    tried=$(none_got_through "$mark" "$pid" 5) || return 1
    agent_enforcing || return 1
    journal_since "$before" -u sdm-agent.service | grep -q 'adopted the pinned programs' ||
        no "the restarted agent did not adopt the pins" || return 1
    INFO="$tried connects during the restart, all refused"
}

agent_main_pid() { systemctl show -p MainPID --value sdm-agent.service; }

reloaded_rule_live() {
    [ "$(status_value "any(r['name'] == 'allow/reloaded' and r['active'] for r in s['rules'])")" = True ]
}

reloads_refused() { status_value "(s.get('last_reload') or {}).get('refused', 0)"; }

# systemctl reload: a rule added to the config goes live in the same agent
# process; then a bad key is refused and the agent runs on. The config is
# put back as it was for the scenarios after this one.
reload_agent() {
    cp "$CONFIG" "$STATE/config.before-reload"
    reload_steps && return 0
    # A failed step leaves the added rule (or the bad key) in the config:
    # put it back, so that the later scenarios (a reboot starts the agent
    # from it) fail for their own reasons only.
    cp "$STATE/config.before-reload" "$CONFIG"
    systemctl reload sdm-agent.service
    return 1
}

reload_steps() {
    local pid agent mark
    pid=$(proxy_pid)
    agent=$(agent_main_pid)
    mark=$(lines)
    printf '\n[[allow]]\nname = "reloaded"\ndirection = "egress"\nto = "10.77.0.2/32"\nport = 8443\nproto = "tcp"\n' >>"$CONFIG"
    systemctl reload sdm-agent.service || no "systemctl reload sdm-agent failed" || return 1
    until_true 20 reloaded_rule_live ||
        no "allow/reloaded is not live after systemctl reload: $(journalctl --no-pager -o cat -u sdm-agent.service | tail -n 3 | tr '\n' ' ')" ||
        return 1
    echo 'colour = "blue"' >>"$CONFIG"
    systemctl reload sdm-agent.service || no "systemctl reload (bad key) failed" || return 1
    until_true 20 '[ "$(reloads_refused)" -ge 1 ]' || no "the bad config's reload was not refused" || return 1
    journalctl --no-pager -o cat -u sdm-agent.service | grep 'reloading the config failed' | grep -q 'colour' ||
        no "the journal does not name the bad key" || return 1
    [ "$(agent_main_pid)" = "$agent" ] || no "the agent was restarted: pid $agent -> $(agent_main_pid)" || return 1
    reloaded_rule_live || no "the previous policy lost allow/reloaded after the refused reload" || return 1
    cp "$STATE/config.before-reload" "$CONFIG"
    systemctl reload sdm-agent.service || no "systemctl reload (the config put back) failed" || return 1
    until_true 20 '! reloaded_rule_live' || no "allow/reloaded is still live with the config put back" || return 1
    [ "$(proxy_pid)" = "$pid" ] || no "sdm-proxy was restarted by a reload" || return 1
    local tried
    tried=$(none_got_through "$mark" "$pid" 3) || return 1
    agent_enforcing || return 1
    INFO="a rule added and removed in agent pid $agent, a bad key refused; $tried connects meanwhile, all refused"
}

before_reboot() {
    cat /proc/sys/kernel/random/boot_id >"$STATE/boot_id"
    echo rebooted >"$STATE/phase"
    sync
    say "rebooting"
    systemctl reboot --no-block
}

# ---------------------------------------------------------------- phase 2

after_reboot() {
    [ "$(cat /proc/sys/kernel/random/boot_id)" != "$(cat "$STATE/boot_id")" ] ||
        no "the guest did not reboot" || return 1
    until_true 60 '[ "$(systemctl is-active sdm-proxy.service)" = active ]' ||
        no "sdm-proxy.service is $(systemctl is-active sdm-proxy.service) after the reboot" || return 1
    agent_enforcing || return 1
    local ready started pid
    ready=$(systemctl show -p ActiveEnterTimestampMonotonic --value sdm-agent.service)
    started=$(systemctl show -p ExecMainStartTimestampMonotonic --value sdm-proxy.service)
    [ "$ready" -gt 0 ] && [ "$ready" -le "$started" ] ||
        no "sdm-proxy started (${started} us) before the agent was ready (${ready} us)" || return 1
    pid=$(proxy_pid)
    until_true 20 '[ "$(count_since 0 "$pid" " denied ")" -ge 1 ]' ||
        no "the stand-in made no connect after the reboot" || return 1
    local first
    first=$(log_since 0 "$pid" | grep -v ' start$' | head -n 1 | cut -d' ' -f3-)
    [ "$first" = "denied EPERM" ] || no "first connect after the reboot: $first" || return 1
    none_got_through 0 "$pid" 1 >/dev/null || return 1
    INFO="agent ready at $((ready / 1000)) ms, sdm-proxy started at $((started / 1000)) ms; first connect EPERM"
}

link_ids() { bpftool -j cgroup show "$SLICE_CG"; }

upgrade() {
    local pid mark before ids
    pid=$(proxy_pid)
    mark=$(lines)
    before=$(date +%s)
    ids=$(link_ids)
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold --force-confdef "$P/$DEB_NEXT" ||
        no "dpkg -i $DEB_NEXT failed" || return 1
    sleep 2
    local version
    version=$(dpkg-query -W -f '${Version}' sdm-agent)
    [ "$version" = "$VERSION_NEXT" ] || no "dpkg has version $version, not $VERSION_NEXT" || return 1
    journal_since "$before" -u sdm-agent.service | grep -q 'adopted the pinned programs' ||
        no "the upgraded agent did not adopt the pins" || return 1
    [ "$(link_ids)" = "$ids" ] || no "the programs on $SLICE_CG changed: $ids -> $(link_ids)" || return 1
    [ "$(proxy_pid)" = "$pid" ] || no "sdm-proxy was restarted by the upgrade" || return 1
    local tried
    tried=$(none_got_through "$mark" "$pid" 5) || return 1
    agent_enforcing || return 1
    INFO="$VERSION_NEXT adopted the same $(echo "$ids" | grep -o '"id"' | wc -l) programs; $tried connects during it, all refused"
}

journal_and_security() {
    # tracing's fields (key=value) under systemd's own fields.
    local info
    info=$(journalctl --no-pager -o cat -u sdm-agent.service | grep -E ' INFO .*cgroup=' | tail -n 1)
    [ -n "$info" ] || no "no INFO line with cgroup= from the agent in the journal" || return 1
    journalctl --no-pager -o json -u sdm-agent.service | grep -q '"SYSLOG_IDENTIFIER":"sdm-agent"' ||
        no "the journal has no entry of identifier sdm-agent" || return 1
    local overall level
    overall=$(systemd-analyze security --no-pager sdm-agent.service | grep 'Overall exposure level')
    level=$(echo "$overall" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
    [ -n "$level" ] || no "no exposure level in: $overall" || return 1
    python3 -c "import sys; sys.exit(0 if float('$level') <= $MAX_EXPOSURE else 1)" ||
        no "systemd-analyze security rates sdm-agent $level, above $MAX_EXPOSURE" || return 1
    INFO="exposure $level; e.g. ${info:0:120}"
}

broken_config() {
    systemctl stop sdm-proxy.service
    systemctl stop sdm-agent.service
    # The state a fresh boot leaves: no pins. (A stopped agent's pins would
    # still police sdm-proxy, rightly.)
    "$AGENT" detach >/dev/null || no "sdm-agent detach failed" || return 1
    cp "$CONFIG" "$STATE/config.good"
    echo 'mode = "bogus"' >>"$CONFIG"
    systemctl reset-failed sdm-agent.service sdm-proxy.service
    local mark before
    mark=$(lines)
    before=$(date +%s)
    systemctl start --no-block sdm-proxy.service
    # sdm-proxy's start waits (After=) while the agent fails and is
    # restarted, until the agent's start limit ends its start job; then
    # sdm-proxy's ExecStartPre= refuses, and its Restart= tries again.
    until_true 150 'journal_since "$before" -u sdm-proxy.service | grep -q "not policed"' ||
        no "sdm-proxy's ExecStartPre= never refused: $(systemctl status --no-pager sdm-proxy.service | head -n 5 | tr '\n' ' ')" ||
        return 1
    local waited=$(($(date +%s) - before))
    sleep 5
    local started
    started=$(tail -n +"$((mark + 1))" "$LOG" | grep -c ' start$')
    [ "$started" -eq 0 ] || no "sdm-proxy ran $started time(s) while the agent could not start" || return 1
    [ "$(systemctl is-active sdm-proxy.service)" != active ] || no "sdm-proxy is active" || return 1
    journal_since "$before" -u sdm-proxy.service | grep -q 'not policed' ||
        no "sdm-proxy's journal does not say why it was refused" || return 1
    local reason
    reason=$(journal_since "$before" -u sdm-proxy.service | grep -m1 'not policed')
    # The agent fixed and started: sdm-proxy follows on its own (Restart=),
    # policed from its first connect.
    cp "$STATE/config.good" "$CONFIG"
    systemctl reset-failed sdm-agent.service
    systemctl start sdm-agent.service || no "the fixed agent did not start" || return 1
    until_true 60 '[ "$(systemctl is-active sdm-proxy.service)" = active ]' ||
        no "sdm-proxy did not come back after the agent was fixed" || return 1
    local pid
    pid=$(proxy_pid)
    until_true 20 '[ "$(count_since "$mark" "$pid" " denied ")" -ge 1 ]' ||
        no "the stand-in made no connect after the fix" || return 1
    local first
    first=$(log_since "$mark" "$pid" | grep -v ' start$' | head -n 1 | cut -d' ' -f3-)
    [ "$first" = "denied EPERM" ] || no "first connect after the fix: $first" || return 1
    INFO="refused after ${waited} s, never started while broken ($reason); back by itself, first connect EPERM"
}

purge() {
    DEBIAN_FRONTEND=noninteractive dpkg --purge sdm-agent || no "dpkg --purge failed" || return 1
    if [ -e /sys/fs/bpf/sdm ]; then
        local left
        left=$(find /sys/fs/bpf/sdm -mindepth 1 | head -n 5 | tr '\n' ' ')
        [ -z "$left" ] || no "left in /sys/fs/bpf/sdm: $left" || return 1
    fi
    local progs
    progs=$(bpftool prog show | grep -E 'name sdm_' | head -n 3 | tr '\n' ' ')
    [ -z "$progs" ] || no "programs still loaded: $progs" || return 1
    local attached
    attached=$(bpftool cgroup show "$SLICE_CG" 2>&1 | grep -v '^ID' | tr '\n' ' ')
    [ -z "$attached" ] || no "still attached to $SLICE_CG: $attached" || return 1
    local d
    for d in /var/lib/sdm-agent /run/sdm-agent /var/log/sdm-agent /etc/sdm-agent /usr/bin/sdm-agent; do
        [ ! -e "$d" ] || no "$d is left after the purge" || return 1
    done
    ! pgrep -x sdm-agent >/dev/null || no "an sdm-agent process still runs" || return 1
    INFO="no pins, no sdm_ programs, no state or run directory"
}

# ---------------------------------------------------------------- main

. "$P/versions"
mkdir -p "$STATE"
if [ "$(cat "$STATE/phase" 2>/dev/null)" != rebooted ]; then
    say "phase 1: Debian $(cat /etc/debian_version), kernel $(uname -r), systemd $(dpkg-query -W -f '${Version}' systemd) as PID 1 ($(cat /proc/1/comm))"
    setup
    scenario install install_pkg
    scenario first-connect first_connect
    scenario restart restart_agent
    scenario reload reload_agent
    before_reboot
    exit 0
fi
read -r PASSED FAILED <"$STATE/counts"
say "phase 2: rebooted"
scenario reboot after_reboot
scenario upgrade upgrade
scenario journal-security journal_and_security
scenario broken-config broken_config
scenario purge purge
say "DONE $PASSED passed, $FAILED failed"
systemctl poweroff --no-block
