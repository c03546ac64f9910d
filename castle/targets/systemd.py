"""firewall/castle-<stack>-<firewall>.service: the host firewall applied at boot and with docker.

One unit per stack and firewall (iptables.sh or castle.nft), written next to the file it
loads. The two units of a stack conflict, so enabling one stops the other; the operator
installs the one the host uses (docs/persistence-and-logging.md).
"""

from __future__ import annotations

from castle.io.render import render
from castle.io.write import Output, header
from castle.plan import Plan

INSTALL_DIR = "/etc/castle"  # where the documented install commands put the firewall files
FIREWALLS = {"iptables": "iptables.sh", "nftables": "castle.nft"}


def unit_name(stack: str, firewall: str) -> str:
    """castle-<stack>-<firewall>.service: stack names are DNS labels, valid in unit names."""
    return f"castle-{stack}-{firewall}.service"


def unit_path(stack: str, firewall: str) -> str:
    """Where the unit is written in the output folder."""
    return f"firewall/{unit_name(stack, firewall)}"


def installed(stack: str, firewall: str) -> str:
    """The absolute path the unit loads the firewall file from."""
    return f"{INSTALL_DIR}/{stack}/{FIREWALLS[firewall]}"


def unit(plan: Plan, firewall: str, nft_table: str = "") -> Output:
    """The systemd unit that applies one of the stack's firewall files (nft: and its table)."""
    script = installed(plan.stack, firewall)
    if firewall == "iptables":
        pre: list[list[str]] = []
        start = ["/bin/sh", script]
        stop = ["/bin/sh", script, "--remove"]
    else:  # nft loads atomically and replaces its own table; the bridge hook is the unit's job
        pre = [["-/usr/sbin/modprobe", "br_netfilter"],
               ["/usr/sbin/sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]]
        start = ["/usr/sbin/nft", "-f", script]
        stop = ["-/usr/sbin/nft", "delete", "table", "inet", nft_table]
    other = next(f for f in FIREWALLS if f != firewall)
    text = render(
        "castle.service.j2",
        header=header(plan.source_name, plan.sha256),
        stack=plan.stack,
        firewall=firewall,
        script=script,
        script_name=FIREWALLS[firewall],
        mode="0755" if firewall == "iptables" else "0644",
        unit_name=unit_name(plan.stack, firewall),
        sibling=unit_name(plan.stack, other),
        pre=pre,
        start=start,
        stop=stop,
    )
    return Output(unit_path(plan.stack, firewall), text)
