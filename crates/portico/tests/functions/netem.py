"""A user-space `tc netem`: a point-to-point link between two network namespaces with a fixed
one-way delay, that can be cut and restored.

The test kernel has no sch_netem (only pfifo and htb), so the link is two TUN devices, one in
each namespace, and this process moves IP packets between them, each after `delay_ms`. It
reads commands on stdin: `cut` drops every packet both ways (a region vanishing from the
network), `restore` carries them again. It prints `ready` once both ends are up.

usage: netem.py NS_A ADDR_A NS_B ADDR_B DEVICE DELAY_MS
"""

import ctypes
import fcntl
import os
import queue
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

libc = ctypes.CDLL(None, use_errno=True)


def enter(netns):
    """Moves this thread into the named network namespace."""
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


def tun(device):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ns_a, addr_a, ns_b, addr_b, device, delay_ms = sys.argv[1:7]
    delay = float(delay_ms) / 1000.0
    fds = {}
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    enter(f"/var/run/netns/{ns_a}")
    fds["a"] = tun(device)
    enter(f"/var/run/netns/{ns_b}")
    fds["b"] = tun(device)
    if libc.setns(home, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back")
    os.close(home)
    for ns, mine, peer in ((ns_a, addr_a, addr_b), (ns_b, addr_b, addr_a)):
        run = lambda *args: subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True)
        run("addr", "add", mine, "peer", peer, "dev", device)
        run("link", "set", device, "up")
    cut = threading.Event()

    def carry(src, dst):
        pending = queue.Queue()

        def deliver():
            while True:
                due, packet = pending.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not cut.is_set():
                    try:
                        os.write(dst, packet)
                    except OSError:
                        pass

        threading.Thread(target=deliver, daemon=True).start()
        while True:
            packet = os.read(src, 65536)
            if not cut.is_set():
                pending.put((time.monotonic() + delay, packet))

    threading.Thread(target=carry, args=(fds["a"], fds["b"]), daemon=True).start()
    threading.Thread(target=carry, args=(fds["b"], fds["a"]), daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "cut":
            cut.set()
        elif command == "restore":
            cut.clear()
        print(command, flush=True)


if __name__ == "__main__":
    main()
