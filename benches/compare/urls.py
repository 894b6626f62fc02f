#!/usr/bin/env python3
"""URL lists of benches/compare: N URLs over H hosts on loopback, hosts in turn.

    python urls.py COUNT HOSTS PORT > list.txt

Hosts are loopback addresses, so every one is a distinct host name to a client (politeness
is per host) and the same nginx to the machine: up to 250 hosts are 127.0.0.1 .. 127.0.0.250,
more are 127.1.X.Y. URL i goes to host i mod H with the path /p/i, so any prefix of a list
spreads evenly over its hosts (the first 300 x 64 URLs of the 64-host list are 300 per host).
"""

import sys


def host(j, hosts):
    if hosts <= 250:
        return f"127.0.0.{j + 1}"
    return f"127.1.{j // 250}.{j % 250 + 1}"


def write(path, count, hosts, port):
    names = [host(j, hosts) for j in range(hosts)]
    with open(path, "w") as f:
        for i in range(count):
            f.write(f"http://{names[i % hosts]}:{port}/p/{i}\n")


if __name__ == "__main__":
    count, hosts, port = (int(x) for x in sys.argv[1:4])
    write("/dev/stdout", count, hosts, port)
