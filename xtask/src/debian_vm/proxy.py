#!/usr/bin/python3
"""A stand-in sdm-proxy for the Debian VM test: it connects, over and over,
to an address no rule allows and to one the test's [[allow]] rule allows,
and appends each result to a log the scenarios read:
    <unix ns> <pid> start
    <unix ns> <pid> denied|allowed OK|EPERM|ECONNREFUSED|TIMEOUT|...
The denied address is reached through a veth into a network namespace that
accepts on it, so a connect that is not refused by the agent succeeds
(OK): any "denied OK" line is traffic that went out unpoliced."""

import errno
import os
import socket
import time

LOG = "/var/lib/sdmvm/proxy.log"
TARGETS = (("denied", ("198.51.100.7", 443)), ("allowed", ("10.77.0.2", 443)))


def attempt(addr):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(addr)
        return "OK"
    except OSError as err:
        if err.errno is None:
            return "TIMEOUT"
        return errno.errorcode.get(err.errno, str(err.errno))
    finally:
        sock.close()


def main():
    pid = os.getpid()
    with open(LOG, "a", buffering=1) as log:
        log.write(f"{time.time_ns()} {pid} start\n")
        while True:
            # The denied address first: a service's very first connect.
            for name, addr in TARGETS:
                result = attempt(addr)
                log.write(f"{time.time_ns()} {pid} {name} {result}\n")
            time.sleep(0.1)


main()
